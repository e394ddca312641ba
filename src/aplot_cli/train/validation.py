"""Every train-rm value checked before anything is loaded (`validate`), and the checks of the inputs
against each other: a `margin` loss needs the pairs' margins, embeddings must be of these pairs."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from aplot_cli import losses
from aplot_cli.config import TRAIN_FLAGS, TrainConfig, closest, resolve_train
from aplot_cli.errors import ConfigError, InputDataError

DEVICES = ("auto", "cpu", "cuda")


def validate(cfg: TrainConfig, has_embeddings: bool) -> losses.LossSpec:
    """Check every value before anything is loaded; errors name the config key, its value and the rule."""
    cfg = resolve_train(cfg)
    spec = losses.parse_losses("+".join(cfg.loss))
    if spec.aplot and cfg.semantic_source == "embeddings" and cfg.w_sem != 0.0 and not has_embeddings:
        raise ConfigError("the APLOT semantic cost needs sentence embeddings and no --embeddings was given",
                          hint="pass --embeddings DIR from `aplot embed`, or --semantic-source backbone|none")
    # first, so that `inf` and `nan` are named as such rather than failing a range rule (or passing `> 0`)
    rules = [(f.name, math.isfinite(getattr(cfg, f.name)), "a finite number") for f in dataclasses.fields(cfg)
             if isinstance(getattr(cfg, f.name), float)]
    optional = [(name, getattr(cfg, name)) for name in ("max_train_pairs", "max_eval_pairs", "save_total_limit")]
    rules += [(name, value >= 1, ">= 1") for name, value in optional if value is not None]
    rules += [(name, getattr(cfg, name) >= 1, ">= 1") for name in (
        "batch_size", "eval_batch_size", "grad_accum", "ot_iters", "logging_steps", "save_steps", "train_eval_pairs",
        "lora_r")]
    rules += [(name, getattr(cfg, name) >= 0, ">= 0") for name in (
        "eval_steps", "margin_warmup_steps", "center_eta", "focal_gamma", "weight_decay", "max_grad_norm",
        "dataloader_workers", "lora_alpha")]
    rules += [(name, getattr(cfg, name) > 0, "> 0") for name in ("ot_reg", "ot_tol", "learning_rate", "epochs")]
    rules += [("max_length", cfg.max_length >= 16, ">= 16"),
              ("max_steps", cfg.max_steps > 0 or cfg.max_steps == -1, "> 0, or -1 to train for `epochs`"),
              ("warmup_ratio", 0 <= cfg.warmup_ratio < 1, "a fraction in [0, 1)"),
              ("label_smooth_eps", 0 <= cfg.label_smooth_eps < 1, "in [0, 1)"),
              ("lora_dropout", 0 <= cfg.lora_dropout < 1, "in [0, 1)"),
              ("device", cfg.device in DEVICES, f"one of {', '.join(DEVICES)}")]
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(f"train-rm: `{name}` is {getattr(cfg, name)!r}; it must be {rule}", hint=_where(name))
    world = int(os.environ.get("WORLD_SIZE", "1")) if cfg.ot_scope == "global" else 1  # a global plan spans ranks
    if spec.aplot and cfg.margin_norm != "none" and cfg.batch_size * world < 3:
        placed = f"`batch_size` {cfg.batch_size}" + (f" x {world} processes (ot_scope global)" if world > 1 else "")
        raise ConfigError(f"train-rm: `margin_norm: {cfg.margin_norm}` normalises the margins within one plan, and "
                          f"{placed} puts fewer than 3 pairs in a plan (1 pair: always zero)",
                          hint="raise --batch-size to 3 or more, or use --margin-norm none")
    if spec.aplot and spec.constant_margin:
        raise ConfigError("train-rm: `aplot` and `constant_margin` both supply the margin",
                          hint="constant_margin is the baseline for aplot: train them as two runs")
    if cfg.frozen_backbone:
        from aplot_cli import frozen

        frozen.check_config(cfg)
    if cfg.bf16 and cfg.fp16:
        raise ConfigError("train-rm: `bf16` and `fp16` are both on (one may come from the --config YAML)",
                          hint="keep one: add --no-bf16 or --no-fp16, or set it false in the YAML")
    from aplot_cli import tokencache

    tokencache.check_dir(cfg.token_cache_dir)
    if cfg.attn_implementation is not None and "/" not in cfg.attn_implementation:  # owner/repo: a hub kernel
        _check_choice("attn_implementation", cfg.attn_implementation, _attention_kernels())
    _check_choice("scheduler", cfg.scheduler, _schedulers())
    for target in cfg.report_to:
        _check_choice("report_to", target, _report_targets())
    check_trackers(cfg.report_to)
    return spec


def _where(name: str) -> str:
    """Where a train-rm value is set: the YAML key, and the flag where the CLI has one."""
    flag = f" or pass --{name.replace('_', '-')}" if name in TRAIN_FLAGS else ""
    return f"set `{name}:` in the --config YAML{flag}"


def _schedulers() -> list[str]:
    from transformers import SchedulerType

    return [s.value for s in SchedulerType]


def _attention_kernels() -> list[str]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return list(dict.fromkeys(["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]))


def _report_targets() -> list[str]:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return ["all", "none", *INTEGRATION_TO_CALLBACK]


# How to install a --report-to target's package where it is not named as the target is (tensorboard and wandb
# have aplot extras); transformers' own checks say whether it is installed.
TRACKER_INSTALL = {"tensorboard": "pip install 'aplot[tensorboard]'", "wandb": "pip install 'aplot[wandb]'",
                   "azure_ml": "pip install azureml-core", "comet_ml": "pip install comet-ml",
                   "flyte": "pip install flytekit"}


def check_trackers(targets: tuple[str, ...]) -> None:
    """Refuse a --report-to target whose package is not installed, before anything is loaded or written
    (transformers would raise only once the trainer is built, after the out-dir was claimed)."""
    from transformers.integrations import integration_utils as tracking

    installed = set(tracking.get_available_reporting_integrations())
    installed |= {"azure_ml"} if tracking.is_azureml_available() else set()  # listed there only without mlflow
    installed |= {"flyte"} if tracking.is_flytekit_available() else set()    # not listed there at all
    for target in targets:
        if target not in ("all", "none") and target not in installed:
            install = TRACKER_INSTALL.get(target, f"pip install {target}")
            raise ConfigError(f"train-rm: --report-to {target} needs its package, which is not installed",
                              hint=f"install it ({install}), or leave out --report-to {target} "
                                   f"(`report_to` in the --config file)")


def _check_choice(name: str, value: str, known: list[str]) -> None:
    if value not in known:
        close = closest(value, known)
        raise ConfigError(f"train-rm: `{name}` is {value!r}, which transformers does not know",
                          hint=(f"did you mean {close!r}? " if close else "") + f"known: {', '.join(known)}; "
                               + _where(name))


def check_dataset_margin(frame, pairs_dir: Path) -> dict[str, int]:
    """The `margin` loss reads the pairs' `margin` column: refuse a train split that has none (the loss
    would quietly be BT). Returns how many pairs have one, for the manifest (missing ones count as 0)."""
    values = frame["margin"].to_numpy(dtype=np.float64, na_value=np.nan) if "margin" in frame else np.array([])
    present = int(np.isfinite(values).sum())
    if present == 0:
        raise InputDataError(f"loss `margin` needs a per-pair `margin` column and the train split of {pairs_dir} "
                             "has no finite margin",
                             hint="prepare data with a margin field (a rating gap, see `aplot prepare --help`), "
                                  "or use another loss")
    return {"pairs": len(frame), "with_margin": present, "without_margin_as_zero": len(frame) - present}
