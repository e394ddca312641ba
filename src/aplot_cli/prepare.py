"""`aplot prepare`: any preference source -> a validated pairs artifact with splits.

Output directory: one parquet file per split (`train.parquet`, `test.parquet`, and `ood.parquet` for
the synthetic recipe's reserved families) in the schema of `aplot_cli.data.schema`, and a manifest
with counts of every row read, filtered, rejected (by reason) and written, and the sha256 of every
source file read (`sources`; `aplot_cli.data.sources` says where rows come from). Other stages read it with
`readers.pairs`."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aplot_cli import artifacts, outdir
from aplot_cli.config import PrepareConfig, config_to_dict
from aplot_cli.console import info
from aplot_cli.data import onpolicy, sources, synthetic
from aplot_cli.data.loaders import RawRecord
from aplot_cli.data.recipes import Recipe, load_recipe, parse_columns
from aplot_cli.data.schema import Pair, messages_json
from aplot_cli.data.transforms import TRANSFORMS, RowProblem, source_id
from aplot_cli.errors import ConfigError, InputDataError, disk_full_names
from aplot_cli.readers.pairs import STAGE

_FIX = "fix the row, or pass --on-bad-rows skip to drop such rows (they are counted in the manifest)"


@dataclass
class Tally:
    """Row accounting: nothing is dropped without being counted here."""

    read: int = 0
    filtered: int = 0                       # dropped on purpose by the recipe's protocol
    sampled_out: int = 0                    # valid pairs left out by --max-pairs' seeded sample
    bad: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    onpolicy: onpolicy.OnPolicyCounts | None = None  # --from-samples: prompts with and without a pair

    def reject(self, kind: str, where: str, detail: str, on_bad_rows: str, hint: str | None = None) -> None:
        if on_bad_rows == "error":
            raise InputDataError(f"{where}: {detail}", hint=f"{hint}; or {_FIX}" if hint else _FIX)
        self.bad[kind] += 1
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(f"{where}: {detail}")


def _column_mapping(cfg: PrepareConfig, recipe: Recipe | None) -> tuple[dict[str, str], dict[str, str]]:
    """(every column mapping in force, the part --columns gave): --columns over the recipe's `columns`."""
    given = parse_columns(cfg.columns, recipe.transform if recipe else "pairwise")
    return {**(recipe.columns if recipe else {}), **given}, given


def _check_mapped(record: RawRecord, given: dict[str, str]) -> None:
    """The first row of a source holds every column --columns names (a misspelt name is met here, as what it
    is, rather than as a bad row)."""
    for target, column in given.items():
        if column.split(".")[0] not in record.data:
            raise InputDataError(f"{record.location}: no column `{column.split('.')[0]}`, which --columns "
                                 f"{target}={column} names (the row's columns: {', '.join(map(str, record.data))})",
                                 hint="fix the mapping: --columns TARGET=SOURCE, SOURCE spelt as your data names "
                                      "the column")


def _source_pairs(cfg: PrepareConfig, recipe: Recipe | None, tally: Tally,
                  samples: tuple[artifacts.Artifact, Any] | None = None,
                  streams: list[sources.Stream] | None = None) -> Iterator[Pair]:
    if samples is not None:
        art, frame = samples
        pairs, counts = onpolicy.pairs_from_samples(frame, cfg.pairs_per_prompt, cfg.seed, where=str(art.path))
        tally.read += len(pairs)
        tally.onpolicy = counts
        yield from pairs
        return
    if recipe is not None and recipe.transform == "synthetic":
        pairs = synthetic.generate(cfg.synthetic_pairs, cfg.synthetic_ood_pairs, cfg.seed)
        tally.read += len(pairs)
        yield from pairs
        return
    transform = TRANSFORMS[recipe.transform if recipe else "pairwise"]
    columns, given = _column_mapping(cfg, recipe)
    for stream in streams or []:
        first = True
        for record in stream.records:
            tally.read += 1
            if record.problem:
                tally.reject(record.problem, record.location, record.detail, cfg.on_bad_rows)
                continue
            if first:
                _check_mapped(record, given)
                first = False
            try:
                pair = transform(record.data, columns, subset=stream.subset)
                row_id = source_id(record.data, columns)
            except RowProblem as problem:
                tally.reject(problem.kind, record.location, f"field `{problem.field}` {problem.detail}",
                             cfg.on_bad_rows, hint=problem.hint)
                continue
            if pair is None:
                tally.filtered += 1
                continue
            pair.location = record.location
            if row_id is not None:
                pair.extras["source_id"] = row_id
            if not pair.subset and stream.subset:
                pair.subset = stream.subset
            yield pair


