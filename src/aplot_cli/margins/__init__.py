"""APLOT's adaptive margin: `settings` names every switch once (its allowed values and section 2's
defaults; what the configs import); `ot` builds the cost matrix and solves the entropic OT plan (POT,
log-domain Sinkhorn on the CPU, or the same updates on the accelerator: `fused` as one Triton kernel,
else a captured CUDA graph); `readout` reads a per-pair margin off a plan; `adaptive` turns one batch
into its constant margin (cost, plan, readout, normalisation).

Importing the package imports none of its modules: a name below loads its module on first use, so the
configs read `settings` without loading torch."""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "AplotMargin": "adaptive",
    "MarginResult": "adaptive",
    "device_stats": "adaptive",
    "finite_mean": "adaptive",
    "gather_rows": "adaptive",
    "normalize_margin": "adaptive",
    "step_mean": "adaptive",
    "zscore": "adaptive",
    "DeviceSinkhorn": "ot",
    "OTResult": "ot",
    "cost_matrix": "ot",
    "normalize_cost": "ot",
    "reward_cost": "ot",
    "semantic_cost": "ot",
    "sinkhorn": "ot",
    "sinkhorn_log_torch": "ot",
    "plan_margin": "readout",
    "AplotSettings": "settings",
    "SECTION2": "settings",
    "check_settings": "settings",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"aplot_cli.margins.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
