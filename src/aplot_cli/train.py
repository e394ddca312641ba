"""`aplot train-rm`: reward-model training on `transformers.Trainer` with the APLOT margin or a baseline.

This module owns the stage: pairs (+ embeddings) -> tokenised dataset (`formatting.encode`, explicit
truncation, counted) -> `RewardTrainer` (a Trainer whose `compute_loss` runs chosen and rejected through
one forward pass and applies `losses.reward_loss` with the margin from `margins.AplotMargin`) -> a
`save_pretrained` model folder (+ tokenizer) under `out_dir/model`, `train_log.jsonl`, `margins.parquet`,
`metrics.json` and the manifest, written last. Checkpoints live under `out_dir/checkpoints`, so
`--resume`, gradient accumulation, schedulers, mixed precision, `report_to` and distributed launch
(`accelerate launch -m aplot_cli train-rm ...`, torchrun) all come from the library."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import artifacts, formatting, losses, models, run_report
from aplot_cli.config import TRAIN_FLAGS, TrainConfig, closest, config_to_dict
from aplot_cli.console import info, is_quiet
from aplot_cli.console import progress as progress_display
from aplot_cli.errors import ArtifactError, ConfigError, InputDataError, ModelError, TrainingError

STAGE = "train-rm"
PENDING_STEPS = 256  # step tensors kept for the next log before they are reduced early
LOG_FILE = "train_log.jsonl"
MARGINS_FILE = "margins.parquet"


# ----------------------------------------------------------------------------------------- validation


DEVICES = ("auto", "cpu", "cuda")


def validate(cfg: TrainConfig, has_embeddings: bool) -> losses.LossSpec:
    """Check every value before anything is loaded; errors name the config key, its value and the rule."""
    spec = losses.parse_losses("+".join(cfg.loss))
    if spec.aplot and cfg.semantic_source == "embeddings" and cfg.w_sem != 0.0 and not has_embeddings:
        raise ConfigError("the APLOT semantic cost needs sentence embeddings and no --embeddings was given",
                          hint="pass --embeddings DIR from `aplot embed`, or --semantic-source backbone|none")
    optional = [(name, getattr(cfg, name)) for name in ("max_train_pairs", "max_eval_pairs", "save_total_limit")]
    rules = [(name, value >= 1, ">= 1") for name, value in optional if value is not None]
    rules += [(name, getattr(cfg, name) >= 1, ">= 1") for name in (
        "batch_size", "eval_batch_size", "grad_accum", "ot_iters", "logging_steps", "save_steps", "train_eval_pairs",
        "lora_r")]
    rules += [(name, getattr(cfg, name) >= 0, ">= 0") for name in (
        "eval_steps", "margin_warmup_steps", "center_eta", "focal_gamma", "weight_decay", "max_grad_norm",
        "dataloader_workers", "lora_alpha")]
    rules += [(name, getattr(cfg, name) > 0, "> 0") for name in ("ot_reg", "ot_tol", "learning_rate", "epochs")]
    rules += [(name, math.isfinite(getattr(cfg, name)), "a finite number") for name in (
        "margin_scale", "constant_margin", "w_rew", "w_sem")]
    rules += [("max_length", cfg.max_length >= 16, ">= 16"),
              ("max_steps", cfg.max_steps > 0 or cfg.max_steps == -1, "> 0, or -1 to train for `epochs`"),
              ("warmup_ratio", 0 <= cfg.warmup_ratio < 1, "a fraction in [0, 1)"),
              ("label_smooth_eps", 0 <= cfg.label_smooth_eps < 1, "in [0, 1)"),
              ("lora_dropout", 0 <= cfg.lora_dropout < 1, "in [0, 1)"),
              ("device", cfg.device in DEVICES, f"one of {', '.join(DEVICES)}")]
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(f"train-rm: `{name}` is {getattr(cfg, name)!r}; it must be {rule}", hint=_where(name))
    if spec.aplot and cfg.margin_norm != "none" and cfg.batch_size < 3 and cfg.ot_scope == "local":
        raise ConfigError(f"train-rm: `margin_norm: {cfg.margin_norm}` normalises the margins within one plan, and "
                          f"`batch_size` {cfg.batch_size} puts fewer than 3 pairs in a plan (1 pair: always zero)",
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
    _check_choice("scheduler", cfg.scheduler, _schedulers())
    for target in cfg.report_to:
        _check_choice("report_to", target, _report_targets())
    return spec


def _where(name: str) -> str:
    """Where a train-rm value is set: the YAML key, and the flag where the CLI has one."""
    flag = f" or pass --{name.replace('_', '-')}" if name in TRAIN_FLAGS else ""
    return f"set `{name}:` in the --config YAML{flag}"


def _schedulers() -> list[str]:
    from transformers import SchedulerType

    return [s.value for s in SchedulerType]


def _report_targets() -> list[str]:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return ["all", "none", *INTEGRATION_TO_CALLBACK]


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


def check_embeddings_match(emb_art, pairs_art) -> None:
    """Embeddings are looked up by pair id, and a pair id does not change when chosen and rejected are
    swapped (e.g. another `--flip-ratio`): only embeddings of this train split's content are safe. Older
    embeddings artifacts record only the pairs manifest's hash, so for those that must match."""
    recorded = emb_art.manifest.get("inputs", {}).get("pairs") or {}
    split = "train.parquet"
    if split in recorded.get("outputs_sha256", {}):
        was, now, what = recorded["outputs_sha256"][split], pairs_art.output_hashes().get(split), f"{split} sha256"
    else:
        was, now, what = recorded.get("manifest_sha256"), pairs_art.manifest_sha256(), "manifest sha256"
    if was != now:
        raise ArtifactError(f"the embeddings in {emb_art.path} were made from other pairs than {pairs_art.path} "
                            f"(their {what} {str(was)[:12]}, this one's {str(now)[:12]})",
                            hint=f"re-run `aplot embed {pairs_art.path} --out-dir DIR` (cached texts are not "
                                 "encoded again)")


