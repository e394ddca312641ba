"""`aplot_cli.readers`: a train-rm run's margin record and the check that an artifact was made from a given
pairs artifact, on artifacts written through the manifest writer the stages use."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from aplot_cli import artifacts, outdir
from aplot_cli.errors import ArtifactError
from aplot_cli.readers import embeddings, pairs, train_runs


def _run(folder: Path, margins: pd.DataFrame | None, pairs_art: artifacts.Artifact | None = None) -> artifacts.Artifact:
    """A finished train-rm folder holding `margins` as its margin record (none when None)."""
    outdir.prepare_out_dir(folder, stage=train_runs.STAGE)
    outputs = []
    if margins is not None:
        margins.to_parquet(folder / train_runs.MARGINS_FILE, index=False)
        outputs.append(artifacts.describe_output(folder, train_runs.MARGINS_FILE, rows=len(margins)))
    artifacts.write_manifest(
        folder,
        stage=train_runs.STAGE,
        config={},
        outputs=outputs,
        inputs={"pairs": pairs_art} if pairs_art is not None else None,
    )
    return artifacts.open_artifact(folder, train_runs.STAGE)


def test_the_margin_record_is_read_with_its_types(tmp_path):
    record = pd.DataFrame(
        {
            "pair_id": ["a", "b"],
            "step": [1, 2],
            "margin": [0.1, 0.2],
            "reward_chosen": [1, 2],
            "reward_rejected": [0.5, -1.0],
        }
    )
    run = _run(tmp_path / "rm", record)
    table = train_runs.read_margins(train_runs.margins_file(run, instead="x"), redo="redo it")
    assert list(table.columns) == ["pair_id", "step", "reward_chosen", "reward_rejected"]
    assert table["step"].dtype == "int64" and table["reward_chosen"].dtype == "float64"
    assert table["reward_chosen"].tolist() == [1.0, 2.0] and table["pair_id"].tolist() == ["a", "b"]


def test_a_run_without_a_record_names_the_fix(tmp_path):
    run = _run(tmp_path / "rm", None)
    with pytest.raises(ArtifactError, match=f"the train-rm run {run.path} has no margins.parquet") as caught:
        train_runs.margins_file(run, instead="score it instead")
    assert "save_margins: true" in caught.value.hint and "score it instead" in caught.value.hint


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"pair_id": ["a"], "step": [1], "reward_chosen": [1.0]}),  # a column missing
        pd.DataFrame(
            {"pair_id": ["a"], "step": [1], "reward_chosen": ["high"], "reward_rejected": [0.0]}
        ),  # not numbers
    ],
)
def test_a_record_that_is_not_one_is_a_damaged_artifact(tmp_path, frame):
    run = _run(tmp_path / "rm", frame)
    with pytest.raises(ArtifactError, match="margins.parquet") as caught:
        train_runs.read_margins(train_runs.margins_file(run, instead="x"), redo="redo it")
    assert "redo it" in caught.value.hint


def test_made_from_these_pairs_is_the_train_split_content(synthetic_pairs_dir, tmp_path):
    pairs_art = artifacts.open_artifact(synthetic_pairs_dir, pairs.STAGE)
    run = _run(tmp_path / "rm", None, pairs_art)
    was, now, what = pairs.recorded_train_split(run, pairs_art)
    assert was == now == pairs_art.output_hashes()["train.parquet"] and what == "train.parquet sha256"
    train_runs.check_trained_on(run, pairs_art)
    embeddings.check_embeddings_match(run, pairs_art)  # the same record, read the same way

    frame = pairs.load_pairs(synthetic_pairs_dir, "train")
    swapped = frame.assign(chosen=frame["rejected"], rejected=frame["chosen"])  # same pair ids, labels flipped
    other_dir = tmp_path / "other"
    outdir.prepare_out_dir(other_dir, stage=pairs.STAGE)
    swapped.to_parquet(other_dir / "train.parquet", index=False)
    artifacts.write_manifest(
        other_dir,
        stage=pairs.STAGE,
        config={},
        outputs=[artifacts.describe_output(other_dir, "train.parquet", rows=len(swapped))],
    )
    other = artifacts.open_artifact(other_dir, pairs.STAGE)
    with pytest.raises(ArtifactError, match="was trained on other pairs than"):
        train_runs.check_trained_on(run, other)
    with pytest.raises(ArtifactError, match="made from other pairs than"):
        embeddings.check_embeddings_match(run, other)


def test_an_older_record_compares_the_pairs_manifest(synthetic_pairs_dir, tmp_path):
    pairs_art = artifacts.open_artifact(synthetic_pairs_dir, pairs.STAGE)
    run = _run(tmp_path / "rm", None)
    run.manifest["inputs"] = {"pairs": {"manifest_sha256": pairs_art.manifest_sha256()}}  # before outputs_sha256
    assert pairs.recorded_train_split(run, pairs_art) == (
        pairs_art.manifest_sha256(),
        pairs_art.manifest_sha256(),
        "manifest sha256",
    )
    run.manifest["inputs"] = {"pairs": {"manifest_sha256": "0" * 64}}
    with pytest.raises(ArtifactError, match="trained on other pairs"):
        train_runs.check_trained_on(run, pairs_art)
