"""`aplot prepare`: any preference source -> a validated pairs artifact with splits.

Output directory: one parquet file per split (`train.parquet`, `test.parquet`, and `ood.parquet` for
the synthetic recipe's reserved families) in the schema of `aplot_cli.data.schema`, and a manifest
with counts of every row read, filtered, rejected (by reason) and written."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aplot_cli import artifacts
from aplot_cli.config import PrepareConfig, config_to_dict
from aplot_cli.console import info
from aplot_cli.data import loaders, onpolicy, synthetic
from aplot_cli.data.recipes import Recipe, load_recipe
from aplot_cli.data.schema import Pair, messages_json
from aplot_cli.data.transforms import TRANSFORMS, RowProblem
from aplot_cli.errors import ArtifactError, ConfigError, InputDataError, damaged_names, disk_full_names

STAGE = "prepare"
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

    def reject(self, kind: str, where: str, detail: str, on_bad_rows: str) -> None:
        if on_bad_rows == "error":
            raise InputDataError(f"{where}: {detail}", hint=_FIX)
        self.bad[kind] += 1
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(f"{where}: {detail}")


def _source_pairs(cfg: PrepareConfig, recipe: Recipe | None, tally: Tally,
                  samples: tuple[artifacts.Artifact, Any] | None = None) -> Iterator[Pair]:
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
    columns = recipe.columns if recipe else {}
    if cfg.files:
        streams = [(None, loaders.read_files(cfg.files))]
    else:
        dataset = cfg.dataset or (recipe.hub_id if recipe else None)
        if dataset is None:
            raise ConfigError("no data source given", hint="pass --recipe NAME, --dataset HUB_ID or "
                                                            "--files FILE [FILE ...]")
        configs = (cfg.dataset_config,) if cfg.dataset_config else (recipe.hub_configs if recipe else (None,))
        split = cfg.dataset_split if cfg.dataset_split != "train" or recipe is None else recipe.hub_split
        streams = [(conf, loaders.read_hub(dataset, conf, split, cfg.every_nth)) for conf in configs]
    for conf, records in streams:
        for index, record in enumerate(records):
            if cfg.files and cfg.every_nth > 1 and index % cfg.every_nth:
                continue
            tally.read += 1
            if record.problem:
                tally.reject(record.problem, record.location, record.detail, cfg.on_bad_rows)
                continue
            try:
                pair = transform(record.data, columns, subset=conf or "")
            except RowProblem as problem:
                tally.reject(problem.kind, record.location, f"field `{problem.field}` {problem.detail}",
                             cfg.on_bad_rows)
                continue
            if pair is None:
                tally.filtered += 1
                continue
            pair.location = record.location
            if not pair.subset and conf:
                pair.subset = conf
            yield pair


def _valid_pairs(cfg: PrepareConfig, pairs: Iterator[Pair], tally: Tally) -> list[Pair]:
    seen: dict[str, str] = {}
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
    return _sample(kept, cfg.max_pairs, cfg.seed, tally)


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


def open_samples(path: str) -> tuple[artifacts.Artifact, Any]:
    """A finished samples artifact of train-split prompts and its responses. Held-out (test) samples are
    refused: their prompts are kept for best-of-n evaluation, and pairs from them would leak."""
    from aplot_cli.samples import open_samples as read

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
    return [("--files", f) for f in cfg.files] + [("--dataset", cfg.dataset), ("--recipe", recipe_file),
                                                   ("--from-samples", cfg.from_samples)]


def run(cfg: PrepareConfig, out_dir: Path, overwrite: bool = False) -> Path:
    """Read, validate, split and write; returns the manifest path."""
    _check(cfg)
    inputs = input_paths(cfg)
    artifacts.check_out_dir(out_dir, stage=STAGE, inputs=inputs, overwrite=overwrite)
    recipe = load_recipe(cfg.recipe) if cfg.recipe else None
    samples = open_samples(cfg.from_samples) if cfg.from_samples else None
    tally = Tally()
    pairs = _valid_pairs(cfg, _source_pairs(cfg, recipe, tally, samples), tally)
    if not pairs:
        raise InputDataError("no valid pairs were read",
                             hint=f"rows read: {tally.read}, filtered: {tally.filtered}, "
                                  f"bad: {dict(tally.bad)}")
    # every input has been read and validated: only now may --overwrite clear a finished artifact
    out_dir = artifacts.prepare_out_dir(out_dir, stage=STAGE, inputs=inputs, overwrite=overwrite)
    splits = split_by_prompt(pairs, cfg.test_size, cfg.seed)
    outputs, counts = [], {}
    for name, split_pairs in splits.items():
        flipped = _flip(split_pairs, cfg.flip_ratio, flip_seed(cfg)) if name == "train" else set()
        frame = _frame(split_pairs, name, flipped)
        with disk_full_names(out_dir / f"{name}.parquet"):
            frame.to_parquet(out_dir / f"{name}.parquet", index=False)
        outputs.append(artifacts.describe_output(out_dir, f"{name}.parquet", rows=len(frame)))
        counts[name] = {"pairs": len(frame), "prompts": int(frame["prompt"].nunique()),
                        "flipped": len(flipped)}
    metrics = {"rows_read": tally.read, "rows_filtered": tally.filtered, "pairs_sampled_out": tally.sampled_out,
               "rows_bad": dict(tally.bad), "pairs_written": len(pairs), "splits": counts,
               "flip_seed": flip_seed(cfg) if cfg.flip_ratio > 0 else None}
    info(f"[bold]prepare[/] read {tally.read} rows -> {len(pairs)} pairs "
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
                                                      "hub_id": recipe.hub_id}})


def split_files(art: artifacts.Artifact) -> list[str]:
    """The split files a pairs artifact's manifest lists (`train.parquet`, ...): plain names, as the
    split name is taken from them and reused in other artifacts' file names."""
    names = []
    for i, entry in enumerate(art.manifest["outputs"]):
        name = artifacts.check_member(art.path, f"outputs[{i}].path", entry.get("path"), flat=True,
                                      redo=f"aplot {STAGE}")
        if not name.endswith(".parquet"):
            raise ArtifactError(f"{art.path / artifacts.MANIFEST}: outputs[{i}].path is {name!r}, expected "
                                "SPLIT.parquet", hint=f"re-run `aplot {STAGE}` into a fresh directory")
        names.append(name)
    return names


