"""On-policy preference pairs from gold-labelled samples (`aplot sample`), the synthetic-gold setup of
Gao et al. (2023): for each prompt, chosen = a response that passes the gold checker, rejected = one
that fails it, both sampled from the same policy. Pure: a responses table in, pairs and counts out."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from aplot_cli.data.schema import Pair

SOURCE = "aplot-sample"


@dataclass
class OnPolicyCounts:
    """What the responses gave: prompts with both kinds of response make pairs; the others are counted."""

    responses: int = 0
    empty_responses: int = 0          # nothing but whitespace: never a side of a pair
    prompts: int = 0
    prompts_all_pass: int = 0
    prompts_all_fail: int = 0
    prompts_with_pair: int = 0
    pairs: int = 0
    by_family: dict[str, int] = field(default_factory=dict)  # pairs per family


def _distinct(texts: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(sample index, text) with repeated texts (after stripping) dropped, first sample kept."""
    seen: set[str] = set()
    out = []
    for index, text in texts:
        if text.strip() not in seen:
            seen.add(text.strip())
            out.append((index, text))
    return out


def pairs_from_samples(frame: Any, pairs_per_prompt: int, seed: int, where: str = "samples") -> tuple[list[Pair], OnPolicyCounts]:
    """Per prompt, up to `pairs_per_prompt` distinct (passing, failing) pairs of its distinct non-empty
    responses, drawn without replacement from all such combinations with a seed per prompt (so a prompt's
    pairs do not depend on the other prompts)."""
    counts = OnPolicyCounts(responses=len(frame))
    pairs: list[Pair] = []
    for prompt_id, group in frame.sort_values(["prompt_id", "sample"], kind="stable").groupby("prompt_id", sort=False):
        counts.prompts += 1
        rows = list(zip(group["sample"].tolist(), group["response"].tolist(), group["gold"].tolist(), strict=True))
        counts.empty_responses += sum(not text.strip() for _, text, _ in rows)
        passing = _distinct([(i, t) for i, t, g in rows if g and t.strip()])
        failing = _distinct([(i, t) for i, t, g in rows if not g and t.strip()])
        if not passing or not failing:
            counts.prompts_all_pass += bool(passing)
            counts.prompts_all_fail += not passing
            continue
        counts.prompts_with_pair += 1
        combos = [(p, f) for p in passing for f in failing]
        picked = sorted(random.Random(f"aplot-onpolicy|{seed}|{prompt_id}").sample(
            range(len(combos)), min(pairs_per_prompt, len(combos))))
        prompt, family = group["prompt"].iloc[0], group["family"].iloc[0]
        for k in picked:
            (good_i, good), (bad_i, bad) = combos[k]
            pairs.append(Pair(prompt=prompt, chosen=good, rejected=bad, subset=family, source=SOURCE,
                              extras={"family": family, "prompt_id": prompt_id},
                              location=f"{where}: prompt {prompt_id}, samples {good_i} (passes) / {bad_i} (fails)"))
            counts.by_family[family] = counts.by_family.get(family, 0) + 1
    counts.pairs = len(pairs)
    return pairs, counts
