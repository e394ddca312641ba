"""Every config option is a flag of its command, with its help and default in --help; the flags are
generated from the stage configs, keep the precedence defaults < --config YAML < typed flags, accept
the common aliases (--lr), and a stage takes the manifest path the previous one printed."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from aplot_cli import config as config_module
from aplot_cli.cli import app
from aplot_cli.config import (
    EMBED_FLAGS,
    EVAL_FLAGS,
    PPO_FLAGS,
    PREPARE_FLAGS,
    SAMPLE_FLAGS,
    TRAIN_FLAGS,
    EmbedConfig,
    EvalConfig,
    PPOConfig,
    PrepareConfig,
    SampleConfig,
    TrainConfig,
    resolve_train,
)
from aplot_cli.config_files import build_config
from aplot_cli.errors import ConfigError
from aplot_cli.options import flag_name, shown_default

runner = CliRunner()
STAGES = [("prepare", PrepareConfig, PREPARE_FLAGS), ("embed", EmbedConfig, EMBED_FLAGS),
          ("train-rm", TrainConfig, TRAIN_FLAGS), ("eval-rm", EvalConfig, EVAL_FLAGS), ("ppo", PPOConfig, PPO_FLAGS),
          ("sample", SampleConfig, SAMPLE_FLAGS)]


def _command(name: str):
    return next(c for c in typer.main.get_command(app).commands.values() if c.name == name)


def _options(name: str) -> dict[str, object]:
    return {p.name: p for p in _command(name).params}


@pytest.mark.parametrize(("command", "cls", "flags"), STAGES, ids=[s[0] for s in STAGES])
def test_every_config_field_is_a_flag_with_help_and_its_default(command, cls, flags):
    options = _options(command)
    assert flags == {f.name for f in dataclasses.fields(cls)}  # no field is left YAML-only
    for f in dataclasses.fields(cls):
        param = options[f.name]
        assert flag_name(f.name) in param.opts, (f.name, param.opts)
        assert param.default is None, f"{f.name}: a typed default would override --config"
        help_text = param.help.replace("\\[", "[")
        assert len(f.metadata["help"]) > 5 and help_text.startswith(f.metadata["help"]), f.name
        assert help_text.endswith(f"[default: {shown_default(f)}]"), (f.name, help_text)
        if f.default is None:  # None says nothing: the field names what it means
            assert f.metadata["shown"], f"{cls.__name__}.{f.name} has a None default and no `shown` text"


def test_train_rm_has_the_switches_that_were_yaml_only():
    options = {opt for p in _command("train-rm").params for opt in p.opts}
    assert {"--ot-reg", "--w-rew", "--w-sem", "--ot-iters", "--ot-tol", "--scheduler", "--warmup-ratio",
            "--margin-warmup-steps", "--lora-r", "--gradient-checkpointing", "--lr", "--learning-rate"} <= options
    assert {"--embeddings", "--resume", "--config", "--overwrite", "--quiet", "--out-dir"} <= options


def test_help_shows_every_default(monkeypatch):
    result = runner.invoke(app, ["train-rm", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    lines = {line.split()[1].rstrip(","): line for line in result.output.splitlines()
             if re.match(r"^\W+--[a-z]", line)}
    assert "[default: 0.1]" in lines["--ot-reg"] and "[default: 1e-06]" in lines["--ot-tol"]
    assert "[default: linear]" in lines["--scheduler"] and "[default: aplot]" in lines["--loss"]
    assert "[default: off]" in lines["--lora"] and "[default: on]" in lines["--save-margins"]
    rate = lines["--learning-rate"]
    assert "--lr" in rate and "minilm-l6 2e-4" in rate and "smollm2-135m 3e-5" in rate
    assert "--frozen-backbone 1e-3" in rate
    ppo = runner.invoke(app, ["ppo", "--help"], env={"COLUMNS": "400"}).output
    assert re.search(r"--lr, --learning-rate .*\[default: 1e-05\]", ppo)


def _capture(monkeypatch, module: str) -> dict:
    """Replace a stage's entry point with one that records what the CLI passed it."""
    import importlib

    seen: dict = {}

    def fake_run(cfg, *args, **kwargs):
        seen.update(cfg=cfg, args=args, kwargs=kwargs)
        return Path("manifest.json")

    monkeypatch.setattr(importlib.import_module(f"aplot_cli.{module}"), "run", fake_run)
    return seen