# ---------------------------------------------------------------------------------------- data


@dataclass
class EncodedSplit:
    """Token ids per pair, plus what a report needs: truncation counts and aligned side tables."""

    records: list[dict[str, Any]]
    pair_ids: list[str]
    dataset_margin: np.ndarray                 # (N,) float32, 0 where the dataset has none
    emb_chosen: np.ndarray | None = None       # (N, D) rows aligned with pair_ids
    emb_rejected: np.ndarray | None = None
    truncation: dict[str, int] = field(default_factory=dict)


def _take(frame, limit: int | None, seed: int):
    if limit is None or limit >= len(frame):
        return frame.reset_index(drop=True)
    return frame.sample(n=limit, random_state=seed).reset_index(drop=True)


def encode_split(frame, tokenizer, cfg: TrainConfig, embeddings=None, split_id: int = 0, encode=None) -> EncodedSplit:
    """Encode every (prompt, chosen) and (prompt, rejected) with `formatting.encode` (or `encode`, a
    drop-in such as `frozen.EncodingMemo`); nothing is dropped."""
    encode = encode or formatting.encode
    records, counts = [], {"pairs": len(frame), "prompt_truncated": 0, "response_truncated": 0,
                           "pairs_truncated": 0}
    for row, (prompt, chosen, rejected, messages) in enumerate(zip(
            frame["prompt"], frame["chosen"], frame["rejected"], frame["prompt_messages"], strict=True)):
        sides = [encode(tokenizer, prompt, text, cfg.max_length, messages, cfg.chat_template)
                 for text in (chosen, rejected)]
        counts["prompt_truncated"] += sum(s.prompt_truncated for s in sides)
        counts["response_truncated"] += sum(s.response_truncated for s in sides)
        counts["pairs_truncated"] += any(s.prompt_truncated or s.response_truncated for s in sides)
        record = {"split": split_id, "row": row, "input_ids_chosen": sides[0].input_ids, "input_ids_rejected": sides[1].input_ids,
                  "length": max(len(sides[0].input_ids), len(sides[1].input_ids))}
        if sides[0].token_type_ids is not None:
            record["token_type_ids_chosen"] = sides[0].token_type_ids
            record["token_type_ids_rejected"] = sides[1].token_type_ids
        records.append(record)
    margin = frame["margin"].to_numpy(dtype=np.float32, na_value=np.nan) if "margin" in frame else np.zeros(len(frame))
    split = EncodedSplit(records, list(frame["pair_id"]), np.nan_to_num(margin.astype(np.float32), nan=0.0),
                         truncation=counts)
    if embeddings is not None:
        index = {pid: i for i, pid in enumerate(embeddings.pair_ids)}
        missing = [pid for pid in split.pair_ids if pid not in index]
        if missing:
            raise InputDataError(f"{len(missing)} pairs (e.g. {missing[0]}) have no embedding",
                                 hint="re-run `aplot embed` on this pairs artifact")
        rows = np.array([index[pid] for pid in split.pair_ids], dtype=np.int64)
        split.emb_chosen, split.emb_rejected = embeddings.chosen[rows], embeddings.rejected[rows]
    return split


class PairDataset:
    """A map-style dataset of encoded pairs (`length` lets Trainer group by length)."""

    def __init__(self, split: EncodedSplit):
        self.split = split
        self.column_names = ["length"]

    def __len__(self) -> int:
        return len(self.split.records)

    def __getitem__(self, i):
        if isinstance(i, str):  # Trainer reads `dataset["length"]` for length-grouped sampling
            return [r[i] for r in self.split.records]
        return self.split.records[i]


def _unit_rows(table: np.ndarray):
    import torch

    return torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)), dim=1)


