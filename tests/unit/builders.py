"""Inputs several unit tests build alike: a tiny compare grid and a batch of hard and easy pairs."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_grid(folder: Path, backbone: Path, extra: str = "") -> Path:
    """Two methods (bt, aplot) x one seed of `backbone` on 64 synthetic pairs: 6 steps a cell; `extra` YAML
    lines are appended. Written to folder/grid.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.yaml"
    path.write_text(f"""
data: {{recipe: synthetic, synthetic_pairs: 64, synthetic_ood_pairs: 16, test_size: 0.25}}
noise: [0.0]
embed: {{max_length: 32}}
base: {{backbone: {backbone}, max_length: 48, batch_size: 8, epochs: 1, eval_steps: 3, logging_steps: 2,
        save_steps: 1000, learning_rate: 1.0e-3}}
methods:
  bt: {{loss: [bt]}}
  aplot: {{loss: [aplot]}}
seeds: [0]
evals: {{id: {{split: test}}, ood: {{split: ood}}}}
{extra}
""")
    return path


def hard_easy_batch(n=16, dim=64, seed=0, spread=1.0, easy_gap=0.5):
    """Pairs alternate hard / easy, rewards spread over the batch as in training. A hard pair's chosen and
    rejected score 0.1 apart and are near-paraphrases (one topic); an easy pair's score 2 * easy_gap apart and
    its rejected response is about another topic. Returns (r_chosen, r_rejected, e_chosen, e_rejected, hard)."""
    gen = torch.Generator().manual_seed(seed)
    hard = torch.arange(n) % 2 == 0
    x = spread * torch.randn(n, generator=gen)
    r_c = torch.where(hard, x + 0.05, x + easy_gap)
    r_r = torch.where(hard, x - 0.05, x - easy_gap)
    unit = torch.nn.functional.normalize
    topics = unit(torch.randn(n, dim, generator=gen), dim=1)
    e_c = unit(topics + 0.1 * torch.randn(n, dim, generator=gen), dim=1)
    paraphrase = unit(topics + 0.1 * torch.randn(n, dim, generator=gen), dim=1)
    e_r = torch.where(hard[:, None], paraphrase, unit(torch.randn(n, dim, generator=gen), dim=1))
    return r_c, r_r, e_c, e_r, hard
