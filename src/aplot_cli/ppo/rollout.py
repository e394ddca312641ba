"""Rollouts: one batch of responses sampled from the policy (`generation.sample`, also what `aplot sample`
uses) and scored, with the log-probabilities, values and entropy the update needs (`collect`); the
sequence reward (`normalise_scores`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aplot_cli.config import PPOConfig
from aplot_cli.generation import Prompt, sample
from aplot_cli.ppo import core
from aplot_cli.ppo.policy import PolicyWithValue, Scorer, reference_logits


@dataclass
class Rollout:
    """One batch of B rollouts; response tensors are (B, T), right-padded after the first EOS."""

    prompts: list[Prompt]
    query: torch.Tensor          # (B, P) left-padded prompt ids
    query_mask: torch.Tensor     # (B, P)
    response: torch.Tensor       # (B, T)
    mask: torch.Tensor           # (B, T) 1 on real response tokens (through the first EOS)
    texts: list[str]             # decoded responses (no special tokens)
    has_eos: torch.Tensor        # (B,) bool
    logp: torch.Tensor           # (B, T) under the sampling policy
    ref_logp: torch.Tensor       # (B, T) under the reference
    values: torch.Tensor         # (B, T)
    entropy: torch.Tensor        # (B, T)
    scores: torch.Tensor         # (B,) raw RM scores
    gold: list[bool | None]      # synthetic verify() per rollout

    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query, self.response], dim=1)

    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.mask], dim=1)


@torch.no_grad()
def collect(cfg: PPOConfig, actor: PolicyWithValue, ref: nn.Module, tokenizer: Any, scorer: Scorer,
            prompts: list[Prompt], device: torch.device) -> Rollout:
    """Sample a response per prompt, score it, and record log-probs, values and entropy."""
    from aplot_cli.data.verifiable import gold

    actor.eval()
    out = sample(cfg, actor.policy, tokenizer, prompts, device)
    full_ids = torch.cat([out.query, out.response], 1)
    full_mask = torch.cat([out.query_mask, out.mask], 1)
    n = out.response.shape[1]
    logits, values = actor(full_ids, full_mask, n, cfg.temperature)
    logp, entropy = core.logprobs_from_logits(logits, out.response), core.entropy_from_logits(logits)
    del logits
    ref_logp = core.logprobs_from_logits(reference_logits(ref, full_ids, full_mask, n, cfg.temperature), out.response)
    return Rollout(prompts, out.query, out.query_mask, out.response, out.mask, out.texts, out.has_eos,
                   logp, ref_logp, values * out.mask, entropy, scorer.score(prompts, out.texts),
                   [gold(p.text, t) for p, t in zip(prompts, out.texts, strict=True)])


def normalise_scores(cfg: PPOConfig, raw: torch.Tensor, has_eos: torch.Tensor,
                     moments: core.RunningMoments) -> torch.Tensor:
    """The sequence reward: the RM score normalised per `reward_norm`, minus the missing-EOS penalty."""
    if cfg.reward_norm == "whiten":
        scores = (raw - raw.mean()) / (raw.std(unbiased=False) + 1e-8) if raw.numel() > 1 else raw - raw.mean()
    elif cfg.reward_norm == "running":
        moments.update(raw)
        scores = (raw - moments.mean) / moments.std
    else:
        scores = raw.clone()
    return scores - cfg.missing_eos_penalty * (~has_eos).float()