class PairCollator:
    """Pads chosen and rejected to one length (right padding) and stacks them as (2B, L): rows 0..B-1
    chosen, B..2B-1 rejected, so one forward pass scores both. Side tables ride along by row."""

    def __init__(self, split: EncodedSplit, pad_id: int):
        import torch

        self.pad_id = pad_id
        self.margin = torch.from_numpy(split.dataset_margin)
        # Unit length once here, so the semantic cost on the device is one matrix product per step.
        self.emb_c = None if split.emb_chosen is None else _unit_rows(split.emb_chosen)
        self.emb_r = None if split.emb_rejected is None else _unit_rows(split.emb_rejected)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        seqs = [f["input_ids_chosen"] for f in features] + [f["input_ids_rejected"] for f in features]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, :len(seq)] = 1
        rows = torch.tensor([f["row"] for f in features], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "rows": rows, "dataset_margin": self.margin[rows],
                 "num_tokens": sum(len(s) for s in seqs)}  # a host int: counting on the device would sync
        if "token_type_ids_chosen" in features[0]:
            types = [f["token_type_ids_chosen"] for f in features] + [f["token_type_ids_rejected"] for f in features]
            batch["token_type_ids"] = torch.zeros_like(ids)
            for i, seq in enumerate(types):
                batch["token_type_ids"][i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        if self.emb_c is not None:
            batch["emb_chosen"], batch["emb_rejected"] = self.emb_c[rows], self.emb_r[rows]
        return batch


# ---------------------------------------------------------------------------------------- model


def head_name(model) -> str:
    """`score` for decoder RMs (read at the last real token), `classifier` for encoders."""
    return "score" if hasattr(model, "score") else "classifier"


def load_model(cfg: TrainConfig):
    """Tokenizer + 1-label sequence-classification model in float32; the seed is set before the head
    is created so that runs are reproducible."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    resolved = models.resolve(cfg.backbone)
    set_seed(cfg.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved, num_labels=1, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load backbone {cfg.backbone!r} as a sequence-classification model: {exc}",
                         hint="pass minilm-l6, smollm2-135m, a local save_pretrained folder, or a hub id") from exc
    formatting.prepare_tokenizer(tokenizer, model.config)
    if model.config.pad_token_id is None or model.config.pad_token_id >= model.config.vocab_size:
        raise ModelError(f"backbone {cfg.backbone!r} has no usable pad token", hint="use a tokenizer with a pad token")
    limits = {"its config's max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
              "its tokenizer's model_max_length": tokenizer.model_max_length}
    limits = {name: value for name, value in limits.items() if isinstance(value, int) and 0 < value < 1_000_000}
    if limits and cfg.max_length > min(limits.values()):
        name, limit = min(limits.items(), key=lambda item: item[1])
        raise ConfigError(f"train-rm: `max_length` is {cfg.max_length} but backbone {cfg.backbone!r} reads at most "
                          f"{limit} tokens ({name})", hint=f"pass --max-length {limit} or less")
    head = head_name(model)
    if cfg.lora:
        model = _wrap_lora(model, cfg)
    return tokenizer, model, resolved, head


def _wrap_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules) or None,
                      modules_to_save=[head_name(model)])  # the fresh head trains fully and is saved
    return get_peft_model(model, lora)


# ---------------------------------------------------------------------------------------- trainer


def _make_trainer_class():
    """The Trainer subclass is built lazily so that importing this module does not import transformers."""
    import torch
    from transformers import Trainer

    class RewardTrainer(Trainer):
        """Trainer with a pairwise reward loss. `compute_loss` concatenates chosen and rejected into one
        (2B, L) forward pass, reads one scalar per sequence, and applies `losses.reward_loss` with the
        dataset and/or APLOT margin (a constant). Per-step metrics are averaged between log calls."""

        def __init__(self, *args, spec: losses.LossSpec, cfg: TrainConfig, head: str, margin_fn=None,
                     margin_sink=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.spec, self.cfg, self.margin_fn, self.margin_sink = spec, cfg, margin_fn, margin_sink
            self.head = head
            self.model_accepts_loss_kwargs = False  # our loss is a mean: Trainer scales it for accumulation
            self._metrics: dict[str, list[float]] = {}
            self._steps: list[tuple] = []        # per step: (diff, r_c, r_r, margin applied or None)
            self._device_ot: list = []            # per step: MarginResult from the device solver
            self._ot_flags: list[tuple] = []      # per step: (converged, fallback) 0-d device tensors
            self._pairs_since_log, self._last_log_time = 0, time.perf_counter()
            self.ot_totals = {"solves": 0, "converged": 0, "fallbacks": 0, "seconds": 0.0, "pairs": 0, "max_pairs": 0}
            self.ot_warnings: set[str] = set()

        def _backbone_embeddings(self, outputs, mask):
            """(2B, H) the last hidden state where the head reads: the last real token for decoders
            (right padding), the first token ([CLS]) for encoders."""
            hidden = outputs.hidden_states[-1].detach()
            if self.head == "score":
                index = mask.sum(1) - 1
            else:
                index = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            rows, dataset_margin = inputs["rows"], inputs["dataset_margin"]
            n = rows.shape[0]
            use_backbone = self.spec.aplot and self.cfg.semantic_source == "backbone"
            forward = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs}
            outputs = model(**forward, output_hidden_states=use_backbone)
            rewards = outputs.logits[:, 0].float()
            r_c, r_r = rewards[:n], rewards[n:]
            margin = dataset_margin.to(r_c.dtype) if self.spec.dataset_margin else None
            if self.spec.constant_margin:  # "shifted BT": the same c for every pair
                constant = torch.full_like(r_c, self.cfg.constant_margin)
                margin = constant if margin is None else margin + constant
            result_ot = None
            if self.spec.aplot and model.training:
                e_c = e_r = None
                if use_backbone:
                    emb = self._backbone_embeddings(outputs, inputs["attention_mask"])
                    e_c, e_r = emb[:n], emb[n:]
                elif self.cfg.semantic_source == "embeddings" and "emb_chosen" in inputs:
                    e_c, e_r = inputs["emb_chosen"], inputs["emb_rejected"]
                result_ot = self.margin_fn(r_c, r_r, e_c, e_r, step=self.state.global_step,
                                           normalized=not use_backbone)  # the collator's tables are unit length
                margin = result_ot.margin if margin is None else margin + result_ot.margin
            result = losses.reward_loss(self.spec, r_c, r_r, margin, eps=self.cfg.label_smooth_eps,
                                        eta=self.cfg.center_eta, gamma=self.cfg.focal_gamma)
            if model.training:
                self._record(result, result_ot, inputs["num_tokens"], rows, r_c.detach(), r_r.detach())
            if return_outputs:
                return result.loss, {"rewards_chosen": r_c.detach(), "rewards_rejected": r_r.detach()}
            return result.loss

        def _record(self, result, result_ot, num_tokens, rows, r_c, r_r) -> None:
            """Keeps references to this step's tensors and launches nothing on the accelerator: `log`
            reduces all steps since the last log at once (one stack per metric), and reads them then."""
            applied = (result.margin if result_ot is not None or self.spec.dataset_margin or self.spec.constant_margin
                       else None)
            self._steps.append((result.diff.detach(), r_c, r_r, applied))
            if result_ot is not None and result_ot.ot is not None:
                self.ot_totals["solves"] += 1
                self.ot_totals["pairs"] += result_ot.ot.plan.shape[0]  # a shape: no device read
                self.ot_totals["max_pairs"] = max(self.ot_totals["max_pairs"], result_ot.ot.plan.shape[0])
                self.ot_totals["seconds"] += result_ot.ot.seconds
                self._ot_flags.append((result_ot.ot.converged, result_ot.fallback))
                if result_ot.ot.warning and len(self.ot_warnings) < 5:  # POT's own words, for the manifest
                    self.ot_warnings.add(result_ot.ot.warning)
                if result_ot.full is not None:  # the device path: reduced at log time
                    self._device_ot.append(result_ot)
                else:
                    for key, value in result_ot.stats.items():
                        self._metrics.setdefault(f"ot/{key}", []).append(value)
            elif result_ot is not None:  # warm-up
                for key, value in result_ot.stats.items():
                    self._metrics.setdefault(f"ot/{key}", []).append(value)
            if len(self._steps) >= PENDING_STEPS:  # a long logging interval: reduce now, keep no step tensors
                self._fold_step_metrics()
            self.state.num_input_tokens_seen += num_tokens * self.accelerator.num_processes
            self._pairs_since_log += rows.shape[0] * self.accelerator.num_processes
            if self.margin_sink is not None:
                self.margin_sink.add(self.state.global_step + 1, rows, result.margin, r_c, r_r)

        def _fold_step_metrics(self) -> None:
            """Reduce the pending steps into `_metrics` (each step's share kept: the mean is per step)."""
            count = len(self._steps)
            for key, value in self._step_metrics().items():
                self._metrics.setdefault(key, []).extend([value] * count)

        def _step_metrics(self) -> dict[str, Any]:
            """The per-step metrics since the last log, averaged over steps, as 0-d tensors or floats."""
            from aplot_cli.margins import device_stats, step_mean

            steps, self._steps = self._steps, []
            device_ot, self._device_ot = self._device_ot, []
            metrics: dict[str, Any] = {}
            if steps:
                diff, r_c, r_r = ([s[i] for s in steps] for i in range(3))
                metrics["accuracy"] = step_mean(diff, lambda x: (x > 0).float().mean(1))
                metrics["margin"] = step_mean(diff, lambda x: x.mean(1))
                metrics["rewards/chosen"] = step_mean(r_c, lambda x: x.mean(1))
                metrics["rewards/rejected"] = step_mean(r_r, lambda x: x.mean(1))
                applied = [s[3] for s in steps if s[3] is not None]
                if applied:
                    metrics["margin_applied"] = step_mean(applied, lambda x: x.mean(1))
            if device_ot:
                metrics.update({f"ot/{k}": v for k, v in device_stats(device_ot).items()})
            return metrics

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs and (self._steps or self._metrics):  # a training log: attach the step metrics
                if not math.isfinite(logs["loss"]):
                    raise TrainingError(f"the training loss is {logs['loss']} at step {self.state.global_step}",
                                        hint="lower --learning-rate, or check the data for empty texts")
                self._fold_step_metrics()
                logs.update(_mean_metrics(self._metrics))
                now = time.perf_counter()
                logs["pairs_per_second"] = self._pairs_since_log / max(now - self._last_log_time, 1e-9)
                logs["num_tokens"] = float(self.state.num_input_tokens_seen)
                self._metrics, self._pairs_since_log, self._last_log_time = {}, 0, now
            super().log(logs, start_time)

        def _get_train_sampler(self, train_dataset=None):
            if self.cfg.group_by_length:  # Trainer infers lengths only from `input_ids`; ours are per pair
                from transformers.trainer_pt_utils import LengthGroupedSampler

                dataset = train_dataset if train_dataset is not None else self.train_dataset
                return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                            lengths=dataset["length"])
            return super()._get_train_sampler(train_dataset)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            with torch.no_grad():
                loss, out = self.compute_loss(model, inputs, return_outputs=True)
            logits = torch.stack([out["rewards_chosen"], out["rewards_rejected"]], dim=1)
            return loss.detach(), logits, torch.zeros(logits.shape[0], device=logits.device)

    return RewardTrainer


def _mean_metrics(metrics: dict[str, list]) -> dict[str, float]:
    """Mean of each metric's per-step values (floats or 0-d tensors, on any device): one stack and one
    host read per device, at log time only."""
    import torch

    means, by_device = {}, {}
    for key, values in metrics.items():
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if not tensors:
            means[key] = float(np.mean(values))
            continue
        device = tensors[0].device
        stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).reshape(()) for v in values])
        by_device.setdefault(device, []).append((key, stacked.float().mean()))
    for items in by_device.values():
        for (key, _), value in zip(items, torch.stack([v for _, v in items]).tolist(), strict=True):
            means[key] = float(value)
    return means


