"""One PPO update: collect a batch of rollouts, shape the rewards, GAE, and `ppo_epochs` passes of clipped
policy and value steps (the math is `core`'s); returns the update's log row."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from aplot_cli.config import PPOConfig
from aplot_cli.errors import TrainingError
from aplot_cli.ppo import core
from aplot_cli.ppo.policy import PolicyWithValue, Scorer
from aplot_cli.ppo.prompts import Prompt
from aplot_cli.ppo.rollout import Rollout, collect, normalise_scores


def ppo_step(cfg: PPOConfig, actor: PolicyWithValue, optimizer: torch.optim.Optimizer, accelerator: Any,
             batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
    """`ppo_epochs` passes of mini-batch gradient steps on one batch; mean diagnostics. Dropout stays off
    (eval mode): with it on, the ratio to the rollout policy would differ from 1 before any step."""
    actor.eval()
    sums: dict[str, float] = {}
    steps = 0
    ids, attn = batch.input_ids(), batch.attention_mask()
    n = batch.response.shape[1]
    for _ in range(cfg.ppo_epochs):
        for idx in torch.randperm(ids.shape[0]).split(cfg.mini_batch_size):
            logits, values = actor(ids[idx], attn[idx], n, cfg.temperature)
            mask = batch.mask[idx]
            logp = core.logprobs_from_logits(logits, batch.response[idx])
            pg = core.policy_loss(logp, batch.logp[idx], advantages[idx], mask, cfg.cliprange)
            vf = core.value_loss(values, batch.values[idx], returns[idx], mask, cfg.cliprange_value)
            loss = pg.loss + cfg.vf_coef * vf.loss
            if not torch.isfinite(loss):
                raise TrainingError(f"the PPO loss became {loss.item()}",
                                    hint="lower --lr, raise --kl-coef, or use --reward-norm running")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                entropy = core.masked_mean(core.entropy_from_logits(logits), mask).item()
            for key, value in (("pg_loss", pg.loss.item()), ("vf_loss", vf.loss.item()),
                               ("pg_clipfrac", pg.clipfrac), ("vf_clipfrac", vf.clipfrac),
                               ("approx_kl", pg.extra["approx_kl"]), ("ratio", pg.extra["ratio"]),
                               ("entropy_train", entropy), ("grad_norm", float(grad_norm))):
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
    return {k: v / steps for k, v in sums.items()}


def update(cfg: PPOConfig, actor: PolicyWithValue, ref: nn.Module, tokenizer: Any, scorer: Scorer,
           optimizer: torch.optim.Optimizer, accelerator: Any, prompts: list[Prompt],
           moments: core.RunningMoments) -> tuple[dict[str, Any], Rollout]:
    """One PPO update: collect, shape rewards, GAE, optimise. Returns the log row and the rollouts."""
    start = time.perf_counter()
    batch = collect(cfg, actor, ref, tokenizer, scorer, prompts, accelerator.device)
    mask = batch.mask
    scores = normalise_scores(cfg, batch.scores, batch.has_eos.cpu(), moments).to(mask.device)
    rewards = core.shape_rewards(scores, batch.logp, batch.ref_logp, mask, cfg.kl_coef)
    advantages, returns = core.gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
    advantages = core.masked_whiten(advantages, mask)
    stats = ppo_step(cfg, actor, optimizer, accelerator, batch, advantages, returns)
    kl = core.kl_per_token(batch.logp, batch.ref_logp, mask).sum(1)
    gold = [g for g in batch.gold if g is not None]
    row = {
        "score": batch.scores.mean().item(), "score_std": batch.scores.std(unbiased=False).item(),
        "reward": scores.mean().item(), "kl": kl.mean().item(), "kl_coef": cfg.kl_coef,
        "entropy": core.masked_mean(batch.entropy, mask).item(),
        **stats,
        "value_mean": core.masked_mean(batch.values, mask).item(),
        "return_mean": core.masked_mean(returns, mask).item(),
        "response_length": mask.sum(1).float().mean().item(), "eos_rate": batch.has_eos.float().mean().item(),
        "gold_accuracy": sum(gold) / len(gold) if gold else None, "gold_checked": len(gold),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return row, batch
