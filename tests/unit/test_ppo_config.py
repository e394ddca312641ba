"""`aplot ppo` values are checked before anything is loaded: each error names the key, its value, the
rule, and where to fix it (the flag where the CLI has one)."""

import math

import pytest
from typer.testing import CliRunner

from aplot_cli.cli import app
from aplot_cli.config import PPO_FLAGS, PPOConfig
from aplot_cli.errors import ConfigError
from aplot_cli.ppo import stage as ppo_stage

BASE = {"reward_model": "rm", "prompts": "p.jsonl"}


@pytest.mark.parametrize(("changes", "named"), [
    ({"lr": -1.0}, "`lr` is -1.0; it must be a finite number > 0"),
    ({"lr": math.inf}, "`lr` is inf"),
    ({"lr": math.nan}, "`lr` is nan"),
    ({"temperature": 0.0}, "`temperature` is 0.0"),
    ({"kl_coef": -0.1}, "`kl_coef` is -0.1; it must be a finite number >= 0"),
    ({"vf_coef": math.inf}, "`vf_coef` is inf"),
    ({"gamma": 1.5}, "`gamma` is 1.5; it must be in [0, 1]"),
    ({"lam": -0.5}, "`lam` is -0.5"),
    ({"cliprange": 0.0}, "`cliprange` is 0.0"),
    ({"top_p": 0.0}, "`top_p` is 0.0; it must be in (0, 1]"),
    ({"updates": 0}, "`updates` is 0; it must be >= 1"),
    ({"batch_size": -4}, "`batch_size` is -4"),
    ({"max_new_tokens": 0}, "`max_new_tokens` is 0"),
    ({"max_prompts": 0}, "`max_prompts` is 0; it must be >= 1 (or unset)"),
    ({"save_every": -1}, "`save_every` is -1; it must be >= 0"),
    ({"sample_size": -1}, "`sample_size` is -1"),
    ({"missing_eos_penalty": math.nan}, "`missing_eos_penalty` is nan"),
    ({"max_grad_norm": 0.0}, "`max_grad_norm` is 0.0"),
    ({"rm_batch_size": 0}, "`rm_batch_size` is 0"),
    ({"rm_max_length": 0}, "`rm_max_length` is 0"),
    ({"max_prompt_length": 0}, "`max_prompt_length` is 0"),
    ({"device": "gpu"}, "`device` is 'gpu'; it must be one of auto, cpu, cuda"),
    ({"reward_norm": "whitten"}, "`reward_norm` is 'whitten'"),
])
def test_validation_names_the_key_the_value_and_the_fix(changes, named):
    with pytest.raises(ConfigError) as caught:
        ppo_stage.validate(PPOConfig(**BASE, **changes))
    assert named in caught.value.message, caught.value.message
    key = next(iter(changes))
    assert f"`{key}:`" in caught.value.hint
    assert (f"--{key.replace('_', '-')}" in caught.value.hint) == (key in PPO_FLAGS), caught.value.hint


def test_defaults_and_edge_values_pass():
    ppo_stage.validate(PPOConfig(**BASE))
    ppo_stage.validate(PPOConfig(**BASE, gamma=0.0, lam=1.0, kl_coef=0.0, top_p=1.0, save_every=0, sample_size=0))
    with pytest.raises(ConfigError, match="mini_batch_size"):
        ppo_stage.validate(PPOConfig(**BASE, batch_size=2, mini_batch_size=4))


def test_ppo_flags_are_the_cli_options():
    import typer

    command = next(c for c in typer.main.get_command(app).commands.values() if c.name == "ppo")
    options = {p.name for p in command.params} - {"out_dir", "resume", "config", "overwrite", "quiet"}
    assert options == PPO_FLAGS


@pytest.mark.parametrize("flag", ["--lr", "--learning-rate"])
def test_cli_refuses_a_bad_value_before_loading_anything(flag, tmp_path, monkeypatch):
    """Nothing is loaded and the output folder is not touched: the policy and the RM do not even exist."""
    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the values were checked")

    monkeypatch.setattr(ppo_stage, "load_policy", never)
    monkeypatch.setattr(ppo_stage, "load_reward_model", never)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["ppo", "--policy", "missing-policy", "--reward-model", "missing-rm",
                                      "--prompts", "missing.jsonl", "--out-dir", str(out), flag, "-1"])
    assert result.exit_code == 2, result.output
    assert "`lr` is -1.0" in result.stderr and "--lr" in result.stderr
    assert not out.exists()


def test_learning_rate_is_an_alias_of_lr(tmp_path, monkeypatch):
    seen = {}

    def record(cfg, out_dir, overwrite=False, resume=False):
        seen["lr"] = cfg.lr
        return out_dir / "manifest.json"

    monkeypatch.setattr(ppo_stage, "run", record)
    result = CliRunner().invoke(app, ["ppo", "--reward-model", "r", "--prompts", "p.jsonl",
                                      "--out-dir", str(tmp_path / "o"), "--learning-rate", "3e-4"])
    assert result.exit_code == 0, result.output
    assert seen["lr"] == pytest.approx(3e-4)
