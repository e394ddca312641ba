"""What a run reports: the mean of each per-step metric at log time (`mean_metrics`), strict pair
accuracy at evaluation (`pair_accuracy`), the final metrics (test split, a train subset, pairs/s) and
the OT solver's summary for the manifest."""

from __future__ import annotations

from typing import Any

import numpy as np

from aplot_cli.train.data import EncodedSplit, PairDataset


def mean_metrics(metrics: dict[str, list]) -> dict[str, float]:
    """Mean of each metric's per-step values (floats or 0-d tensors, on any device): one stack and one
    host read per device, at log time only. The OT diagnostics average their finite values only: one
    fallback step (counted in `ot/fallback`) must not turn a whole interval's `ot/cost_mean` into NaN."""
    import torch

    from aplot_cli.margins import finite_mean

    means, by_device = {}, {}
    for key, values in metrics.items():
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if not tensors:
            array = np.asarray(values, dtype=np.float64)
            array = array[np.isfinite(array)] if key.startswith("ot/") else array
            means[key] = float(array.mean()) if array.size else float("nan")
            continue
        device = tensors[0].device
        stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).reshape(()) for v in values])
        by_device.setdefault(device, []).append((key, finite_mean(stacked) if key.startswith("ot/") else stacked.mean()))
    for items in by_device.values():
        for (key, _), value in zip(items, torch.stack([v for _, v in items]).tolist(), strict=True):
            means[key] = float(value)
    return means


def pair_accuracy(eval_pred) -> dict[str, float]:
    """Strict pair accuracy: a tie counts as wrong (RewardBench v1)."""
    preds = np.asarray(eval_pred.predictions)
    return {"accuracy": float((preds[:, 0] > preds[:, 1]).mean()), "margin": float((preds[:, 0] - preds[:, 1]).mean())}


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
