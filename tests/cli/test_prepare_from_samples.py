"""`aplot prepare --from-samples`: on-policy pairs from a samples artifact (chosen passes the gold checker,
rejected fails it, same prompt), label noise with --flip-ratio, held-out samples refused, and train-rm
reads the result."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from aplot_cli.cli import app
from aplot_cli.data.verifiable import verify

runner = CliRunner()


def _prepare(args: list[str]):
    return runner.invoke(app, ["prepare", *args])


def test_pairs_follow_the_gold_checker_and_flips_are_exact(samples_artifact, tiny_bert_dir, tmp_path):
    samples = samples_artifact(tmp_path / "samples", split="train", n=8, prompts_per_family=5)
    result = _prepare(["--from-samples", str(samples / "manifest.json"), "--pairs-per-prompt", "3",
                       "--flip-ratio", "0.5", "--test-size", "0.25", "--out-dir", str(tmp_path / "pairs")])
    assert result.exit_code == 0, result.stderr + result.stdout
    out = Path(result.stdout.strip()).parent
    frame = pd.concat([pd.read_parquet(out / f"{split}.parquet") for split in ("train", "test")])
    responses = pd.read_parquet(samples / "responses.parquet")
    passes = responses.groupby("prompt_id")["gold"].agg(["sum", "count"])
    mixed = passes[(passes["sum"] > 0) & (passes["sum"] < passes["count"])]
    assert set(frame["prompt_id"]) == set(mixed.index)  # prompts that all pass or all fail give no pair
    assert frame.groupby("prompt_id").size().eq(3).all()
    for row in frame.itertuples():
        good, bad = (row.rejected, row.chosen) if row.flipped else (row.chosen, row.rejected)
        assert verify(row.prompt, good) is True and verify(row.prompt, bad) is False, row
        assert row.subset == row.family and row.source == "aplot-sample"
    train = frame[frame["split"] == "train"]
    assert train["flipped"].sum() == round(0.5 * len(train)) and not frame[frame["split"] == "test"]["flipped"].any()
    assert not set(train["prompt"]) & set(frame[frame["split"] == "test"]["prompt"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["samples"]["stage"] == "sample"
    counts = manifest["metrics"]["on_policy"]
    assert counts["prompts_all_pass"] == 3 and counts["prompts_all_fail"] == 3  # one of each per family
    assert counts["prompts_with_pair"] == len(mixed) and counts["pairs"] == len(frame)

    from aplot_cli import train
    from aplot_cli.config import TrainConfig

    cfg = TrainConfig(backbone=str(tiny_bert_dir), loss=("bt",), max_steps=2, batch_size=4, max_length=64,
                      max_eval_pairs=8, train_eval_pairs=8, save_steps=10, save_margins=False)
    rm = json.loads(train.run(cfg, out, tmp_path / "rm").read_text())
    assert rm["stage"] == "train-rm" and rm["inputs"]["pairs"]["stage"] == "prepare"


def test_held_out_samples_and_two_sources_are_refused(samples_artifact, tmp_path):
    held_out = samples_artifact(tmp_path / "samples", split="test", n=4, prompts_per_family=2)
    result = _prepare(["--from-samples", str(held_out), "--out-dir", str(tmp_path / "p")])
    assert result.exit_code == 3 and "train-split samples only" in result.stderr
    result = _prepare(["--from-samples", str(held_out), "--recipe", "synthetic", "--out-dir", str(tmp_path / "p")])
    assert result.exit_code == 2 and "two data sources" in result.stderr
    result = _prepare(["--from-samples", str(held_out), "--pairs-per-prompt", "0", "--out-dir", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert not (tmp_path / "p").exists()