def pair_accuracy(eval_pred) -> dict[str, float]:
    """Strict pair accuracy: a tie counts as wrong (RewardBench v1)."""
    preds = np.asarray(eval_pred.predictions)
    return {"accuracy": float((preds[:, 0] > preds[:, 1]).mean()), "margin": float((preds[:, 0] - preds[:, 1]).mean())}


# ---------------------------------------------------------------------------------------- callbacks


def _callbacks(out_dir: Path, resumed_step: int, sink, is_main: bool):
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        """One JSON line per Trainer log call (train and eval), main process only."""

        def __init__(self):
            self.path = out_dir / LOG_FILE
            if is_main and self.path.exists():  # drop what a killed run logged after its last checkpoint
                kept = [line for line in self.path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= resumed_step]
                self.path.write_text("".join(line + "\n" for line in kept))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "epoch": state.epoch, **logs}
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")

    class RichProgress(TrainerCallback):
        """A rich progress bar on stderr with the latest loss and accuracy."""

        def __init__(self):
            self.progress = self.task = None
            self.last = ""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and not is_quiet():
                self.progress = progress_display("train-rm", unit="steps", transient=False)
                self.progress.start()
                self.task = self.progress.add_task("", total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step, description=self.last)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is not None and logs:
                if "loss" in logs:
                    self.last = (f"loss {logs['loss']:.4f} acc {logs.get('accuracy', float('nan')):.3f} "
                                 f"(logged at step {state.global_step})")
                if "eval_accuracy" in logs:
                    self.progress.console.print(f"step {state.global_step}: test accuracy {logs['eval_accuracy']:.4f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    class FlushMargins(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            sink.flush()

        def on_train_end(self, args, state, control, **kwargs):
            sink.flush()

    callbacks = [JsonlLog(), RichProgress()]
    if sink is not None:
        callbacks.append(FlushMargins())
    return callbacks


class MarginSink:
    """Per-pair margins per optimizer step, flushed to `margins/part-r{rank}-s{step}.parquet` at each
    checkpoint (so a resumed run keeps exactly the steps its checkpoint covers) and merged at the end."""

    def __init__(self, out_dir: Path, pair_ids: list[str], rank: int, resumed_step: int):
        self.dir, self.pair_ids, self.rank = out_dir / "margins", pair_ids, rank
        self.dir.mkdir(exist_ok=True)
        self.rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        for part in self.dir.glob(f"part-r{rank}-*.parquet"):  # each rank prunes only its own parts
            if int(part.stem.rsplit("-s", 1)[1]) > resumed_step:  # a fresh start (-1) keeps none
                part.unlink()

    def add(self, step: int, rows, margin, r_c, r_r) -> None:
        """Keeps the tensors where they are (a few floats per pair) until the next checkpoint."""
        self.rows.append((step, rows.detach(), margin.detach().float(), r_c.detach().float(), r_r.detach().float()))

    def flush(self) -> None:
        import pandas as pd

        if not self.rows:
            return
        self.rows = [(s, *(t.cpu().numpy() for t in tensors)) for s, *tensors in self.rows]
        steps, rows, margin, r_c, r_r = zip(*self.rows, strict=True)
        r_c, r_r = np.concatenate(r_c), np.concatenate(r_r)
        frame = pd.DataFrame({
            "pair_id": [self.pair_ids[r] for part in rows for r in part],
            "step": np.concatenate([np.full(len(part), s) for s, part in zip(steps, rows, strict=True)]).astype(np.int64),
            "margin": np.concatenate(margin),
            "reward_diff": r_c - r_r,
            "reward_chosen": r_c,
            "reward_rejected": r_r,
        })
        frame.to_parquet(self.dir / f"part-r{self.rank}-s{int(frame['step'].max()):08d}.parquet", index=False)
        self.rows = []

    def merge(self, out_file: Path) -> int:
        import pandas as pd

        parts = sorted(self.dir.glob("part-*.parquet"))
        frame = (pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts
                 else pd.DataFrame({"pair_id": [], "step": [], "margin": [], "reward_diff": [], "reward_chosen": [],
                                    "reward_rejected": []}))
        frame = frame.sort_values(["step", "pair_id"], kind="stable").reset_index(drop=True)
        frame.to_parquet(out_file, index=False)
        for part in parts:
            part.unlink()
        self.dir.rmdir()
        return len(frame)


# ---------------------------------------------------------------------------------------- stage


def _training_args(cfg: TrainConfig, out_dir: Path, use_cpu: bool, has_eval: bool):
    from transformers import TrainingArguments

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps,
        eval_strategy="steps" if cfg.eval_steps > 0 and has_eval else "no", eval_steps=cfg.eval_steps or None,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, seed=cfg.seed,
        report_to=list(cfg.report_to) or "none", use_cpu=use_cpu, bf16=cfg.bf16 and not use_cpu, fp16=cfg.fp16 and not use_cpu,
        remove_unused_columns=False, disable_tqdm=True, dataloader_num_workers=cfg.dataloader_workers,
        activation_checkpointing=cfg.gradient_checkpointing,
        ddp_backend="gloo" if use_cpu and distributed else None, label_names=[],
        # pinned batches copied without a host sync (GPU); on the CPU there is nothing to copy
        dataloader_pin_memory=not use_cpu, accelerator_config={"non_blocking": not use_cpu},
        ddp_find_unused_parameters=False if distributed else None)


