"""The samples artifact that `aplot sample` writes: its stage name, file layout and reader. Apart from the
stage itself (which loads a policy), so that `prepare --from-samples` and the best-of-n benchmark read it
without importing the sampling machinery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aplot_cli import artifacts
from aplot_cli.errors import ArtifactError, damaged_names

STAGE = "sample"
RESPONSES, PROMPTS, CHUNKS, RUN_CONFIG = "responses.parquet", "prompts.jsonl", "chunks", "run_config.json"
COLUMNS = ("prompt_id", "family", "split", "prompt", "sample", "response", "gold", "n_tokens", "eos",
           "prompt_tokens")


def open_samples(path: Path | str) -> tuple[artifacts.Artifact, Any]:
    """A finished samples artifact and its responses (a DataFrame), or an ArtifactError naming the fix."""
    import pandas as pd

    art = artifacts.open_artifact(path, STAGE)
    redo = f"re-run `aplot sample --out-dir {art.path} --overwrite`"
    with damaged_names(art.file(RESPONSES), redo):
        frame = pd.read_parquet(art.file(RESPONSES))
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ArtifactError(f"{art.file(RESPONSES)} lacks column(s) {missing}", hint=redo)
    return art, frame
