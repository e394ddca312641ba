"""The embeddings artifact that `aplot embed` writes: its stage name, the reader of one split's vectors, and
the check that an embeddings artifact was made from a given pairs artifact. Apart from the stage (which
loads an encoder), so that train-rm and margins read vectors without importing it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aplot_cli import artifacts
from aplot_cli.errors import ArtifactError, damaged_names
from aplot_cli.readers.pairs import recorded_train_split

STAGE = "embed"


@dataclass(frozen=True)
class SplitEmbeddings:
    pair_ids: list[str]
    chosen: np.ndarray     # (N, D) float32, L2-normalised
    rejected: np.ndarray   # (N, D)


def load_embeddings(embed_dir: Path | str, split: str) -> SplitEmbeddings:
    """Read one split of an embeddings artifact (refuses unfinished runs, and files that are cut short, hold
    objects or another shape: chosen and rejected are (N, D) float32 with N = the number of pair ids)."""
    art = artifacts.open_artifact(embed_dir, STAGE)
    if f"{split}_pair_ids.json" not in art.output_hashes():
        raise ArtifactError(f"{art.path} has no embeddings for split `{split}`",
                            hint="re-run `aplot embed` on the pairs artifact that holds that split")
    redo = f"re-run `aplot embed PAIRS --out-dir {art.path} --overwrite`"
    ids_path = art.file(f"{split}_pair_ids.json")  # only files the manifest lists, whose hashes open_artifact checked
    with damaged_names(ids_path, redo):
        pair_ids = json.loads(ids_path.read_text(encoding="utf-8"))
    if not isinstance(pair_ids, list) or not all(isinstance(i, str) for i in pair_ids):
        raise ArtifactError(f"{ids_path} is not a JSON list of pair ids", hint=redo)
    sides = {}
    for side in ("chosen", "rejected"):
        path = art.file(f"{split}_{side}.npy")
        with damaged_names(path, redo):  # never allow_pickle: an array of objects is refused here
            vectors = np.load(path, allow_pickle=False)
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != len(pair_ids):
            raise ArtifactError(f"{path} holds a {vectors.dtype} array of shape {vectors.shape}; expected float32 "
                                f"of shape ({len(pair_ids)}, D), one row per pair id", hint=redo)
        if not np.isfinite(vectors).all():
            raise ArtifactError(f"{path} holds NaN or infinite values", hint=redo)
        sides[side] = vectors
    if sides["chosen"].shape != sides["rejected"].shape:
        raise ArtifactError(f"{art.path}: {split}_chosen.npy is {sides['chosen'].shape} but {split}_rejected.npy is "
                            f"{sides['rejected'].shape}", hint=redo)
    return SplitEmbeddings(pair_ids=pair_ids, chosen=sides["chosen"], rejected=sides["rejected"])


def check_embeddings_match(emb_art, pairs_art) -> None:
    """Embeddings are looked up by pair id, and a pair id does not change when chosen and rejected are
    swapped (e.g. another `--flip-ratio`): only embeddings of this train split's content are safe. Older
    embeddings artifacts record only the pairs manifest's hash, so for those that must match."""
    was, now, what = recorded_train_split(emb_art, pairs_art)
    if was != now:
        raise ArtifactError(f"the embeddings in {emb_art.path} were made from other pairs than {pairs_art.path} "
                            f"(their {what} {str(was)[:12]}, this one's {str(now)[:12]})",
                            hint=f"re-run `aplot embed {pairs_art.path} --out-dir DIR` (cached texts are not "
                                 "encoded again)")