def _use_cpu(device: str) -> bool:
    import torch

    if device == "auto":
        return not torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but no CUDA device is visible", hint="use --device cpu")
    return device == "cpu"


def _resume_step(out_dir: Path, resume: bool) -> tuple[str | None, int]:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = out_dir / "checkpoints"
    if not resume or not ckpt_dir.is_dir():
        return None, -1
    last = get_last_checkpoint(str(ckpt_dir))
    if last is None:
        return None, -1
    return last, int(Path(last).name.split("-")[-1])


def run(cfg: TrainConfig, pairs_dir: Path, out_dir: Path, embeddings_dir: Path | None = None,
        overwrite: bool = False, resume: bool = False, extra_callbacks: tuple = ()) -> Path:
    """Train a reward model; returns the manifest path (written last, by the main process)."""
    from aplot_cli.embed import load_embeddings
    from aplot_cli.prepare import load_pairs

    spec = validate(cfg, embeddings_dir is not None)
    pairs_art = artifacts.open_artifact(pairs_dir, "prepare")
    emb_art = artifacts.open_artifact(embeddings_dir, "embed") if embeddings_dir is not None else None
    if emb_art is not None:
        check_embeddings_match(emb_art, pairs_art)
    out_dir = Path(out_dir)
    artifacts.check_out_dir(out_dir, overwrite, resume=resume)  # refuse now; clear only once the inputs pass
    use_cpu = _use_cpu(cfg.device)
    test_frame = _test_frame(pairs_art, cfg)
    train_frame = _take(load_pairs(pairs_dir, "train"), cfg.max_train_pairs, cfg.seed)
    dataset_margin = check_dataset_margin(train_frame, pairs_art.path) if spec.dataset_margin else None
    tokenizer, model, resolved, head = load_model(cfg)
    args = _training_args(cfg, out_dir, use_cpu, test_frame is not None)  # also joins the process group
    rank = args.process_index
    with args.main_process_first(desc="prepare the output directory"):
        if args.process_index == 0:
            artifacts.prepare_out_dir(out_dir, overwrite, resume=resume)
    checkpoint, resumed_step = _resume_step(out_dir, resume)
    need_emb = spec.aplot and cfg.semantic_source == "embeddings" and emb_art is not None
    from aplot_cli import frozen  # --frozen-backbone: token ids and features remembered by content

    with frozen.remembered_encode(cfg.feature_cache_dir, tokenizer) if cfg.frozen_backbone else contextlib.nullcontext() as encode:
        train = encode_split(train_frame, tokenizer, cfg, load_embeddings(emb_art.path, "train") if need_emb else None,
                             encode=encode)
        test = encode_split(test_frame, tokenizer, cfg, split_id=1, encode=encode) if test_frame is not None else None
    attached = None
    if cfg.frozen_backbone:  # the head trains on cached backbone features
        attached = frozen.attach(cfg, model, head, tokenizer.pad_token_id, [train, test], use_cpu, memo=encode)
        model = attached.model
    info(f"[bold]train-rm[/] {cfg.backbone} loss={spec.name}: {len(train.records)} train pairs"
         f"{f', {len(test.records)} test pairs' if test else ''}; truncated pairs: "
         f"{train.truncation['pairs_truncated']} (max_length {cfg.max_length})")
    trainer = _build_trainer(cfg, spec, model, head, tokenizer, train, test, out_dir, args, rank, resumed_step,
                             extra_callbacks)
    if attached is not None:
        frozen.adapt_trainer(trainer, [train, test])
    t0 = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    metrics = _final_metrics(trainer, train, test, train_output, seconds, cfg, resumed_step)  # -1: a fresh start
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return out_dir / artifacts.MANIFEST
    outputs = _save(trainer, tokenizer, cfg, out_dir, train.pair_ids if trainer.margin_sink else None)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    outputs.append(artifacts.describe_output(out_dir, "metrics.json"))
    pictures = run_report.write(out_dir, config_to_dict(cfg), metrics, LOG_FILE)
    outputs += [artifacts.describe_output(out_dir, name) for name in pictures.files]
    for warning in pictures.warnings:
        info(f"[bold yellow]train-rm warning:[/] {warning}")
    inputs = {"pairs": pairs_art, **({"embeddings": emb_art} if emb_art is not None else {})}
    diagnostics = {"truncation": {"train": train.truncation, **({"test": test.truncation} if test else {})},
                   "ot": _ot_summary(trainer),
                   **({"test_loss": "the configured loss without the APLOT margin (no OT plan at evaluation)"}
                      if test else {}),
                   "resumed_from_step": resumed_step if checkpoint else None,
                   "warnings": pictures.warnings,
                   "device": "cpu" if use_cpu else "cuda", "world_size": trainer.accelerator.num_processes,
                   "precision": "float32" if use_cpu or not (cfg.bf16 or cfg.fp16) else
                                ("bf16" if cfg.bf16 else "fp16") + " mixed",
                   "mixed_precision_ignored_on_cpu": bool((cfg.bf16 or cfg.fp16) and use_cpu),
                   **({"dataset_margin": dataset_margin} if dataset_margin else {}),
                   **({"frozen_backbone": attached.manifest()} if attached is not None else {})}
    info(f"[bold]train-rm[/] done in {seconds:.1f}s: train accuracy {metrics.get('train_accuracy', float('nan')):.4f}"
         f", test accuracy {metrics.get('test_accuracy', float('nan')):.4f}")
    return artifacts.write_manifest(
        out_dir, stage=STAGE, config=config_to_dict(cfg), inputs=inputs, outputs=outputs, metrics=metrics,
        diagnostics=diagnostics,
        extra={"model": {"backbone": cfg.backbone, "resolved": _relative_or_id(resolved),
                         "identity": models.identity(resolved),
                         "head": head,
                         "frozen_backbone": attached.manifest() if attached is not None else None,
                         "loss": spec.name, "path": "model", "lora": cfg.lora,
                         "chat_template": formatting.uses_chat_template(tokenizer, cfg.chat_template),
                         "max_length": cfg.max_length, "pad_token_id": tokenizer.pad_token_id,
                         "padding_side": tokenizer.padding_side}})


