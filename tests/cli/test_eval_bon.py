"""`aplot eval-rm --benchmark bon`: best-of-n against the gold checker on a samples artifact. With the gold
label itself as the score the curve is the oracle's; with the score negated it falls below a random pick
(so the test fails if the selection is inverted); a real reward model runs end to end and its saved
predictions give the same metrics again."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from aplot_cli import outdir
from aplot_cli.cli import app

runner = CliRunner()


def _eval(args: list[str]) -> dict:
    result = runner.invoke(app, ["eval-rm", *args])
    assert result.exit_code == 0, result.stderr + result.stdout
    return json.loads((Path(result.stdout.strip()).parent / "metrics.json").read_text())


def _fake_predictions(samples: Path, path: Path, sign: float) -> Path:
    """A predictions file whose score is `sign` x the gold label read from the samples artifact itself (plus
    a small distinct offset, so there are no ties), in eval-rm's long form."""
    frame = pd.read_parquet(samples / "responses.parquet")
    pred = pd.DataFrame({"example_id": frame["prompt_id"], "subset": frame["family"],
                         "kind": np.where(frame["gold"], "chosen", "rejected"), "position": frame["sample"],
                         "score": sign * frame["gold"].astype(float) + 0.001 * frame["sample"],
                         "response_chars": frame["response"].str.len()})
    pred.to_parquet(path, index=False)
    return path


def test_perfect_scorer_is_the_oracle_and_its_negation_is_below_random(samples_artifact, tmp_path):
    samples = samples_artifact(tmp_path / "samples", n=16, prompts_per_family=6)
    frame = pd.read_parquet(samples / "responses.parquet")
    perfect = _eval(["--benchmark", "bon", "--from-predictions", str(_fake_predictions(samples, tmp_path / "p.parquet", 1)),
                     "--out-dir", str(tmp_path / "perfect")])
    inverse = _eval(["--benchmark", "bon", "--from-predictions",
                     str(_fake_predictions(samples, tmp_path / "n.parquet", -1)), "--out-dir", str(tmp_path / "inverse")])
    ns = perfect["extra"]["n"]
    assert ns == [1, 2, 4, 8, 16] and perfect["primary"] == "bon@16"
    rm, oracle, rand = (perfect["extra"]["curves"][k]["mean"] for k in ("rm", "oracle", "random"))
    assert rm == pytest.approx(oracle)
    # the oracle in closed form, from the artifact's own labels: 1 - C(N-k, n) / C(N, n), mean over prompts
    passing = frame.groupby("prompt_id")["gold"].sum().to_numpy()
    assert oracle == pytest.approx([np.mean([1 - math.comb(16 - k, n) / math.comb(16, n) for k in passing]) for n in ns])
    assert rand == pytest.approx([frame["gold"].mean()] * len(ns))
    worse = inverse["extra"]["curves"]["rm"]["mean"]
    assert worse[0] == pytest.approx(rand[0])                      # n = 1: a random pick whatever the scores
    assert all(w < r - 0.05 for w, r in zip(worse[1:], rand[1:]))  # below random from n = 2 on
    assert all(a > b for a, b in zip(worse, worse[1:]))            # and worse the more it selects
    assert perfect["score"] == pytest.approx(oracle[-1]) and perfect["final"]["auc"] == 1.0
    assert inverse["final"]["auc"] == 0.0 and inverse["final"]["gain@16"] < 0
    assert set(perfect["subsets"]) == {"add_small", "choose_option", "copy_word"}


def test_bon_with_a_reward_model_end_to_end(tiny_bert_dir, samples_artifact, tmp_path):
    samples = samples_artifact(tmp_path / "samples", n=8, prompts_per_family=3)
    result = runner.invoke(app, ["eval-rm", str(tiny_bert_dir), "--benchmark", "bon", "--samples", str(samples),
                                 "--out-dir", str(tmp_path / "ev"), "--max-length", "64"])
    assert result.exit_code == 0, result.stderr + result.stdout
    out = Path(result.stdout.strip()).parent
    for name in ("metrics.json", "metrics.md", "predictions.parquet", "bon.png", "length_bias.png"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["samples"]["stage"] == "sample"
    assert "bon.png" in {o["path"] for o in manifest["outputs"]}
    assert outdir.foreign_entries(out, "eval-rm", finished=True) == []  # --overwrite may replace it
    metrics = json.loads((out / "metrics.json").read_text())
    extra = metrics["extra"]
    assert extra["n"] == [1, 2, 4, 8] and extra["kl"][-1] == pytest.approx(math.log(8) - 7 / 8)
    for key in ("rm", "oracle", "random", "rm_minus_random"):
        curve = extra["curves"][key]
        assert all(lo - 1e-9 <= m <= hi + 1e-9 for lo, m, hi in zip(curve["low"], curve["mean"], curve["high"]))
    oracle = extra["curves"]["oracle"]["mean"]
    assert all(r <= o + 1e-9 for r, o in zip(extra["curves"]["rm"]["mean"], oracle))  # nothing beats the oracle
    assert "## Best-of-n" in (out / "metrics.md").read_text()
    again = _eval(["--benchmark", "bon", "--from-predictions", str(out / "predictions.parquet"),
                   "--out-dir", str(tmp_path / "again")])
    assert again["extra"]["curves"] == extra["curves"] and again["final"] == metrics["final"]


def test_bon_refuses_train_prompts_and_wrong_flags(tiny_bert_dir, samples_artifact, tmp_path):
    train = samples_artifact(tmp_path / "train", split="train", n=4, prompts_per_family=2)
    result = runner.invoke(app, ["eval-rm", str(tiny_bert_dir), "--benchmark", "bon", "--samples", str(train),
                                 "--out-dir", str(tmp_path / "ev")])
    assert result.exit_code == 3 and "train-split prompts" in result.stderr
    result = runner.invoke(app, ["eval-rm", str(tiny_bert_dir), "--benchmark", "bon", "--data", str(train),
                                 "--out-dir", str(tmp_path / "ev")])
    assert result.exit_code == 2 and "--samples" in result.stderr
    result = runner.invoke(app, ["eval-rm", str(tiny_bert_dir), "--benchmark", "pairs", "--samples", str(train),
                                 "--out-dir", str(tmp_path / "ev")])
    assert result.exit_code == 2 and "--samples only applies" in result.stderr
    assert not (tmp_path / "ev").exists()
