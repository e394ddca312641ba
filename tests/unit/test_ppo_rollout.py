"""PPO rollouts on tiny local models: masks exclude prompt and padding, log-probs do not depend on
left padding, KL is zero before any update, rewards sit on the last real response token."""

import json

import pytest
import torch

from aplot_cli.config import PPOConfig
from aplot_cli.errors import InputDataError
from aplot_cli.ppo import core
from aplot_cli.ppo import policy as ppo_policy
from aplot_cli.ppo import prompts as ppo_prompts
from aplot_cli.ppo import rollout as ppo_rollout
from aplot_cli.ppo import stage as ppo_stage


def test_response_mask_through_first_eos():
    response = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0], [5, 6, 7, 2]])
    mask, has_eos = ppo_rollout.response_mask(response, eos_ids=[2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert has_eos.tolist() == [True, False, True, True]


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert ppo_policy.position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_prompts_from_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b", "prompt_messages": [{"role": "user", "content": "b"}]}\n'
                    '{"prompt": "a"}\n')
    found = ppo_prompts.load_prompts(str(path), seed=0)
    assert sorted(p.text for p in found.prompts) == ["a", "b"] and not found.synthetic
    assert next(p for p in found.prompts if p.text == "b").messages == [{"role": "user", "content": "b"}]
    path.write_text('{"text": "a"}\n')
    with pytest.raises(InputDataError, match="p.jsonl:1"):
        ppo_prompts.load_prompts(str(path))


def test_prompts_from_synthetic_pairs(synthetic_pairs_dir):
    found = ppo_prompts.load_prompts(str(synthetic_pairs_dir), "train", max_prompts=10)
    assert len(found.prompts) == 10 and found.synthetic and found.artifact is not None


def test_batches_are_deterministic_and_cover_prompts():
    prompts = [ppo_prompts.Prompt(str(i)) for i in range(5)]
    first_pass = [p.text for k in range(5) for p in ppo_stage.batch_prompts(prompts, k, 1, seed=3)]
    assert sorted(first_pass) == [str(i) for i in range(5)]
    assert ppo_stage.batch_prompts(prompts, 2, 2, 3) == ppo_stage.batch_prompts(prompts, 2, 2, 3)


@pytest.fixture(scope="module")
def rollout(tiny_llama_lm_dir, tiny_bert_dir):
    torch.manual_seed(0)
    cfg = PPOConfig(policy=str(tiny_llama_lm_dir), reward_model=str(tiny_bert_dir), prompts="unused",
                    max_new_tokens=12, temperature=1.0)
    policy, tokenizer = ppo_policy.load_policy(cfg.policy, False)
    ref, _ = ppo_policy.load_policy(cfg.policy, False)
    scorer, _ = ppo_policy.load_reward_model(cfg.reward_model, cfg)
    actor = ppo_policy.PolicyWithValue(policy)
    # Prompts of very different lengths, so the short ones are left-padded.
    prompts = [ppo_prompts.Prompt("Hi"), ppo_prompts.Prompt("Sort these numbers in ascending order: 13, 61, 34, 94, 30, 96, 69."),
               ppo_prompts.Prompt("Reverse the string 'xetesa'.")]
    return cfg, actor, ref, tokenizer, ppo_rollout.collect(cfg, actor, ref, tokenizer, scorer, prompts, torch.device("cpu"))


def test_rollout_masks_exclude_prompt_and_padding(rollout):
    cfg, _, _, tokenizer, batch = rollout
    assert batch.query_mask[0, 0] == 0  # the short prompt is left-padded
    assert batch.response.shape[1] <= cfg.max_new_tokens
    pad = tokenizer.pad_token_id
    assert (batch.response[batch.mask == 0] == pad).all()
    for row in range(3):  # the mask is a prefix of ones: real tokens, then padding only
        ones = int(batch.mask[row].sum())
        assert batch.mask[row, :ones].all() and not batch.mask[row, ones:].any()
    assert (batch.values[batch.mask == 0] == 0).all()
    assert len(batch.texts) == 3 and batch.scores.shape == (3,)


def test_kl_is_zero_before_any_update(rollout):
    _, _, _, _, batch = rollout
    torch.testing.assert_close(batch.logp * batch.mask, batch.ref_logp * batch.mask)


def test_logprobs_do_not_depend_on_left_padding(rollout):
    """Each row's recorded log-probs equal those of the same prompt + response run alone, unpadded."""
    cfg, actor, _, _, batch = rollout
    for row in range(3):
        q = batch.query[row][batch.query_mask[row].bool()]
        r = batch.response[row][batch.mask[row].bool()]
        ids = torch.cat([q, r]).unsqueeze(0)
        with torch.no_grad():
            logits, _ = actor(ids, torch.ones_like(ids), len(r), cfg.temperature)
        alone = core.logprobs_from_logits(logits, r.unsqueeze(0))[0]
        torch.testing.assert_close(batch.logp[row, :len(r)], alone, atol=1e-4, rtol=1e-4)


def test_score_reward_lands_on_last_real_token(rollout):
    _, _, _, _, batch = rollout
    rewards = core.shape_rewards(torch.tensor([1.0, 2.0, 3.0]), batch.logp, batch.ref_logp, batch.mask, 0.1)
    last = batch.mask.sum(1) - 1
    assert rewards[torch.arange(3), last].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-4)
    assert (rewards[batch.mask == 0] == 0).all()


