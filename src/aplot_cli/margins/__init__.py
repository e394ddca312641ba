"""APLOT's adaptive margin: `ot` builds the cost matrix and solves the entropic OT plan (POT,
log-domain Sinkhorn); `adaptive` turns the plan into a per-pair constant margin."""

from aplot_cli.margins.adaptive import AplotMargin, AplotSettings, MarginResult, gather_rows, plan_margin, zscore
from aplot_cli.margins.ot import OTResult, cost_matrix, reward_cost, semantic_cost, sinkhorn

__all__ = ["AplotMargin", "AplotSettings", "MarginResult", "OTResult", "cost_matrix", "gather_rows",
           "plan_margin", "reward_cost", "semantic_cost", "sinkhorn", "zscore"]
