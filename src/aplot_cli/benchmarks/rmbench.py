"""RM-Bench (`THU-KEG/RM-Bench`): loader and scorer, as the official code (THU-KEG/RM-Bench
`scripts/utils.py`: `compute_accuracy`, `split_dataset_by_domain`) and its leaderboard compute it.

Rows: id, prompt, chosen[3], rejected[3] in styles (concise, detailed-plain, detailed-markdown), domain
(chat, code, math, safety-refuse, safety-response; domains are grouped by prefix into chat, math, code,
safety). Per domain group, over its prompts:

    M[i][j] = mean_prompts [ score(chosen_i) > score(rejected_j) ]           (3, 3), strict
    hard   = sum(triu(M, 1)) / 3     chosen plainer than rejected
    normal = mean(diag(M))           same style
    easy   = sum(tril(M, -1)) / 3    chosen fancier than rejected
    domain score = (hard + normal + easy) / 3

Overall = mean of the domain scores; overall hard / normal / easy = mean over domains (so the overall
equals the mean of the three difficulty levels, as the leaderboard defines it).

The repository also ships one file per domain (`data/chat_filtered.json`, `code_filtered.json`,
`math_filtered.json`, `safety-refuse_filtered.json`, `safety-response_filtered.json`) whose rows carry no
`domain`: its `scripts/run_rm.py` scores such a file as one domain, named by the file. Rows without a
`domain` take `--domain`, else the domain the file's name starts with (`file_domain`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from aplot_cli.benchmarks.common import (
    BenchmarkResult,
    ItemBuilder,
    SubsetScore,
    candidates,
    check_predictions,
    prompt_fields,
    read_rows,
    text,
    text_list,
)
from aplot_cli.errors import InputDataError

NAME = "rm-bench"
HUB_ID = "THU-KEG/RM-Bench"
DEFAULT_SPLIT = "train"
TIE_RULE = "a tie in a style comparison counts as wrong (strict >), as in the official code"
DOMAINS = ("chat", "math", "code", "safety")
STYLES = ("concise", "detailed_plain", "detailed_markdown")
FILE_DOMAINS = ("chat", "code", "math", "safety-refuse", "safety-response")  # the per-domain files' names
_FILE_DOMAIN = re.compile(r"^(safety-refuse|safety-response|chat|code|math)(?![A-Za-z0-9-])")
DOMAIN_HINT = ("pass --domain (chat, code, math, safety-refuse or safety-response), or keep the file's official "
               "name (chat_filtered.json, ...)")


def file_domain(source: str | Path, flag: str | None = None) -> str | None:
    """The domain of a file's rows that name none: `flag` (--domain), else the domain its name starts with,
    as RM-Bench ships them (`chat_filtered.json` -> chat, `safety-refuse_filtered.json` -> safety-refuse,
    also the official result files `chat_filtered_<model>_..._<time>.json`); None when neither says."""
    if flag:
        return flag
    match = _FILE_DOMAIN.match(Path(str(source)).name)
    return match.group(1) if match else None


def check_domain(domain: str) -> None:
    from aplot_cli.errors import ConfigError

    if domain_group(domain) not in DOMAINS:
        raise ConfigError(f"--domain is {domain!r}, not an RM-Bench domain",
                          hint=f"use one of {', '.join(FILE_DOMAINS)}")


def domain_group(domain: str) -> str:
    for name in DOMAINS:
        if domain.startswith(name):
            return name
    return domain


def style_matrix(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """(P, 3) chosen and (P, 3) rejected scores -> M (3, 3), M[i, j] = mean_p [c[p, i] > r[p, j]]."""
    return (chosen[:, :, None] > rejected[:, None, :]).mean(axis=0)


def difficulty(matrix: np.ndarray) -> dict[str, float]:
    n = matrix.shape[0]
    off = n * (n - 1) / 2
    return {"hard": float(np.triu(matrix, 1).sum() / off), "normal": float(np.mean(np.diag(matrix))),
            "easy": float(np.tril(matrix, -1).sum() / off)}


def score(pred) -> BenchmarkResult:
    check_predictions(pred, NAME)
    rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for subset, example_id, chosen, rejected in candidates(pred):
        if len(chosen) != len(STYLES) or len(rejected) != len(STYLES):
            raise InputDataError(f"RM-Bench example {subset}/{example_id} has {len(chosen)} chosen and "
                                 f"{len(rejected)} rejected scores, expected 3 and 3 (one per style)")
        rows.setdefault(domain_group(subset), []).append((chosen, rejected))
    unknown = sorted(g for g in rows if g not in DOMAINS)
    if unknown:  # e.g. a per-domain result file read by its rows' `subset` (alpacaeval) for want of a domain
        raise InputDataError(f"RM-Bench predictions name domain(s) {unknown[:5]}, not chat, math, code or safety",
                             hint="a per-domain file has no `domain` column: " + DOMAIN_HINT)
    sections, subsets, matrices, levels = {}, {}, {}, {}
    ties = 0
    for group in sorted(rows, key=lambda g: (DOMAINS.index(g) if g in DOMAINS else len(DOMAINS), g)):
        chosen = np.stack([c for c, _ in rows[group]])
        rejected = np.stack([r for _, r in rows[group]])
        matrix = style_matrix(chosen, rejected)
        level = difficulty(matrix)
        sections[group] = float(np.mean(list(level.values())))
        group_ties = int((chosen[:, :, None] == rejected[:, None, :]).sum())
        ties += group_ties
        # the domain score weighs the diagonal and the triangles equally, so it is not a count ratio
        subsets[group] = SubsetScore(accuracy=sections[group], correct=None, total=len(chosen), ties=group_ties)
        matrices[group], levels[group] = matrix.tolist(), level
    final = {"overall": float(np.mean(list(sections.values())))}
    for name in ("hard", "normal", "easy"):
        final[name] = float(np.mean([lv[name] for lv in levels.values()]))
    missing = [d for d in DOMAINS if d not in sections]
    notes = [f"domains absent: {', '.join(missing)}; overall = mean of the domains present"] if missing else []
    return BenchmarkResult(
        benchmark=NAME, primary="overall", final=final, sections=sections, subsets=subsets,
        counts={"examples": sum(len(v) for v in rows.values()), "scored_texts": int(len(pred)),
                "comparisons": 9 * sum(len(v) for v in rows.values()), "ties": ties},
        weights={"styles": list(STYLES), "matrix": "rows = chosen style, columns = rejected style"},
        notes=notes, extra={"matrices": matrices, "difficulty": levels})


def row_domain(row: dict, where: str, stem: str, flag: str | None) -> str:
    """The row's own `domain`; a row without one takes `file_domain(stem, flag)`. A row whose domain
    contradicts --domain is an error (the flag would be misapplied)."""
    if row.get("domain") is None:
        domain = file_domain(stem, flag)
        if domain is None:
            raise InputDataError(f"{where}: the row has no `domain` and the file name {stem!r} names no RM-Bench "
                                 "domain", hint=DOMAIN_HINT)
        return domain
    domain = text(row, "domain", where)
    if flag and domain != flag:
        raise InputDataError(f"{where}: the row's domain is {domain!r} but --domain is {flag!r}",
                             hint="--domain is for files whose rows name no domain; leave it out for this file")
    return domain


def load(sources: tuple[str, ...] = (), split: str | None = None, prior_sets: str | None = None,
         domain: str | None = None):
    """Items from the hub, `total_dataset.json` (rows name their domain) or the per-domain files (rows
    take `domain`, else the file's name: `row_domain`)."""
    items = ItemBuilder()
    for number, (where, stem, row) in enumerate(read_rows(sources, HUB_ID, None, split or DEFAULT_SPLIT)):
        domain_name = row_domain(row, where, stem, domain)
        chosen = text_list(row, "chosen", where, len(STYLES))
        rejected = text_list(row, "rejected", where, len(STYLES))
        prompt, messages = prompt_fields(row.get("prompt"), where)
        items.add(items.example_id(domain_name, row.get("id"), number), domain_name, prompt, messages, chosen,
                  rejected)
    return items.frame("RM-Bench")
