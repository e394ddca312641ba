"""`aplot train-rm` from the command line: stdout carries only the manifest path, mistakes exit with
their code, and eval-rm reads the artifact."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from aplot_cli.cli import app

runner = CliRunner()


def test_train_rm_cli_bt_prints_only_the_manifest(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    out = tmp_path / "rm"
    result = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir / "manifest.json"), "--out-dir", str(out),
                                 "--backbone", str(tiny_bert_dir), "--loss", "bt", "--max-steps", "2", "--batch-size", "4",
                                 "--max-length", "48", "--max-eval-pairs", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()) == out / "manifest.json"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["loss"] == ["bt"] and manifest["diagnostics"]["ot"]["solves"] == 0
    # no --learning-rate: the default for a backbone that is neither embedded one, recorded as such
    assert manifest["config"]["learning_rate"] == 5e-5
    assert manifest["diagnostics"]["learning_rate"] == {"value": 5e-5, "source": "default for the backbone"}
    assert "ot/margin_mean" not in (out / "train_log.jsonl").read_text()
    # refusing a finished run on --resume, and a non-empty dir without --overwrite
    again = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--out-dir", str(out), "--loss", "bt", "--resume",
                                "-q"])
    assert again.exit_code == 4


def test_train_rm_cli_errors(synthetic_pairs_dir, tmp_path):
    missing = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--out-dir", str(tmp_path / "x"), "-q"])
    assert missing.exit_code == 2 and "embeddings" in missing.output
    bad = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--out-dir", str(tmp_path / "y"),
                              "--loss", "focal+label_smooth", "-q"])
    assert bad.exit_code == 2
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    wrong = runner.invoke(app, ["train-rm", str(unfinished), "--out-dir", str(tmp_path / "z"), "--loss", "bt", "-q"])
    assert wrong.exit_code == 4


def test_train_rm_cli_frozen_backbone_then_eval_rm(tiny_bert_dir, synthetic_pairs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("APLOT_CACHE", str(tmp_path / "cache"))  # features of its own: other tests cache the same
    out = tmp_path / "rm"
    result = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--out-dir", str(out), "--backbone",
                                 str(tiny_bert_dir), "--loss", "constant_margin", "--frozen-backbone", "--max-steps", "20",
                                 "--batch-size", "16", "--learning-rate", "0.01", "--max-length", "48", "--quiet"])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()) == out / "manifest.json"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["frozen_backbone"] is True and manifest["metrics"]["steps"] == 20
    assert manifest["model"]["frozen_backbone"]["computed"] > 0
    scored = runner.invoke(app, ["eval-rm", str(out), "--benchmark", "pairs", "--data", str(synthetic_pairs_dir),
                                 "--out-dir", str(tmp_path / "eval"), "-q"])
    assert scored.exit_code == 0, scored.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"]["frozen_backbone"]["route"] == "cached backbone features + head"
    assert sum(s["total"] for s in metrics["subsets"].values()) == 60 and 0 <= metrics["score"] <= 1
    refused = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--out-dir", str(tmp_path / "x"), "--backbone",
                                  str(tiny_bert_dir), "--loss", "bt", "--frozen-backbone", "--lora", "-q"])
    assert refused.exit_code == 2 and "frozen_backbone" in refused.output