def _valid_pairs(cfg: PrepareConfig, pairs: Iterator[Pair], tally: Tally, seen: dict[str, str]) -> list[Pair]:
    """The pairs that pass validation; `seen` ({pair_id: location}) spans the training and test sources, so a
    pair in both is a duplicate."""
    kept: list[Pair] = []
    for pair in pairs:
        for name in ("prompt", "chosen", "rejected"):
            if not getattr(pair, name):
                tally.reject("empty_text", pair.location, f"field `{name}` is empty", cfg.on_bad_rows)
                break
        else:
            if pair.chosen == pair.rejected:
                tally.reject("chosen_equals_rejected", pair.location, "`chosen` equals `rejected`",
                             cfg.on_bad_rows)
                continue
            pid = pair.pair_id
            if pid in seen:
                tally.reject("duplicate_pair", pair.location, f"duplicate of the pair at {seen[pid]}",
                             cfg.on_bad_rows)
                continue
            seen[pid] = pair.location
            kept.append(pair)
    return kept


def _sample(pairs: list[Pair], max_pairs: int | None, seed: int, tally: Tally) -> list[Pair]:
    """`--max-pairs N`: a seeded random sample of the valid pairs, in source order (the first N rows of a
    file are often one subset, e.g. one judge)."""
    if max_pairs is None or len(pairs) <= max_pairs:
        return pairs
    keep = sorted(random.Random(f"aplot-sample|{seed}").sample(range(len(pairs)), max_pairs))
    tally.sampled_out = len(pairs) - max_pairs
    return [pairs[i] for i in keep]


def split_by_prompt(pairs: list[Pair], test_size: float, seed: int) -> dict[str, list[Pair]]:
    """Assign whole prompts to train or test (no prompt in two splits), deterministic by seed;
    reserved synthetic families go to `ood`."""
    splits: dict[str, list[Pair]] = {"train": [], "test": [], "ood": []}
    prompts = sorted({p.prompt for p in pairs if not p.extras.get("reserved_ood")})
    random.Random(f"aplot-split|{seed}").shuffle(prompts)
    n_test = round(test_size * len(prompts))
    test_prompts = set(prompts[:n_test])
    for pair in pairs:
        name = "ood" if pair.extras.get("reserved_ood") else ("test" if pair.prompt in test_prompts else "train")
        splits[name].append(pair)
    return {k: v for k, v in splits.items() if v}


def _flip(pairs: list[Pair], ratio: float, seed: int) -> set[int]:
    """Swap chosen/rejected on `round(ratio * n)` training pairs (label-noise studies)."""
    n = round(ratio * len(pairs))
    flipped = set(random.Random(f"aplot-flip|{seed}").sample(range(len(pairs)), n))
    return flipped


def flip_seed(cfg: PrepareConfig) -> int:
    """The seed of the label-noise draw: `flip_seed` when set, else the split's `seed`."""
    return cfg.seed if cfg.flip_seed is None else cfg.flip_seed


def _frame(pairs: list[Pair], split: str, flipped: set[int]):
    import pandas as pd

    extras = sorted({k for p in pairs for k in p.extras if k != "reserved_ood"})
    rows = []
    for i, p in enumerate(pairs):
        chosen, rejected = (p.rejected, p.chosen) if i in flipped else (p.chosen, p.rejected)
        row = {"pair_id": p.pair_id, "prompt": p.prompt, "chosen": chosen, "rejected": rejected,
               "prompt_messages": messages_json(p.prompt_messages), "margin": p.margin,
               "subset": p.subset, "source": p.source, "split": split, "flipped": i in flipped}
        row.update({k: p.extras.get(k) for k in extras})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["margin"] = frame["margin"].astype("float64")
    return frame


