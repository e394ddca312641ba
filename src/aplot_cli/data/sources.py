"""Where `aplot prepare` reads its rows, and what it read.

The training source is `--files` (files, or folders written by `save_to_disk`), `--dataset` (a hub id, a
local folder laid out as on the hub, or a `save_to_disk` folder) or the recipe's hub dataset. The test
split is held out of it by `--test-size`, unless a test source is named: `--test-split NAME` (that split
of the same hub dataset or saved DatasetDict) or `--test-files` (the user's own files or folders), read as
they are. `source_files` gives the sha256 of every local file read, for the manifest."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aplot_cli.config import PrepareConfig
from aplot_cli.console import info
from aplot_cli.data import loaders
from aplot_cli.data.recipes import Recipe
from aplot_cli.errors import ConfigError


@dataclass
class Stream:
    """Rows of one source, in order; `subset` is the hub config they came from ('' if none)."""

    records: Iterable[loaders.RawRecord]
    subset: str = ""


@dataclass
class Sources:
    train: list[Stream]
    test: list[Stream]  # empty: the test split is held out of the training rows
    test_from: str  # how the test split is made, as the manifest records it
    hub: list[dict[str, Any]] = field(default_factory=list)  # hub datasets as loaded (fingerprints)


def _saved(path: str) -> str | None:
    folder = Path(path)
    return loaders.saved_kind(folder) if folder.is_dir() else None


def _every_nth(records: Iterable[loaders.RawRecord], n: int) -> Iterator[loaders.RawRecord]:
    """Every n-th row of the files, counted over the files in turn (a row keeps its own location)."""
    for index, record in enumerate(records):
        if index % n == 0:
            yield record


def check(cfg: PrepareConfig, recipe: Recipe | None) -> None:
    """Refuse a test source that cannot apply, before anything is read."""
    if not (cfg.test_files or cfg.test_split):
        return
    flag = "--test-files" if cfg.test_files else "--test-split"
    if cfg.test_files and cfg.test_split and not any(_saved(f) == "dataset_dict" for f in cfg.test_files):
        raise ConfigError(
            "--test-files and --test-split name two test sources",
            hint="--test-split picks a split of a saved DatasetDict in --test-files, or of the "
            "training source when there are no --test-files: drop one of them",
        )
    if cfg.from_samples or (recipe is not None and recipe.transform == "synthetic"):
        what = "--from-samples" if cfg.from_samples else "the synthetic recipe"
        raise ConfigError(
            f"{flag} with {what}: its pairs are split by --test-size (synthetic: plus its ood split)",
            hint=f"drop {flag}, or prepare your own pairs from files",
        )
    if cfg.test_split and not cfg.test_files:
        if cfg.files and not any(_saved(f) == "dataset_dict" for f in cfg.files):
            raise ConfigError(
                f"--test-split {cfg.test_split}: the --files ({', '.join(cfg.files)}) have no "
                "splits; it picks a split of a hub dataset or of a folder a DatasetDict was saved to",
                hint="pass your test file(s) with --test-files instead",
            )
        if cfg.dataset and _saved(cfg.dataset) == "dataset" and not cfg.files:
            raise ConfigError(
                f"--test-split {cfg.test_split}: {cfg.dataset} is one saved Dataset, with no splits",
                hint="pass your test data with --test-files instead",
            )
        if cfg.test_split == _train_split(cfg, recipe):
            raise ConfigError(
                f"--test-split {cfg.test_split} is also the split read for training",
                hint="name the source's test split (e.g. --test-split test), or pick the training "
                "split with --dataset-split",
            )


def _train_split(cfg: PrepareConfig, recipe: Recipe | None) -> str:
    return cfg.dataset_split if cfg.dataset_split != "train" or recipe is None else recipe.hub_split


def _file_streams(files: tuple[str, ...], split: str, flag: str, every_nth: int) -> list[Stream]:
    records = loaders.read_files(files, split, flag=flag)
    return [Stream(_every_nth(records, every_nth) if every_nth > 1 else records)]


def _dataset_streams(
    cfg: PrepareConfig, recipe: Recipe | None, split: str, every_nth: int, hub: list[dict[str, Any]]
) -> list[Stream]:
    dataset = cfg.dataset or (recipe.hub_id if recipe else None)
    if dataset is None:
        raise ConfigError(
            "no data source given", hint="pass --recipe NAME, --dataset HUB_ID or --files FILE [FILE ...]"
        )
    if _saved(dataset):
        flag = "--dataset-split" if split == _train_split(cfg, recipe) else "--test-split"
        return [Stream(loaders.read_saved(Path(dataset), split, flag=flag, every_nth=every_nth))]
    configs = (cfg.dataset_config,) if cfg.dataset_config else (recipe.hub_configs if recipe else (None,))
    return [Stream(loaders.read_hub(dataset, conf, split, every_nth, loaded=hub), conf or "") for conf in configs]


def _note_unused_test(paths: list[str], split: str) -> None:
    """Say so when a saved DatasetDict holds a test split that this run does not read."""
    for path in paths:
        if _saved(path) == "dataset_dict" and "test" in loaders.saved_splits(Path(path)) and split != "test":
            info(
                f"[bold]prepare[/] {path} also holds a `test` split, not read: the test split is held out of "
                f"`{split}` by --test-size; pass --test-split test to keep the DatasetDict's own"
            )


def open_sources(cfg: PrepareConfig, recipe: Recipe | None) -> Sources:
    """The training and test streams `cfg` names (lazy: rows are read as the streams are iterated)."""
    hub: list[dict[str, Any]] = []
    split = _train_split(cfg, recipe)
    if cfg.files:
        train = _file_streams(cfg.files, split, "--dataset-split", cfg.every_nth)
    else:
        train = _dataset_streams(cfg, recipe, split, cfg.every_nth, hub)
    if cfg.test_files:
        test = _file_streams(cfg.test_files, cfg.test_split or "test", "--test-split", 1)
        test_from = "--test-files"
    elif cfg.test_split:
        test = (
            _file_streams(tuple(f for f in cfg.files if _saved(f) == "dataset_dict"), cfg.test_split, "--test-split", 1)
            if cfg.files
            else _dataset_streams(cfg, recipe, cfg.test_split, 1, hub)
        )
        test_from = f"--test-split {cfg.test_split}"
    else:
        test, test_from = [], "--test-size"
        _note_unused_test([name for name in (*cfg.files, cfg.dataset) if name], split)
    return Sources(train=train, test=test, test_from=test_from, hub=hub)


def _describe(flag: str, path: Path) -> list[dict[str, Any]]:
    from aplot_cli.models import memo_sha256  # memoised: a large source is hashed once across runs

    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [{"flag": flag, "path": str(p), "bytes": p.stat().st_size, "sha256": memo_sha256(p)} for p in files]


def source_files(cfg: PrepareConfig) -> list[dict[str, Any]]:
    """{flag, path, bytes, sha256} of every local file this run read: each of --files and --test-files (every
    file inside a folder), a local --dataset folder, and a recipe given as a file."""
    named = [("--files", f) for f in cfg.files] + [("--test-files", f) for f in cfg.test_files]
    if cfg.dataset and Path(cfg.dataset).exists():
        named.append(("--dataset", cfg.dataset))
    if cfg.recipe and Path(cfg.recipe).suffix in (".yaml", ".yml") and Path(cfg.recipe).is_file():
        named.append(("--recipe", cfg.recipe))
    return [entry for flag, name in named for entry in _describe(flag, Path(name))]