def _relative_or_id(resolved: str) -> str:
    return Path(resolved).name if Path(resolved).exists() else resolved


def _test_frame(pairs_art, cfg: TrainConfig):
    from aplot_cli.prepare import load_pairs

    names = [o["path"] for o in pairs_art.manifest["outputs"]]
    if "test.parquet" not in names:
        return None
    return _take(load_pairs(pairs_art.path, "test"), cfg.max_eval_pairs, cfg.seed)


def _build_trainer(cfg, spec, model, head, tokenizer, train, test, out_dir, args, rank, resumed_step,
                   extra_callbacks):
    from aplot_cli.margins import AplotMargin, AplotSettings

    margin_fn = AplotMargin(AplotSettings(
        w_rew=cfg.w_rew, w_sem=0.0 if cfg.semantic_source == "none" else cfg.w_sem, reg=cfg.ot_reg,
        num_iter=cfg.ot_iters, tol=cfg.ot_tol, plan_on=cfg.plan_on, cost_norm=cfg.cost_norm,
        margin_from=cfg.margin_from, margin_norm=cfg.margin_norm,
        scale=cfg.margin_scale, warmup_steps=cfg.margin_warmup_steps, scope=cfg.ot_scope,
        solver=cfg.ot_solver)) if spec.aplot else None
    sink = MarginSink(out_dir, train.pair_ids, rank, resumed_step) if cfg.save_margins else None
    trainer_cls = _make_trainer_class()
    trainer = trainer_cls(
        model=model, args=args,
        train_dataset=PairDataset(train), eval_dataset=PairDataset(test) if test else None,
        data_collator=_SplitCollator(train, test, tokenizer.pad_token_id), processing_class=tokenizer,
        compute_metrics=pair_accuracy,
        callbacks=_callbacks(out_dir, resumed_step, sink, args.process_index == 0) + list(extra_callbacks),
        spec=spec, cfg=cfg, head=head, margin_fn=margin_fn, margin_sink=sink)
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # it prints logs to stdout, which carries only the manifest path
    return trainer