def _check(cfg: PrepareConfig) -> None:
    if not 0.0 <= cfg.test_size <= 1.0:
        raise ConfigError(f"--test-size is {cfg.test_size}, expected a fraction in [0, 1]")
    if not 0.0 <= cfg.flip_ratio <= 1.0:
        raise ConfigError(f"--flip-ratio is {cfg.flip_ratio}, expected a fraction in [0, 1]")
    if cfg.every_nth < 1:
        raise ConfigError(f"--every-nth is {cfg.every_nth}, expected an integer >= 1")
    if cfg.max_pairs is not None and cfg.max_pairs < 1:
        raise ConfigError(f"--max-pairs is {cfg.max_pairs}, expected an integer >= 1")
    if cfg.pairs_per_prompt < 1:
        raise ConfigError(f"--pairs-per-prompt is {cfg.pairs_per_prompt}, expected an integer >= 1")
    if cfg.from_samples is not None:
        others = [flag for flag, value in (("--recipe", cfg.recipe), ("--files", cfg.files), ("--dataset", cfg.dataset))
                  if value]
        if others:
            raise ConfigError(f"--from-samples and {', '.join(others)} name two data sources",
                              hint="pairs come from one source: drop one of them")
        if cfg.columns:
            raise ConfigError("--columns with --from-samples: a samples artifact has aplot's own columns",
                              hint="drop --columns")


def open_samples(path: str) -> tuple[artifacts.Artifact, Any]:
    """A finished samples artifact of train-split prompts and its responses. Held-out (test) samples are
    refused: their prompts are kept for best-of-n evaluation, and pairs from them would leak."""
    from aplot_cli.readers.samples import open_samples as read

    art, frame = read(path)
    splits = sorted(set(frame["split"]))
    if splits != ["train"]:
        raise InputDataError(f"--from-samples {path} holds {'/'.join(splits)}-split prompts; pairs are made from "
                             "train-split samples only",
                             hint="sample with `aplot sample --split train`; held-out (test) samples are for "
                                  "`aplot eval-rm --benchmark bon --samples`")
    return art, frame


def recipe_defaults(recipe_name: str | None) -> dict[str, Any]:
    """The recipe's own prepare defaults (between the dataclass defaults and --config/flags)."""
    return dict(load_recipe(recipe_name).defaults) if recipe_name else {}


def input_paths(cfg: PrepareConfig) -> list[tuple[str, str | None]]:
    """The local paths this run reads (what its --out-dir must stay clear of)."""
    recipe_file = cfg.recipe if cfg.recipe and Path(cfg.recipe).suffix in (".yaml", ".yml") else None
    return [("--files", f) for f in cfg.files] + [("--test-files", f) for f in cfg.test_files] + [
        ("--dataset", cfg.dataset), ("--recipe", recipe_file), ("--from-samples", cfg.from_samples)]


def _read(cfg: PrepareConfig, recipe: Recipe | None, tally: Tally,
          samples: tuple[artifacts.Artifact, Any] | None) -> tuple[dict[str, list[Pair]], sources.Sources | None]:
    """Every source row read and validated, then split: by prompt (--test-size), or as the test source gives
    them (--test-split / --test-files: the training pairs are all train, --max-pairs samples them alone)."""
    made_here = samples is not None or (recipe is not None and recipe.transform == "synthetic")
    found = None if made_here else sources.open_sources(cfg, recipe)
    seen: dict[str, str] = {}
    pairs = _valid_pairs(cfg, _source_pairs(cfg, recipe, tally, samples, found.train if found else None), tally,
                         seen)
    if not pairs:
        raise InputDataError("no valid pairs were read",
                             hint=f"rows read: {tally.read}, filtered: {tally.filtered}, "
                                  f"bad: {dict(tally.bad)}")
    if found is None or not found.test:
        return split_by_prompt(_sample(pairs, cfg.max_pairs, cfg.seed, tally), cfg.test_size, cfg.seed), found
    test = _valid_pairs(cfg, _source_pairs(cfg, recipe, tally, streams=found.test), tally, seen)
    if not test:
        raise InputDataError(f"the test source ({found.test_from}) gave no valid pairs",
                             hint=f"rows read in all: {tally.read}, filtered: {tally.filtered}, "
                                  f"bad: {dict(tally.bad)}")
    return {"train": _sample(pairs, cfg.max_pairs, cfg.seed, tally), "test": test}, found