def test_reward_scorer_matches_formatting_encode(tiny_bert_dir):
    """Batched scores (right padding) equal one-at-a-time scores."""
    cfg = PPOConfig(reward_model=str(tiny_bert_dir))
    scorer, art = ppo_policy.load_reward_model(cfg.reward_model, cfg)
    assert art is None
    prompts = [ppo_prompts.Prompt("What is 2+2?"), ppo_prompts.Prompt("Name a fruit, please, any fruit at all.")]
    responses = ["4", "A banana is a long yellow fruit."]
    together = scorer.score(prompts, responses)
    alone = torch.cat([scorer.score([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    json.dumps(together.tolist())


@pytest.mark.parametrize("norm", ["none", "whiten", "running"])
def test_score_normalisation_and_missing_eos_penalty(norm):
    cfg = PPOConfig(reward_norm=norm, missing_eos_penalty=0.5)
    raw, has_eos = torch.tensor([1.0, 3.0, 5.0, 7.0]), torch.tensor([True, True, False, True])
    out = ppo_rollout.normalise_scores(cfg, raw, has_eos, core.RunningMoments())
    base = raw if norm == "none" else (raw - raw.mean()) / raw.std(unbiased=False)
    torch.testing.assert_close(out, base - 0.5 * torch.tensor([0.0, 0.0, 1.0, 0.0]), atol=1e-4, rtol=1e-4)


@pytest.fixture
def opinionated_policy_dir(tiny_vocab_lm_dir, tmp_path):
    """The tiny-vocabulary policy shipping a generation config that reshapes sampling, as many hub models do."""
    import shutil

    from transformers import GenerationConfig

    path = tmp_path / "opinionated"
    shutil.copytree(tiny_vocab_lm_dir, path)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True, repetition_penalty=2.0,
                     no_repeat_ngram_size=2, top_k=3, top_p=0.5, min_new_tokens=4, suppress_tokens=[11],
                     ).save_pretrained(path)
    return path


def test_rollouts_sample_from_logits_over_temperature_whatever_the_policy_ships(opinionated_policy_dir):
    """The distribution generate() samples each response token from equals softmax(logits / T) from the
    forward pass, on every position and over the whole vocabulary: none of the policy's repetition
    penalty, n-gram ban, top-k/top-p, suppressed tokens or minimum length reaches the rollouts."""
    cfg = PPOConfig(max_new_tokens=8, temperature=0.7, chat_template=False)
    policy, tokenizer = ppo_policy.load_policy(str(opinionated_policy_dir), False)
    assert policy.generation_config.repetition_penalty == 2.0  # the fixture does ship them
    seen = []
    real_generate = policy.generate

    def recording_generate(**kwargs):
        """generate() with its per-step processed scores (the logits it samples from) recorded."""
        generation = kwargs["generation_config"]
        generation.output_scores, generation.return_dict_in_generate = True, True
        out = real_generate(**kwargs)
        seen.append(torch.stack(out.scores, dim=1))  # (B, T, V)
        return out.sequences

    policy.generate = recording_generate
    prompts = [ppo_prompts.Prompt(t) for t in ("a b a", "good good", "c d e f g a b c", "b")]
    torch.manual_seed(0)
    out = ppo_rollout.sample(cfg, policy, tokenizer, prompts, torch.device("cpu"))
    assert policy.generation_config.repetition_penalty == 2.0  # the policy's own config is left as it was
    ids, mask = torch.cat([out.query, out.response], 1), torch.cat([out.query_mask, out.mask], 1)
    with torch.no_grad():
        logits, _ = ppo_policy.PolicyWithValue(policy)(ids, mask, out.response.shape[1], cfg.temperature)
    sampled_from = torch.log_softmax(seen[0].float(), -1)
    expected = torch.log_softmax(logits, -1)
    real = out.mask.bool()
    assert real.sum() >= 8
    torch.testing.assert_close(sampled_from[real], expected[real], atol=1e-4, rtol=1e-4)


def test_sampling_code_loads_without_the_ppo_stage():
    """`aplot sample` borrows PPO's rollout and policy loading; importing them loads no stage module."""
    import subprocess
    import sys

    code = ("import sys, aplot_cli.ppo.rollout, aplot_cli.ppo.policy, aplot_cli.sample; "
            "print(sorted(m for m in sys.modules if m.startswith('aplot_cli.ppo.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "aplot_cli.ppo.rollout" in loaded and "aplot_cli.ppo.stage" not in loaded
    assert "aplot_cli.ppo.update" not in loaded and "aplot_cli.ppo.checkpoints" not in loaded
