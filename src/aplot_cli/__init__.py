"""aplot: robust reward modeling with APLOT (adaptive preference learning with optimal transport).

The Python API (docs/api.md has a runnable example of each use). Every name below loads its module on
first use, so `import aplot_cli` imports no torch, transformers or TRL.

The margin, on tensors:
    AplotSettings    every APLOT switch, method.md section 2's defaults; `AplotSettings.from_config(cfg)`
    AplotMargin      callable: (r_c, r_r, e_c, e_r) -> MarginResult, one batch's constant margin (B,)
    MarginResult     the margin, the OT plan and its diagnostics

The losses (`aplot_cli.losses` has each form):
    parse_losses     "aplot+center" -> LossSpec
    reward_loss      (LossSpec, r_c, r_r, margin) -> LossResult (`.loss` backpropagates)
    LossSpec, LossResult

The trainer's pieces:
    batch_loss       train-rm's loss of one batch from its rewards: margins summed, then `reward_loss`
    BatchLoss        its result: the LossResult and APLOT's MarginResult
    score_token_states  the hidden state at the token a reward head reads (`semantic_source: backbone`)
    RewardTrainer    aplot's `transformers.Trainer` subclass (what `aplot train-rm` trains with)
    load_model, encode_split, PairDataset, PairCollator   backbone, tokenisation, the (2B, L) batches
    Encoder          `aplot embed`'s sentence encoder (mean pooled, unit length)

The pipeline from Python: each stage's config dataclass and its module's `run(cfg, ...)` entry point,
the same one the CLI calls (`from aplot_cli import prepare, embed, train, evaluate`):
    PrepareConfig, EmbedConfig, TrainConfig, EvalConfig
    load_pairs, load_embeddings   read a pairs or embeddings artifact's split

TRL: `aplot_cli.integrations.trl` (`pip install "aplot[trl]"`) has `AplotRewardTrainer` and
`AplotRewardConfig`, TRL's RewardTrainer and RewardConfig with train-rm's loss."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_HOME = {
    "AplotMargin": "aplot_cli.margins",
    "AplotSettings": "aplot_cli.margins",
    "MarginResult": "aplot_cli.margins",
    "LossResult": "aplot_cli.losses",
    "LossSpec": "aplot_cli.losses",
    "parse_losses": "aplot_cli.losses",
    "reward_loss": "aplot_cli.losses",
    "BatchLoss": "aplot_cli.train.objective",
    "batch_loss": "aplot_cli.train.objective",
    "score_token_states": "aplot_cli.train.objective",
    "RewardTrainer": "aplot_cli.train.trainer",
    "PairCollator": "aplot_cli.train.data",
    "PairDataset": "aplot_cli.train.data",
    "encode_split": "aplot_cli.train.data",
    "load_model": "aplot_cli.train.model",
    "EmbedConfig": "aplot_cli.config",
    "EvalConfig": "aplot_cli.config",
    "PrepareConfig": "aplot_cli.config",
    "TrainConfig": "aplot_cli.config",
    "Encoder": "aplot_cli.embed",
    "load_embeddings": "aplot_cli.readers.embeddings",
    "load_pairs": "aplot_cli.readers.pairs",
}

__all__ = ["__version__", *sorted(_HOME)]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    # AttributeError also lets `from aplot_cli import prepare` fall back to importing the submodule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