def _source_metrics(splits: dict[str, list[Pair]], found: sources.Sources | None) -> dict[str, Any]:
    """How the test split was made, prompts the user's own test split shares with train (said, not refused:
    the split is theirs), and how many prompts were TRL-style implicit ones."""
    metrics: dict[str, Any] = {"test_split_from": found.test_from if found else "--test-size",
                               "implicit_prompts": sum(p.implicit_prompt for ps in splits.values() for p in ps)}
    if found is not None and found.test:
        shared = {p.prompt for p in splits.get("test", [])} & {p.prompt for p in splits.get("train", [])}
        metrics["test_prompts_in_train"] = len(shared)
        if shared:
            info(f"[bold yellow]prepare[/] {len(shared)} prompt(s) of the test split ({found.test_from}) are also "
                 "in the training split (kept: the split is yours; counted as metrics.test_prompts_in_train)")
    return metrics


def run(cfg: PrepareConfig, out_dir: Path, overwrite: bool = False) -> Path:
    """Read, validate, split and write; returns the manifest path."""
    _check(cfg)
    inputs = input_paths(cfg)
    outdir.check_out_dir(out_dir, stage=STAGE, inputs=inputs, overwrite=overwrite)
    recipe = load_recipe(cfg.recipe) if cfg.recipe else None
    sources.check(cfg, recipe)
    if not cfg.from_samples:
        _column_mapping(cfg, recipe)  # a bad --columns is named before any row is read
    samples = open_samples(cfg.from_samples) if cfg.from_samples else None
    tally = Tally()
    splits, found = _read(cfg, recipe, tally, samples)
    source_files = sources.source_files(cfg)
    # every input has been read and validated: only now may --overwrite clear a finished artifact
    out_dir = outdir.prepare_out_dir(out_dir, stage=STAGE, inputs=inputs, overwrite=overwrite)
    outputs, counts = [], {}
    for name, split_pairs in splits.items():
        flipped = _flip(split_pairs, cfg.flip_ratio, flip_seed(cfg)) if name == "train" else set()
        frame = _frame(split_pairs, name, flipped)
        with disk_full_names(out_dir / f"{name}.parquet"):
            frame.to_parquet(out_dir / f"{name}.parquet", index=False)
        outputs.append(artifacts.describe_output(out_dir, f"{name}.parquet", rows=len(frame)))
        counts[name] = {"pairs": len(frame), "prompts": int(frame["prompt"].nunique()),
                        "flipped": len(flipped)}
    written = sum(len(v) for v in splits.values())
    metrics = {"rows_read": tally.read, "rows_filtered": tally.filtered, "pairs_sampled_out": tally.sampled_out,
               "rows_bad": dict(tally.bad), "pairs_written": written, "splits": counts,
               "flip_seed": flip_seed(cfg) if cfg.flip_ratio > 0 else None, **_source_metrics(splits, found)}
    info(f"[bold]prepare[/] read {tally.read} rows -> {written} pairs "
         + ", ".join(f"{k}: {v['pairs']}" for k, v in counts.items())
         + (f" (filtered {tally.filtered}, bad {sum(tally.bad.values())})" if tally.filtered or tally.bad else ""))
    if tally.onpolicy is not None:
        metrics["on_policy"] = dataclasses.asdict(tally.onpolicy)
        info(f"[bold]prepare[/] on-policy pairs from {tally.onpolicy.prompts_with_pair} of {tally.onpolicy.prompts} "
             f"prompts ({tally.onpolicy.prompts_all_pass} all pass, {tally.onpolicy.prompts_all_fail} all fail)")
    return artifacts.write_manifest(
        out_dir, stage=STAGE, config=config_to_dict(cfg), outputs=outputs, metrics=metrics,
        inputs={"samples": samples[0]} if samples else None,
        diagnostics={"bad_row_examples": dict(tally.examples)},
        extra={"recipe": None if recipe is None else {"name": recipe.name, "transform": recipe.transform,
                                                      "hub_id": recipe.hub_id},
               "sources": {"files": source_files, "hub": found.hub if found else []}})
