"""The pairs artifact that `aplot prepare` writes: its stage name, its split files and their reader, and
the seeded sample of a split that train-rm trains on (which `aplot margins` rebuilds), and what another
artifact recorded of the pairs it was made from. Apart from the
stage, so that embed, train-rm, margins, ppo and the `pairs` benchmark read pairs without importing it."""

from __future__ import annotations

from pathlib import Path

from aplot_cli import artifacts
from aplot_cli.errors import ArtifactError, InputDataError, damaged_names

STAGE = "prepare"


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


def recorded_train_split(art: artifacts.Artifact, pairs_art: artifacts.Artifact) -> tuple[str | None, str | None, str]:
    """(what `art`'s manifest recorded of the pairs it was made from, what `pairs_art` holds now, which of the
    two is compared): the train split's sha256 where `art` recorded it, else (older artifacts) the pairs
    manifest's sha256. Equal when `art` was made from this train split's content."""
    recorded = art.manifest.get("inputs", {}).get("pairs") or {}
    split = "train.parquet"
    if split in recorded.get("outputs_sha256", {}):
        return recorded["outputs_sha256"][split], pairs_art.output_hashes().get(split), f"{split} sha256"
    return recorded.get("manifest_sha256"), pairs_art.manifest_sha256(), "manifest sha256"


def sample_pairs(frame, limit: int | None, seed: int):
    """A seeded random sample of `limit` rows of a pairs frame (every row when `limit` is None), re-indexed."""
    if limit is None or limit >= len(frame):
        return frame.reset_index(drop=True)
    return frame.sample(n=limit, random_state=seed).reset_index(drop=True)
