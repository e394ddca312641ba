"""`RewardTrainer`: `transformers.Trainer` with a pairwise reward loss and the APLOT margin. Imports
torch and transformers, so `aplot_cli.train` imports this module only when a run builds its trainer
(importing the CLI, or the package, does not import transformers)."""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from aplot_cli import losses
from aplot_cli.config import TrainConfig
from aplot_cli.errors import TrainingError
from aplot_cli.margins import device_stats, step_mean
from aplot_cli.train import objective, prefix
from aplot_cli.train.metrics import mean_metrics

PENDING_STEPS = 256  # step tensors kept for the next log before they are reduced early


class RewardTrainer(Trainer):
    """Trainer with a pairwise reward loss. `compute_loss` concatenates chosen and rejected into one
    (2B, L) forward pass (with prefix sharing, one row per pair or fewer: train/prefix.py), reads one scalar
    per response, and applies `losses.reward_loss` with the dataset and/or APLOT margin (a constant).
    Per-step metrics are averaged between log calls."""

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
        self._losses: list[tuple] = []        # per micro-batch since the last check: (step, 0-d loss)
        self._pairs_since_log, self._last_log_time = 0, time.perf_counter()
        self.ot_totals = {"solves": 0, "converged": 0, "fallbacks": 0, "seconds": 0.0, "pairs": 0, "max_pairs": 0}
        self.ot_warnings: set[str] = set()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows, dataset_margin = inputs["rows"], inputs["dataset_margin"]
        n = rows.shape[0]
        use_backbone = self.spec.aplot and self.cfg.semantic_source == "backbone"
        states = None
        if "score_index" in inputs:  # prefix sharing (train/prefix.py): the prompt runs once per pair
            r_c, r_r, states = prefix.score_pairs(model, self.head, inputs, hidden=use_backbone)
        else:
            forward = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs}
            outputs = model(**forward, output_hidden_states=use_backbone)
            rewards = outputs.logits[:, 0].float()
            r_c, r_r = rewards[:n], rewards[n:]
        e_c = e_r = None
        if self.spec.aplot and model.training:
            if use_backbone and states is not None:
                e_c, e_r = states[0].detach(), states[1].detach()
            elif use_backbone:
                emb = objective.score_token_states(outputs.hidden_states[-1], inputs["attention_mask"], self.head)
                e_c, e_r = emb[:n], emb[n:]
            elif self.cfg.semantic_source == "embeddings" and "emb_chosen" in inputs:
                e_c, e_r = inputs["emb_chosen"], inputs["emb_rejected"]
        batch = objective.batch_loss(self.spec, self.cfg, r_c, r_r, margin_fn=self.margin_fn, e_c=e_c, e_r=e_r,
                                     dataset_margin=dataset_margin, step=self.state.global_step,
                                     training=model.training,
                                     normalized=not use_backbone)  # the collator's tables are unit length
        result, result_ot = batch.result, batch.aplot
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
        self._losses.append((self.state.global_step + 1, result.loss.detach()))
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
            self._check_loss()
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

    def _check_loss(self) -> None:
        """Stop at a non-finite training loss. Trainer's `logging_nan_inf_filter` replaces it in the
        logged `loss` by the running mean, so it is checked here, one host read per log or save."""
        if not self._losses:
            return
        losses_, self._losses = self._losses, []
        values = torch.stack([loss.float().reshape(()) for _, loss in losses_])
        bad = (~torch.isfinite(values)).nonzero()
        if bad.numel():
            first = int(bad[0, 0])
            raise TrainingError(
                f"the training loss is {float(values[first])} at step {losses_[first][0]} (learning_rate "
                f"{self.cfg.learning_rate:g}): training stopped, as the weights from there on are not usable",
                hint="start again with --overwrite and a lower --learning-rate (or warm-up, or a lower "
                     "max_grad_norm); check the data for empty or extreme texts")

    def _save_checkpoint(self, model, trial) -> None:
        self._check_loss()  # a checkpoint never holds weights past a non-finite loss
        super()._save_checkpoint(model, trial)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._check_loss()
        if "loss" in logs and (self._steps or self._metrics):  # a training log: attach the step metrics
            self._fold_step_metrics()
            logs.update(mean_metrics(self._metrics))
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

    def evaluate(self, *args, **kwargs):
        # Evaluation draws from the global RNGs (each DataLoader iterator draws a base seed): without
        # this, a run with --eval-steps would train with other dropout masks than one without.
        with _rng_kept():
            return super().evaluate(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        logits = torch.stack([out["rewards_chosen"], out["rewards_rejected"]], dim=1)
        return loss.detach(), logits, torch.zeros(logits.shape[0], device=logits.device)


@contextlib.contextmanager
def _rng_kept():
    """Restore the python, numpy and torch (CPU and every initialised CUDA device) RNG states on exit."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
