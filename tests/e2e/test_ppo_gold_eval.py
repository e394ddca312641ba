"""`aplot ppo --reward gold` and the held-out evaluation (`--eval-prompts`), on a tiny-vocabulary policy.

The prompts are verifiable-family prompts about the word `good`, one of the tiny policy's twelve words, so
the real gold checker passes a response that says `good` (include_word, include_two_words) and PPO against
it can move the policy in a few updates."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from aplot_cli import generation, outdir
from aplot_cli.config import PPOConfig
from aplot_cli.data.verifiable import gold
from aplot_cli.errors import ConfigError, InputDataError
from aplot_cli.ppo import checkpoints as ppo_checkpoints
from aplot_cli.ppo import evaluation as ppo_evaluation
from aplot_cli.ppo import policy as ppo_policy
from aplot_cli.ppo import stage as ppo_stage

TRAIN = ("Write a short sentence that includes the word 'good'.",
         "Write one sentence that uses both the words 'good' and 'good'.")
HELD_OUT = ("Write a short sentence that includes the word 'good'.",
            "Write a sentence that ends with the word 'good'.")


def _jsonl(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def cfg(tiny_vocab_lm_dir, tmp_path) -> PPOConfig:
    return PPOConfig(policy=str(tiny_vocab_lm_dir), reward="gold", prompts=str(_jsonl(tmp_path / "train.jsonl", TRAIN)),
                     eval_prompts=str(_jsonl(tmp_path / "held.jsonl", HELD_OUT)), eval_n=32, eval_every=2,
                     updates=5, batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=3, lr=1e-2,
                     missing_eos_penalty=0.0, chat_template=False, save_every=1, sample_size=16, device="cpu", seed=0)


def test_gold_scorer_is_the_checker_with_pass_above_fail():
    prompts = [generation.Prompt(TRAIN[0])] * 3 + [generation.Prompt("What is 2 + 3?")] * 2
    responses = ["a good b", "a b", "good", "5", "The answer is 6."]
    scores = ppo_policy.GoldScorer().score(prompts, responses)
    assert scores.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert scores.tolist() == [float(gold(p.text, r)) for p, r in zip(prompts, responses)]
    with pytest.raises(InputDataError, match="no gold checker"):
        ppo_policy.GoldScorer().score([generation.Prompt("a b")], ["good"])


def test_ppo_against_gold_raises_held_out_gold_and_rewards_the_verdicts(cfg, tmp_path):
    manifest = json.loads(ppo_stage.run(cfg, tmp_path / "gold").read_text())
    out = tmp_path / "gold"
    assert manifest["reward"]["kind"] == "gold" and manifest["reward"]["mapping"] == {"pass": 1.0, "fail": 0.0}
    assert manifest["config"]["reward"] == "gold" and "reward_model" not in manifest["inputs"]
    rollouts = _rows(out / "rollouts.jsonl")
    assert len(rollouts) == 5 * 16
    # the reward PPO received is the checker's verdict on each rollout, pass = 1 (not its negation)
    assert all(r["score"] == float(gold(r["prompt"], r["response"])) == float(r["gold"]) for r in rollouts)
    assert {r["score"] for r in rollouts} == {0.0, 1.0}
    held = _rows(out / "eval.jsonl")
    assert [r["update"] for r in held] == [0, 2, 4, 5]
    assert held[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # update 0 samples the reference itself
    assert held[0]["responses"] == 64 and held[0]["prompts"] == 2
    assert 0.05 < held[0]["gold_success"] < 0.5
    assert held[-1]["gold_success"] > held[0]["gold_success"] + 0.3, held
    assert held[-1]["kl"] > 0.05
    for row in held:  # gold reward: the score is the gold success
        assert row["score"] == pytest.approx(row["gold_success"])
    assert manifest["metrics"]["heldout"]["evaluations"] == 4
    assert outdir.foreign_entries(out, "ppo", finished=True) == []  # --overwrite may replace it


def test_gold_reward_needs_a_checker_for_every_prompt(cfg, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a model was loaded for a run that cannot happen")

    monkeypatch.setattr(ppo_stage, "load_policy", never)
    mixed = replace(cfg, prompts=str(_jsonl(tmp_path / "mixed.jsonl", (*TRAIN, "a b c"))))
    with pytest.raises(InputDataError, match="1 of the 3 prompts .* have none"):
        ppo_stage.run(mixed, tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
    with pytest.raises(ConfigError, match="--reward gold and --reward-model"):
        ppo_stage.validate(replace(cfg, reward_model="some/rm"))
    with pytest.raises(ConfigError, match="no reward model given"):
        ppo_stage.validate(replace(cfg, reward="model"))
    with pytest.raises(ConfigError, match="`eval_every` is 0"):
        ppo_stage.validate(replace(cfg, eval_every=0))


def test_update_zero_is_the_same_for_every_reward_and_eval_leaves_training_alone(cfg, tiny_bert_dir, tmp_path):
    cfg = replace(cfg, updates=2, eval_n=4, eval_every=1)
    ppo_stage.run(cfg, tmp_path / "gold")
    ppo_stage.run(replace(cfg, reward="model", reward_model=str(tiny_bert_dir)), tmp_path / "rm")
    ppo_stage.run(replace(cfg, eval_prompts=None), tmp_path / "no-eval")
    gold_rows, rm_rows = _rows(tmp_path / "gold" / "eval.jsonl"), _rows(tmp_path / "rm" / "eval.jsonl")
    assert [r["update"] for r in gold_rows] == [r["update"] for r in rm_rows] == [0, 1, 2]
    keys = ("gold_success", "kl", "response_length", "eos_rate", "gold_by_family")
    assert {k: gold_rows[0][k] for k in keys} == {k: rm_rows[0][k] for k in keys}
    first = [{k: r[k] for k in ("prompt", "sample", "response", "gold")}
             for r in _rows(tmp_path / "gold" / "eval_responses.jsonl") if r["update"] == 0]
    assert len(first) == 8
    assert first == [{k: r[k] for k in ("prompt", "sample", "response", "gold")}
                     for r in _rows(tmp_path / "rm" / "eval_responses.jsonl") if r["update"] == 0]
    # evaluating draws from its own RNG: the training rollouts are those of the run without --eval-prompts
    assert _rows(tmp_path / "gold" / "rollouts.jsonl") == _rows(tmp_path / "no-eval" / "rollouts.jsonl")
    assert not (tmp_path / "no-eval" / "eval.jsonl").exists()


def test_resume_continues_the_eval_log_without_duplicates(cfg, tmp_path, monkeypatch):
    cfg = replace(cfg, eval_n=4)
    ppo_stage.run(cfg, tmp_path / "whole")
    real_save = ppo_checkpoints.save_checkpoint

    def dies_saving_the_fourth(out_dir, done, *args, **kwargs):
        if done == 4:  # killed after the evaluation at update 4 was logged, before its checkpoint
            raise KeyboardInterrupt
        return real_save(out_dir, done, *args, **kwargs)

    monkeypatch.setattr(ppo_stage, "save_checkpoint", dies_saving_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        ppo_stage.run(cfg, tmp_path / "killed")
    assert [r["update"] for r in _rows(tmp_path / "killed" / "eval.jsonl")] == [0, 2, 4]
    monkeypatch.setattr(ppo_stage, "save_checkpoint", real_save)
    ppo_stage.run(cfg, tmp_path / "killed", resume=True)
    whole, resumed = (_rows(tmp_path / d / "eval.jsonl") for d in ("whole", "killed"))
    assert [r["update"] for r in resumed] == [0, 2, 4, 5]
    for a, b in zip(whole, resumed):
        assert a["gold_success"] == b["gold_success"] and a["kl"] == pytest.approx(b["kl"], abs=1e-4)
    lines = _rows(tmp_path / "killed" / "eval_responses.jsonl")
    assert len(lines) == 4 * 2 * 4
    assert [r["response"] for r in lines] == [r["response"] for r in _rows(tmp_path / "whole" / "eval_responses.jsonl")]


def test_eval_seed_depends_on_seed_and_update_only():
    assert ppo_evaluation.eval_seed(0, 0) == ppo_evaluation.eval_seed(0, 0) != ppo_evaluation.eval_seed(1, 0) != ppo_evaluation.eval_seed(0, 1)
    assert ppo_evaluation.eval_points(PPOConfig(updates=5, eval_every=2)) == [0, 2, 4, 5]
    assert ppo_evaluation.eval_points(PPOConfig(updates=4, eval_every=10)) == [0, 4]


def test_heldout_eval_is_seeded_by_seed_and_update(cfg, tmp_path):
    policy, tokenizer = generation.load_policy(cfg.policy, False)
    ref, _ = generation.load_policy(cfg.policy, False)
    actor = ppo_policy.PolicyWithValue(policy)
    prompts = [generation.Prompt(p) for p in HELD_OUT]
    cfg = replace(cfg, eval_n=8)

    def texts(update, seed=0):
        _, rows = ppo_evaluation.heldout_eval(replace(cfg, seed=seed), actor, ref, tokenizer, ppo_policy.GoldScorer(), prompts, update,
                                   torch.device("cpu"))
        return [r["response"] for r in rows]

    first = texts(3)
    torch.rand(100)  # the global stream moves on; the evaluation does not follow it
    assert texts(3) == first
    assert texts(4) != first and texts(3, seed=1) != first
