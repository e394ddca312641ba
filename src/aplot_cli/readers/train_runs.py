"""The reward-model run that `aplot train-rm` writes, as other stages read it: its stage name, the per-pair
margin record (`margins.parquet`: each pair's rewards at the step it was trained) and whether the run was
trained on a given pairs artifact. `aplot margins` reads the record; loading the run's model for scoring is
`scoring.load_reward_model`'s."""

from __future__ import annotations

from pathlib import Path

from aplot_cli import artifacts
from aplot_cli.errors import ArtifactError, damaged_names
from aplot_cli.readers.pairs import recorded_train_split

STAGE = "train-rm"
MARGINS_FILE = "margins.parquet"


def check_trained_on(run_art: artifacts.Artifact, pairs_art: artifacts.Artifact) -> None:
    """The run must have trained on this train split (pair ids do not change when labels flip)."""
    was, now, _ = recorded_train_split(run_art, pairs_art)
    if was != now:
        raise ArtifactError(f"the train-rm run {run_art.path} was trained on other pairs than {pairs_art.path} "
                            f"(train split {str(was)[:12]} vs {str(now)[:12]})",
                            hint="pass the pairs artifact the run was trained on (its manifest's inputs.pairs.path)")


def margins_file(run_art: artifacts.Artifact, instead: str) -> Path:
    """The run's margin record, listed in its manifest and present, or an ArtifactError (`instead`: what the
    reader can do without one)."""
    names = [o["path"] for o in run_art.manifest.get("outputs", [])]
    path = run_art.path / MARGINS_FILE
    if MARGINS_FILE not in names or not path.is_file():
        raise ArtifactError(f"the train-rm run {run_art.path} has no {MARGINS_FILE}",
                            hint=f"re-run train-rm with `save_margins: true` (the default), or {instead}")
    return path


def read_margins(path: Path, redo: str):
    """Each recorded pair's `pair_id`, `step` (int64), `reward_chosen` and `reward_rejected` (float64), as a
    DataFrame; a file that is damaged, lacks a column or holds rewards that are not numbers names `redo`."""
    import pandas as pd

    with damaged_names(path, redo):
        # a missing column is an ArrowInvalid too; reward columns that are not numbers fail the float cast
        table = pd.read_parquet(path, columns=["pair_id", "step", "reward_chosen", "reward_rejected"])
        return table.astype({"step": "int64", "reward_chosen": "float64", "reward_rejected": "float64"})
