"""`aplot ppo` end to end on tiny local models: a few updates change the policy, the log is complete,
the artifact is chained to its inputs, and a killed run resumes to the same result."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from aplot_cli.cli import app
from aplot_cli.config import PPOConfig
from aplot_cli.errors import ArtifactError, ConfigError
from aplot_cli.ppo import stage as ppo_stage
from aplot_cli.ppo import update as ppo_update

LOG_KEYS = {"update", "score", "score_std", "reward", "kl", "entropy", "pg_loss", "vf_loss", "pg_clipfrac",
            "vf_clipfrac", "approx_kl", "response_length", "eos_rate", "gold_accuracy", "gold_checked", "seconds"}


def _cfg(lm, rm, prompts, **changes) -> PPOConfig:
    base = PPOConfig(policy=str(lm), reward_model=str(rm), prompts=str(prompts), updates=3, batch_size=4,
                     mini_batch_size=2, ppo_epochs=2, max_new_tokens=6, lr=1e-3, save_every=1, sample_size=2,
                     device="cpu", seed=0)
    return replace(base, **changes)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _weights(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def test_ppo_updates_the_policy_and_logs_every_update(tiny_llama_lm_dir, tiny_bert_dir, synthetic_pairs_dir,
                                                      tmp_path):
    from aplot_cli import train
    from aplot_cli.config import TrainConfig

    rm_cfg = TrainConfig(backbone=str(tiny_bert_dir), loss=("bt",), max_steps=2, batch_size=8, max_length=64,
                         max_eval_pairs=8, train_eval_pairs=8, save_steps=10, save_margins=False)
    rm = train.run(rm_cfg, synthetic_pairs_dir, tmp_path / "rm").parent  # a train-rm artifact as the RM
    cfg = _cfg(tiny_llama_lm_dir, rm, synthetic_pairs_dir)
    manifest_path = ppo_stage.run(cfg, tmp_path / "out")
    out = manifest_path.parent
    manifest = json.loads(manifest_path.read_text())
    assert manifest["stage"] == "ppo" and set(manifest["inputs"]) == {"prompts", "reward_model"}
    assert manifest["inputs"]["reward_model"]["stage"] == "train-rm"

    rows = _rows(out / "log.jsonl")
    assert [r["update"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert LOG_KEYS <= set(row)
        assert all(math.isfinite(v) for k, v in row.items() if isinstance(v, float))
        assert row["gold_accuracy"] is not None and row["gold_checked"] == 4  # synthetic prompts: gold checked
        assert 1 <= row["response_length"] <= 6 and 0 <= row["eos_rate"] <= 1
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollouts come from the reference itself

    samples = _rows(out / "rollouts.jsonl")
    assert len(samples) == 6 and {"prompt", "response", "score", "gold", "update"} <= set(samples[0])

    before, after = _weights(tiny_llama_lm_dir), _weights(out / "policy")
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (out / "policy" / "tokenizer.json").is_file() and not (out / "checkpoints").exists()
    head = load_file(out / "value_head.safetensors")
    assert head["weight"].abs().sum() > 0  # the zero-initialised value head has learned something

    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(out / "policy")  # loads as a plain causal LM
    assert manifest["metrics"]["updates"] == 3


def test_killed_run_resumes_to_the_same_policy(tiny_llama_lm_dir, tiny_bert_dir, synthetic_pairs_dir, tmp_path,
                                               monkeypatch):
    cfg = _cfg(tiny_llama_lm_dir, tiny_bert_dir, synthetic_pairs_dir, updates=2, max_new_tokens=4)
    whole = ppo_stage.run(cfg, tmp_path / "whole").parent

    real_update, calls = ppo_update.update, {"n": 0}

    def dies_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_update(*args, **kwargs)

    monkeypatch.setattr(ppo_stage, "update", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        ppo_stage.run(cfg, tmp_path / "split")
    monkeypatch.setattr(ppo_stage, "update", real_update)
    assert not (tmp_path / "split" / "manifest.json").exists()
    assert (tmp_path / "split" / "checkpoints" / "update-000001").is_dir()
    with pytest.raises(ConfigError, match="kl_coef"):
        ppo_stage.run(replace(cfg, kl_coef=0.5), tmp_path / "split", resume=True)

    split = ppo_stage.run(cfg, tmp_path / "split", resume=True).parent
    a, b = _weights(whole / "policy"), _weights(split / "policy")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(whole / "log.jsonl")]
    assert [r["update"] for r in _rows(split / "log.jsonl")] == [1, 2]
    assert [r["score"] for r in _rows(split / "log.jsonl")] == pytest.approx([r["score"] for r in strip])
    with pytest.raises(ArtifactError, match="finished run"):
        ppo_stage.run(cfg, tmp_path / "split", resume=True)


def test_cli_with_a_llama_rm_and_jsonl_prompts(tiny_llama_lm_dir, tiny_llama_rm_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about the number {i}."}) + "\n"
                               for i in range(6)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "ppo", "--policy", str(tiny_llama_lm_dir), "--reward-model", str(tiny_llama_rm_dir),
        "--prompts", str(prompts), "--out-dir", str(out), "--updates", "2", "--batch-size", "2",
        "--mini-batch-size", "1", "--max-new-tokens", "4", "--reward-norm", "whiten", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out / "manifest.json")
    rows = _rows(out / "log.jsonl")
    assert len(rows) == 2 and rows[0]["gold_accuracy"] is None and rows[0]["gold_checked"] == 0


def test_cli_errors(tiny_llama_lm_dir, tmp_path):
    result = CliRunner().invoke(app, ["ppo", "--out-dir", str(tmp_path / "o"), "--prompts", "x.jsonl"])
    assert result.exit_code == 2 and "--reward-model" in result.stderr
    result = CliRunner().invoke(app, ["ppo", "--out-dir", str(tmp_path / "o"), "--reward-model", "r",
                                      "--prompts", "x.jsonl", "--reward-norm", "whitten"])
    assert result.exit_code == 2 and "whiten" in result.stderr