def load_pairs(artifact_dir: Path | str, split: str | None = None):
    """Read a pairs artifact (all splits, or one) as a DataFrame; refuses unfinished runs."""
    import pandas as pd

    art = artifacts.open_artifact(artifact_dir, STAGE)
    names = split_files(art)
    if split is not None:
        if f"{split}.parquet" not in names:
            raise InputDataError(f"{art.path} has no `{split}` split",
                                 hint=f"available: {', '.join(n.removesuffix('.parquet') for n in names)}")
        names = [f"{split}.parquet"]
    redo = f"re-run `aplot {STAGE} --out-dir {art.path} --overwrite`"
    frames = []
    for name in names:
        if not (art.path / name).is_file():
            raise ArtifactError(f"{art.path} lists {name} in its manifest but the file is missing: "
                                "an unfinished or damaged artifact", hint=redo)
        with damaged_names(art.path / name, redo):
            frames.append(pd.read_parquet(art.path / name))
        _check_split(frames[-1], art.path / name, redo)
    return pd.concat(frames, ignore_index=True)


def _check_split(frame, path: Path, redo: str) -> None:
    """A split file holds the text columns every stage reads, as strings (a file edited since it was written
    is named here, with the column and row, not met as a KeyError or TypeError later)."""
    for column in ("pair_id", "prompt", "chosen", "rejected"):
        if column not in frame.columns:
            raise ArtifactError(f"{path} has no `{column}` column (it has {', '.join(map(str, frame.columns))})",
                                hint=redo)
        bad = [i for i, value in enumerate(frame[column]) if not isinstance(value, str)]
        if bad:
            raise ArtifactError(f"{path}: column `{column}` row {bad[0]} is {frame[column].iloc[bad[0]]!r}, not a "
                                f"string ({len(bad)} such row(s))", hint=redo)