class _SplitCollator:
    """Trainer has one collator for train and eval: route by the split id each record carries."""

    def __init__(self, train: EncodedSplit, test: EncodedSplit | None, pad_id: int):
        self.collators = {0: PairCollator(train, pad_id)}
        if test is not None:
            self.collators[1] = PairCollator(test, pad_id)

    def __call__(self, features):
        return self.collators[features[0]["split"]](features)


def _final_metrics(trainer, train, test, train_output, seconds, cfg, resumed_step: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {"train_loss": float(train_output.training_loss), "steps": trainer.state.global_step,
                               "epochs": float(trainer.state.epoch or 0.0), "train_seconds": round(seconds, 3),
                               "train_pairs": len(train.records)}
    # the steps this process ran (after a resume, `seconds` covers only those)
    pairs_seen = (trainer.state.global_step - max(resumed_step, 0)) * cfg.batch_size * cfg.grad_accum * trainer.accelerator.num_processes
    metrics["pairs_per_second"] = pairs_seen / max(seconds, 1e-9)
    if test is not None:
        result = trainer.evaluate(PairDataset(test), metric_key_prefix="test")
        metrics.update({"test_accuracy": result["test_accuracy"], "test_loss": result["test_loss"],
                        "test_margin": result["test_margin"], "test_pairs": len(test.records)})
    subset = EncodedSplit(train.records[:cfg.train_eval_pairs], train.pair_ids, train.dataset_margin,
                          train.emb_chosen, train.emb_rejected)
    result = trainer.evaluate(PairDataset(subset), metric_key_prefix="train_eval")
    metrics.update({"train_accuracy": result["train_eval_accuracy"], "train_eval_pairs": len(subset.records)})
    return metrics


def _ot_summary(trainer) -> dict[str, Any]:
    totals = dict(trainer.ot_totals)
    totals["converged"] = _count([c for c, _ in trainer._ot_flags])
    totals["fallbacks"] = _count([f for _, f in trainer._ot_flags])
    if trainer.margin_fn is not None:
        import torch

        solver = trainer.margin_fn.solver_for(trainer.args.device)
        device = trainer.margin_fn.device_solver
        totals["solver"] = ("pot-cpu-float64" if solver == "pot" else
                            f"torch-{torch.device(trainer.args.device).type}-float32-{device.name}")
        if solver == "torch":
            totals["routes"], totals["setup_seconds"] = dict(device.routes), round(device.setup_seconds, 4)
            if device.errors:
                totals["route_errors"] = dict(device.errors)
    if totals["solves"]:
        totals["converged_frac"] = totals["converged"] / totals["solves"]
        totals["mean_seconds"] = totals["seconds"] / totals["solves"]
        # one plan per micro-batch (the global one under ot_scope=global): grad_accum does not widen it
        totals["pairs_per_solve"] = totals["pairs"] / totals["solves"]
    if trainer.ot_warnings:
        totals["warnings"] = sorted(trainer.ot_warnings)
    return totals


def _count(flags: list) -> int:
    """How many per-step flags (bools, or 0-d device tensors read once here) are true."""
    import torch

    tensors = [f for f in flags if isinstance(f, torch.Tensor)]
    total = int(torch.stack(tensors).sum()) if tensors else 0
    return total + sum(bool(f) for f in flags if not isinstance(f, torch.Tensor))


def _save(trainer, tokenizer, cfg: TrainConfig, out_dir: Path, pair_ids) -> list[dict[str, Any]]:
    """Final model in `save_pretrained` form (LoRA: merged model under model/, adapter under adapter/)."""
    model_dir = out_dir / "model"
    model = trainer.accelerator.unwrap_model(trainer.model)
    outputs = []
    if cfg.lora:
        model.save_pretrained(out_dir / "adapter", safe_serialization=True)
        outputs.append(artifacts.describe_output(out_dir, "adapter/adapter_model.safetensors"))
        model = model.merge_and_unload()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    for name in ("config.json", "model.safetensors"):
        if (model_dir / name).exists():
            outputs.append(artifacts.describe_output(out_dir, f"model/{name}"))
    if (out_dir / LOG_FILE).exists():
        rows = sum(1 for line in (out_dir / LOG_FILE).read_text().splitlines() if line.strip())
        outputs.append(artifacts.describe_output(out_dir, LOG_FILE, rows=rows))
    if trainer.margin_sink is not None:
        rows = trainer.margin_sink.merge(out_dir / MARGINS_FILE)
        outputs.append(artifacts.describe_output(out_dir, MARGINS_FILE, rows=rows))
    return outputs


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ArtifactError(f"{path} holds no saved model", hint="re-run `aplot train-rm`")