def test_a_flag_beats_the_yaml_which_beats_the_default(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, "train")
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("ot_reg: 0.3\nw_rew: 0.8\nsave_margins: true\nscheduler: cosine\nloss: bt\n")
    result = runner.invoke(app, ["train-rm", str(tmp_path), "-o", str(tmp_path / "rm"), "--config", str(yaml_path),
                                 "--ot-reg", "0.5", "--no-save-margins", "--loss", "aplot+center",
                                 "--warmup-ratio", "0.1"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.ot_reg == 0.5 and cfg.save_margins is False  # typed flags beat the YAML (False included)
    assert cfg.loss == ("aplot", "center") and cfg.warmup_ratio == 0.1
    assert cfg.w_rew == 0.8 and cfg.scheduler == "cosine"   # YAML beats the defaults
    assert cfg.w_sem == TrainConfig().w_sem and cfg.learning_rate is None  # untouched: the default
    repeated = runner.invoke(app, ["train-rm", str(tmp_path), "-o", str(tmp_path / "rm"), "--loss", "bt",
                                   "--loss", "center", "--report-to", "tensorboard", "--report-to", "wandb"])
    assert repeated.exit_code == 0 and seen["cfg"].loss == ("bt", "center")
    assert seen["cfg"].report_to == ("tensorboard", "wandb")


@pytest.mark.parametrize("flag", ["--lr", "--learning-rate"])
def test_learning_rate_has_both_names_on_train_rm_and_ppo(flag, monkeypatch, tmp_path):
    seen = _capture(monkeypatch, "train")
    result = runner.invoke(app, ["train-rm", str(tmp_path), "-o", str(tmp_path / "rm"), flag, "3e-4"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"].learning_rate == 3e-4
    seen = _capture(monkeypatch, "ppo.stage")
    result = runner.invoke(app, ["ppo", "-o", str(tmp_path / "ppo"), flag, "2e-6"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"].lr == 2e-6


def test_yaml_takes_the_alias_too_but_not_both_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\n")
    assert build_config(TrainConfig, path).learning_rate == 1e-4
    path.write_text("learning_rate: 1e-4\n")
    assert build_config(PPOConfig, path).lr == 1e-4
    path.write_text("lr: 1e-4\nlearning_rate: 2e-4\n")
    with pytest.raises(ConfigError, match="`learning_rate` and `lr` set the same option"):
        build_config(PPOConfig, path)


def test_unknown_flags_and_keys_name_the_nearest(tmp_path):
    wide = {"COLUMNS": "400"}
    result = runner.invoke(app, ["train-rm", str(tmp_path), "-o", str(tmp_path / "rm"), "--ot-regg", "0.2"], env=wide)
    assert result.exit_code == 2
    assert re.search(r"No such option: --ot-regg \((Did you mean|Possible options:) --ot-reg\b", result.output)
    result = runner.invoke(app, ["ppo", "-o", str(tmp_path / "ppo"), "--learning-rat", "1e-5"], env=wide)
    assert result.exit_code == 2
    assert re.search(r"(Did you mean|Possible options:) --learning-rate\b", result.output)
    (tmp_path / "c.yaml").write_text("ot_regg: 0.2\n")
    with pytest.raises(ConfigError, match="did you mean `ot_reg`"):
        build_config(TrainConfig, tmp_path / "c.yaml")


def test_learning_rate_default_depends_on_backbone_and_what_trains():
    assert resolve_train(TrainConfig()).learning_rate == 2e-4
    assert resolve_train(TrainConfig(backbone="smollm2-135m")).learning_rate == 3e-5
    assert resolve_train(TrainConfig(backbone="some/hub-model")).learning_rate == config_module.OTHER_LEARNING_RATE
    assert resolve_train(TrainConfig(frozen_backbone=True)).learning_rate == 1e-3
    assert resolve_train(TrainConfig(lora=True)).learning_rate == config_module.LORA_LEARNING_RATES["minilm-l6"]
    assert resolve_train(TrainConfig(learning_rate=7e-6, frozen_backbone=True)).learning_rate == 7e-6


def test_manifest_paths_stand_for_their_artifact(monkeypatch, tmp_path):
    """What a stage prints (its manifest path) is accepted wherever an artifact folder is expected."""
    pairs, emb, rm = (tmp_path / name for name in ("pairs", "emb", "rm"))
    seen = _capture(monkeypatch, "train")
    result = runner.invoke(app, ["train-rm", str(pairs / "manifest.json"), "-o", str(tmp_path / "out"),
                                 "--embeddings", str(emb / "manifest.json")])
    assert result.exit_code == 0, result.output
    assert seen["args"][0] == pairs and seen["kwargs"]["embeddings_dir"] == emb
    seen = _capture(monkeypatch, "ppo.stage")
    result = runner.invoke(app, ["ppo", "-o", str(tmp_path / "out"), "--reward-model", str(rm / "manifest.json"),
                                 "--prompts", str(pairs / "manifest.json")])
    assert result.exit_code == 0, result.output
    assert seen["cfg"].reward_model == str(rm) and seen["cfg"].prompts == str(pairs)
    seen = _capture(monkeypatch, "evaluate")
    result = runner.invoke(app, ["eval-rm", str(rm / "manifest.json"), "-o", str(tmp_path / "out"),
                                 "--data", str(pairs / "manifest.json"), "--data", "extra.jsonl"])
    assert result.exit_code == 0, result.output
    assert seen["args"][0] == str(rm) and seen["cfg"].data == (str(pairs), "extra.jsonl")
    (tmp_path / "c.yaml").write_text(f"reward_model: {rm / 'manifest.json'}\n")  # YAML values too
    assert build_config(PPOConfig, tmp_path / "c.yaml").reward_model == str(rm)


def test_prepare_then_embed_its_printed_manifest_path(tiny_bert_dir, tmp_path):
    """The shell chain `aplot embed "$(aplot prepare ...)" ...` works as written."""
    from aplot_cli import artifacts

    printed = runner.invoke(app, ["prepare", "--recipe", "synthetic", "--synthetic-pairs", "40",
                                  "--synthetic-ood-pairs", "8", "-o", str(tmp_path / "p"), "-q"])
    assert printed.exit_code == 0, printed.output
    manifest_path = printed.stdout.strip()
    assert manifest_path == str(tmp_path / "p" / "manifest.json")
    result = runner.invoke(app, ["embed", manifest_path, "-o", str(tmp_path / "e"), "--model", str(tiny_bert_dir),
                                 "--max-length", "32", "-q"])
    assert result.exit_code == 0, result.output
    embedded = json.loads(Path(result.stdout.strip()).read_text())
    assert embedded["stage"] == "embed"
    pairs = artifacts.open_artifact(manifest_path, "prepare")  # the library entry point takes it too
    assert pairs.path == tmp_path / "p"
    assert pairs.manifest_sha256() in json.dumps(embedded["inputs"])
