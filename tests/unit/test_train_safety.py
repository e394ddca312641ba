"""train-rm safety on tiny local models: --resume refuses changed settings and skips an incomplete
checkpoint, non-finite values and losses stop with a clear error, and periodic evaluation leaves the
training trajectory untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aplot_cli import train
from aplot_cli.config import TrainConfig


def tiny_cfg(backbone, **changes) -> TrainConfig:
    base = dict(backbone=str(backbone), loss=("bt",), max_steps=4, batch_size=4, eval_batch_size=16, max_length=48,
                learning_rate=1e-3, logging_steps=2, save_steps=2, max_eval_pairs=8, train_eval_pairs=8, seed=3)
    base.update(changes)
    return TrainConfig(**base)


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def test_periodic_evaluation_does_not_change_the_trained_weights(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    """The tiny BERT has dropout: anything that draws from the global RNG between steps changes the masks."""
    plain = tmp_path / "plain"
    train.run(tiny_cfg(tiny_bert_dir), synthetic_pairs_dir, plain)
    evaluated = tmp_path / "evaluated"
    train.run(tiny_cfg(tiny_bert_dir, eval_steps=1), synthetic_pairs_dir, evaluated)
    logs = [json.loads(line) for line in (evaluated / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "eval_accuracy" in r] == [1, 2, 3, 4]  # it did evaluate in between
    a, b = weights(plain), weights(evaluated)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
