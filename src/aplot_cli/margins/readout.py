"""Reading APLOT's per-pair margin off an OT plan (method.md section 2, step 6, and the readings of
section 2b). Both `adaptive` (the margin of a batch) and `ot` (checking the fused kernel's margin
against the eager solve) read it here, so neither imports the other for it."""

from __future__ import annotations

import torch

from aplot_cli.margins.settings import MARGIN_FROM


def plan_margin(plan: torch.Tensor, cost: torch.Tensor, margin_from: str = "row", plan_on: str = "cost") -> torch.Tensor:
    """(B,) margin from a plan T (B, B) and the hardness H (`cost`, B, B): `row` `B sum_j T[i,j] H[i,j]` (the
    row's expected hardness under the plan, since a row of T sums to 1/B); `diag` `B T[i,i] H[i,i]`;
    `diag_rel` the share of its own match pair i's plan loses, `1 - B T[i,i]` (`plan_on: cost`), or gains,
    `B T[i,i] - 1` (`plan_on: hardness`); `own_cost` `H[i,i]` (the plan unused: the no-OT ablation)."""
    if plan.shape != cost.shape or plan.dim() != 2:
        raise ValueError(f"plan and cost must be the same (B, B) shape, got {tuple(plan.shape)}, {tuple(cost.shape)}")
    n = plan.shape[0]
    if margin_from == "diag":
        return n * torch.diagonal(plan) * torch.diagonal(cost)
    if margin_from == "row":
        return n * (plan * cost).sum(dim=1)
    if margin_from == "diag_rel":
        own = n * torch.diagonal(plan)
        return own - 1.0 if plan_on == "hardness" else 1.0 - own
    if margin_from == "own_cost":
        return torch.diagonal(cost).clone()
    raise ValueError(f"margin_from must be one of {', '.join(MARGIN_FROM)}, got {margin_from!r}")
