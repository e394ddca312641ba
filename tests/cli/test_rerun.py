"""Reruns: `--config` takes a finished run's manifest.json (or train-rm's run_config.json), reads only its
resolved config, keeps the precedence defaults < --config < typed flags, refuses another stage's run, and a
train-rm run rerun from its manifest has the same weights, byte for byte."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aplot_cli.cli import app
from aplot_cli.config import EmbedConfig, EvalConfig, PrepareConfig, TrainConfig, config_to_dict
from aplot_cli.config_files import build_config
from aplot_cli.errors import ConfigError

runner = CliRunner()
WIDE = {"COLUMNS": "300"}


def test_a_rerun_from_the_manifest_has_the_same_weights(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    # settings other than the defaults (backbone, loss, seed, learning rate, ...): a rerun that ignored the
    # manifest would train another model
    first = tmp_path / "first"
    result = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--out-dir", str(first), "--backbone",
                                 str(tiny_bert_dir), "--loss", "bt+center", "--max-steps", "3", "--batch-size", "4",
                                 "--max-length", "48", "--max-eval-pairs", "8", "--train-eval-pairs", "8", "--seed", "3",
                                 "--lr", "1e-3",
                                 "--no-save-margins", "-q"])
    assert result.exit_code == 0, result.output
    again = tmp_path / "again"
    result = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--config", str(first / "manifest.json"),
                                 "--out-dir", str(again), "-q"])
    assert result.exit_code == 0, result.output
    weights = (first / "model" / "model.safetensors").read_bytes()
    assert (again / "model" / "model.safetensors").read_bytes() == weights
    was, now = (json.loads((run / "manifest.json").read_text())["config"] for run in (first, again))
    assert now == was and now["seed"] == 3 and now["learning_rate"] == 1e-3
    # train-rm's run_config.json says the same; a flag typed beside it still wins
    flagged = tmp_path / "flagged"
    result = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--config", str(first / "run_config.json"),
                                 "--out-dir", str(flagged), "--seed", "4", "-q"])
    assert result.exit_code == 0, result.output
    config = json.loads((flagged / "manifest.json").read_text())["config"]
    assert config == {**was, "seed": 4}
    assert (flagged / "model" / "model.safetensors").read_bytes() != weights


def _manifest(tmp_path, stage: str, config: dict, name: str = "manifest.json"):
    path = tmp_path / stage / name
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "config": config} if name == "manifest.json" else {"config": config, "inputs": {}}
    path.write_text(json.dumps({**record, "metrics": {"test_accuracy": float("nan")}}))
    return path


def test_the_manifest_config_sits_between_the_defaults_and_the_flags(tmp_path):
    recorded = config_to_dict(TrainConfig(ot_reg=0.3, w_rew=0.8, loss=("bt", "center"), learning_rate=1e-3))
    path = _manifest(tmp_path, "train-rm", recorded)
    cfg = build_config(TrainConfig, path, {"ot_reg": 0.5, "save_margins": False})
    assert cfg.ot_reg == 0.5 and cfg.save_margins is False  # typed flags beat the manifest
    assert cfg.w_rew == 0.8 and cfg.loss == ("bt", "center") and cfg.learning_rate == 1e-3  # the manifest's
    run_config = _manifest(tmp_path, "rm", recorded, name="run_config.json")
    assert build_config(TrainConfig, run_config) == build_config(TrainConfig, path)
    # a manifest of prepare reruns prepare, its recipe's defaults under the manifest's values
    prepared = _manifest(tmp_path, "prepare", config_to_dict(PrepareConfig(recipe="synthetic", synthetic_pairs=40)))
    assert build_config(PrepareConfig, prepared, {"seed": 2}) == PrepareConfig(recipe="synthetic", synthetic_pairs=40,
                                                                               seed=2)
    plain = tmp_path / "options.json"  # a JSON file of options is still read as options
    plain.write_text('{"ot_reg": 0.2}')
    assert build_config(TrainConfig, plain).ot_reg == 0.2


@pytest.mark.parametrize(("cls", "stage", "name", "said"), [
    (EvalConfig, "train-rm", "manifest.json", "the manifest of an `aplot train-rm` run"),
    (EmbedConfig, "rm", "run_config.json", "the manifest of an `aplot train-rm` run"),
    (TrainConfig, "eval-rm", "manifest.json", "the manifest of an `aplot eval-rm` run"),
])
def test_another_stages_run_is_refused_by_name(cls, stage, name, said, tmp_path):
    path = _manifest(tmp_path, stage, {"batch_size": 8}, name=name)
    with pytest.raises(ConfigError, match="takes .* options") as caught:
        build_config(cls, path)
    assert said in caught.value.message and "rerun that run" in caught.value.hint


def test_the_cli_refuses_another_stages_manifest_before_the_out_dir(tmp_path):
    path = _manifest(tmp_path, "train-rm", config_to_dict(TrainConfig()))
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval-rm", "some/model", "--config", str(path), "--out-dir", str(out)], env=WIDE)
    assert result.exit_code == 2 and "`aplot eval-rm --config` takes eval-rm options" in result.output
    assert not out.exists()
