"""Held-out evaluation during PPO (`--eval-prompts`): which updates are evaluated, the seeded samples of
each evaluation (the training RNG untouched) and their summary row."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from aplot_cli.config import PPOConfig
from aplot_cli.ppo import core
from aplot_cli.ppo.policy import PolicyWithValue, Scorer, reference_logits
from aplot_cli.ppo.prompts import Prompt, PromptSet, load_prompts
from aplot_cli.ppo.rollout import sample


def eval_points(cfg: PPOConfig) -> list[int]:
    """The updates after which the held-out prompts are evaluated: 0 (the reference), every `eval_every`-th,
    and the last."""
    return sorted({0, cfg.updates, *range(cfg.eval_every, cfg.updates + 1, cfg.eval_every)})


def eval_seed(seed: int, update: int) -> int:
    """The sampling seed of the evaluation after `update` updates: a function of (seed, update) only, so a
    resumed run, and every reward at update 0, draw the same random numbers."""
    return (seed * 1_000_003 + update) % 2**63


@torch.no_grad()
def heldout_eval(cfg: PPOConfig, actor: PolicyWithValue, ref: nn.Module, tokenizer: Any, scorer: Scorer,
                 prompts: list[Prompt], update: int, device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`eval_n` responses per held-out prompt from the current policy (the training RNG untouched): the summary
    row of eval.jsonl and one row per response for eval_responses.jsonl."""
    from aplot_cli.data.verifiable import family_of, gold

    start = time.perf_counter()
    todo = [(p, k) for p in prompts for k in range(cfg.eval_n)]
    cuda = [device.index or 0] if device.type == "cuda" else []
    rows: list[dict[str, Any]] = []
    actor.eval()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(eval_seed(cfg.seed, update))
        for first in range(0, len(todo), cfg.batch_size):
            chunk = todo[first:first + cfg.batch_size]
            chunk_prompts = [p for p, _ in chunk]
            out = sample(cfg, actor.policy, tokenizer, chunk_prompts, device)
            ids, attn, n = torch.cat([out.query, out.response], 1), torch.cat([out.query_mask, out.mask], 1), out.response.shape[1]
            logp = core.logprobs_from_logits(actor(ids, attn, n, cfg.temperature)[0], out.response)
            ref_logp = core.logprobs_from_logits(reference_logits(ref, ids, attn, n, cfg.temperature), out.response)
            kl = core.kl_per_token(logp, ref_logp, out.mask).sum(1).tolist()
            scores = scorer.score(chunk_prompts, out.texts).tolist()
            for (p, k), text, s, k_l, tokens, eos in zip(chunk, out.texts, scores, kl, out.mask.sum(1).tolist(),
                                                         out.has_eos.tolist(), strict=True):
                rows.append({"update": update, "prompt": p.text, "family": family_of(p.text), "sample": k,
                             "response": text, "gold": gold(p.text, text), "score": s, "kl": k_l,
                             "tokens": int(tokens), "eos": bool(eos)})
    return eval_summary(rows, update, time.perf_counter() - start), rows


def eval_summary(rows: list[dict[str, Any]], update: int, seconds: float) -> dict[str, Any]:
    """Means over the held-out responses of one evaluation (gold over those with a checker; per family)."""
    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    checked = [r for r in rows if r["gold"] is not None]
    families = sorted({r["family"] for r in checked})
    scores = [r["score"] for r in rows]
    mu = mean(scores)
    return {"update": update, "gold_success": mean([float(r["gold"]) for r in checked]), "gold_checked": len(checked),
            "gold_by_family": {f: mean([float(r["gold"]) for r in checked if r["family"] == f]) for f in families},
            "score": mu, "score_std": math.sqrt(mean([(x - mu) ** 2 for x in scores])) if scores else None,
            "kl": mean([r["kl"] for r in rows]), "response_length": mean([float(r["tokens"]) for r in rows]),
            "eos_rate": mean([float(r["eos"]) for r in rows]), "prompts": len({r["prompt"] for r in rows}),
            "responses": len(rows), "seconds": round(seconds, 2)}


def load_eval_prompts(cfg: PPOConfig) -> PromptSet | None:
    """The held-out prompts: always shuffled with seed 0, so every --seed evaluates the same set."""
    if not cfg.eval_prompts:
        return None
    return load_prompts(cfg.eval_prompts, cfg.eval_prompts_split, cfg.eval_max_prompts, seed=0)
