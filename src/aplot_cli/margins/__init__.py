"""APLOT's adaptive margin: `ot` builds the cost matrix and solves the entropic OT plan (POT,
log-domain Sinkhorn on the CPU, or the same updates on the accelerator: `fused` as one Triton kernel,
else a captured CUDA graph); `readout` reads a per-pair margin off a plan; `adaptive` turns one
batch into its constant margin (cost, plan, readout, normalisation)."""

from aplot_cli.margins.adaptive import (
    AplotMargin,
    AplotSettings,
    MarginResult,
    check_settings,
    device_stats,
    finite_mean,
    gather_rows,
    normalize_margin,
    step_mean,
    zscore,
)
from aplot_cli.margins.ot import (
    DeviceSinkhorn,
    OTResult,
    cost_matrix,
    normalize_cost,
    reward_cost,
    semantic_cost,
    sinkhorn,
    sinkhorn_log_torch,
)
from aplot_cli.margins.readout import plan_margin

__all__ = ["AplotMargin", "AplotSettings", "DeviceSinkhorn", "MarginResult", "OTResult", "check_settings",
           "cost_matrix", "device_stats", "finite_mean", "gather_rows", "normalize_cost", "normalize_margin", "plan_margin",
           "reward_cost", "semantic_cost", "sinkhorn", "sinkhorn_log_torch", "step_mean", "zscore"]
