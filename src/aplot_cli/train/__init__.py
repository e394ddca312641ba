"""`aplot train-rm`: reward-model training on `transformers.Trainer` with the APLOT margin or a baseline.

This package owns the stage: pairs (+ embeddings) -> tokenised dataset (`formatting.encode`, explicit
truncation, counted) -> `RewardTrainer` (a Trainer whose `compute_loss` runs chosen and rejected through
one forward pass and applies `losses.reward_loss` with the margin from `margins.AplotMargin`) -> a
`save_pretrained` model folder (+ tokenizer) under `out_dir/model`, `train_log.jsonl`, `margins.parquet`,
`metrics.json` and the manifest, written last. Checkpoints live under `out_dir/checkpoints`, so
`--resume`, gradient accumulation, schedulers, mixed precision, `report_to` and distributed launch
(`accelerate launch -m aplot_cli train-rm ...`, torchrun) all come from the library.

One concern a module:
    validation.py  every config value and the inputs checked before anything is loaded
    data.py        encoding (`EncodedSplit`), the dataset and the (2B, L) collator
    prefix.py      prefix sharing for decoders: one row per pair (or packed pairs), block mask, exactness check
    model.py       the backbone: tokenizer + sequence-classification model, LoRA
    objective.py   the loss of one batch from its rewards (margins summed, then `losses.reward_loss`); torch only
    trainer.py     `RewardTrainer` (imports transformers: loaded only when a run builds its trainer)
    metrics.py     per-step means at log time, pair accuracy, final metrics, the OT summary
    callbacks.py   the JSONL log, the progress bar, the margin flush, no final checkpoint (transformers)
    records.py     the margin record (`MarginSink`) and the log file names
    resume.py      `run_config.json` and the checks and checkpoint choice of --resume
    report.py      the run's page: `training_curves.png` and `report.md` from the log, the stalled-loss check
    stage.py       `run`, the entry point, and the final save

Importing the package imports neither transformers nor the trainer; `RewardTrainer` and `PENDING_STEPS`
are loaded on first access."""

from __future__ import annotations

from typing import Any

from aplot_cli.train.data import EncodedSplit, PairCollator, PairDataset, SplitCollator, encode_split
from aplot_cli.train.metrics import mean_metrics, pair_accuracy
from aplot_cli.train.model import head_name, load_model
from aplot_cli.train.records import LOG_FILE, MarginSink
from aplot_cli.train.resume import (
    RESUMABLE,
    RUN_CONFIG,
    check_resume,
    has_usable_checkpoint,
    resume_step,
    run_record,
)
from aplot_cli.train.stage import STAGE, check_model_dir, run, runs_on_cpu, training_args
from aplot_cli.train.validation import DEVICES, check_dataset_margin, validate

_FROM_TRAINER = ("RewardTrainer", "PENDING_STEPS")  # names of the module that imports transformers


def __getattr__(name: str) -> Any:
    if name in _FROM_TRAINER:
        from aplot_cli.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEVICES", "LOG_FILE", "PENDING_STEPS", "RESUMABLE", "RUN_CONFIG", "STAGE", "EncodedSplit",
           "MarginSink", "PairCollator", "PairDataset", "RewardTrainer", "SplitCollator", "mean_metrics",
           "resume_step", "training_args", "runs_on_cpu", "check_dataset_margin",
           "check_model_dir", "check_resume", "encode_split", "has_usable_checkpoint", "head_name", "load_model", "pair_accuracy",
           "run", "run_record", "validate"]
