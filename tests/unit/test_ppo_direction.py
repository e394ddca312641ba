"""PPO moves the policy toward the reward: on a toy reward (+1 when the response contains the word `good`)
a few updates of a tiny policy raise the mean reward, and with the reward negated they lower it. Every
other PPO test passes with the score's sign flipped; this one does not."""

from __future__ import annotations

import pytest
import torch

from aplot_cli.config import PPOConfig
from aplot_cli.ppo import core
from aplot_cli.ppo import policy as ppo_policy
from aplot_cli.ppo import prompts as ppo_prompts
from aplot_cli.ppo import rollout as ppo_rollout
from aplot_cli.ppo import stage as ppo_stage
from aplot_cli.ppo import update as ppo_update

PROMPTS = [ppo_prompts.Prompt(text) for text in ("a b", "c d e", "f g", "b a c", "e f", "d")]


class ContainsWord:
    """A toy `ppo_policy.Scorer`: `sign` when the response contains `word`, else 0."""

    def __init__(self, word: str, sign: float):
        self.word, self.sign = word, sign

    def score(self, prompts: list[ppo_prompts.Prompt], responses: list[str]) -> torch.Tensor:
        return torch.tensor([self.sign * float(self.word in r.split()) for r in responses])


def share_with_word(cfg: PPOConfig, actor: ppo_policy.PolicyWithValue, tokenizer, n: int = 256) -> float:
    """Fraction of n responses (fixed seed, the training RNG untouched) that contain `good`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        out = ppo_rollout.sample(cfg, actor.policy, tokenizer, [PROMPTS[i % len(PROMPTS)] for i in range(n)],
                         torch.device("cpu"))
    return sum("good" in text.split() for text in out.texts) / n


def train(policy_dir, scorer: ppo_policy.Scorer, reward_norm: str, updates: int = 5) -> tuple[float, float]:
    """(share before, share after) `updates` PPO updates through `ppo_update.update`, as `aplot ppo` runs them."""
    cfg = PPOConfig(batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=3, lr=1e-2,
                    reward_norm=reward_norm, missing_eos_penalty=0.0, chat_template=False, device="cpu", seed=0)
    torch.manual_seed(cfg.seed)
    policy, tokenizer = ppo_policy.load_policy(str(policy_dir), False)
    ref, _ = ppo_policy.load_policy(str(policy_dir), False)
    ref.requires_grad_(False).eval()
    actor = ppo_policy.PolicyWithValue(policy)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=cfg.lr, eps=1e-5)
    accelerator, moments = ppo_stage.accelerator_for("cpu"), core.RunningMoments()
    before = share_with_word(cfg, actor, tokenizer)
    for step in range(updates):
        ppo_update.update(cfg, actor, ref, tokenizer, scorer, optimizer, accelerator,
                   ppo_stage.batch_prompts(PROMPTS, step, cfg.batch_size, cfg.seed), moments)
    return before, share_with_word(cfg, actor, tokenizer)


@pytest.mark.parametrize("reward_norm", ["running", "whiten", "none"])
def test_ppo_raises_the_reward_and_lowers_its_negation(tiny_vocab_lm_dir, reward_norm):
    before, rewarded = train(tiny_vocab_lm_dir, ContainsWord("good", +1.0), reward_norm)
    assert 0.1 < before < 0.4  # the untrained policy says `good` sometimes: there is room both ways
    assert rewarded > before + 0.3, (before, rewarded)
    again, punished = train(tiny_vocab_lm_dir, ContainsWord("good", -1.0), reward_norm)
    assert again == before  # seeded: both runs start from the same policy and measurement
    assert punished < before / 2, (before, punished)
