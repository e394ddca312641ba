"""POT's `sinkhorn_log` updates as one Triton kernel: a single program holds the (B, B) cost tile in
registers and runs every iteration there, so a solve is one launch instead of about a thousand tiny
kernels (the launch-bound cost the issue measured on an H200). From the rewards it also builds the cost
and the per-row margin in the same launch, so APLOT's whole per-step margin is a matrix product and one
kernel.

Used by `ot.DeviceSinkhorn` on CUDA when Triton is importable and B <= `MAX_BATCH`; everything else
falls back to the captured graph of `ot.sinkhorn_log_torch`. Triton is never a dependency: the CUDA
builds of torch ship it, and the CPU build does not need it."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

from aplot_cli.margins.settings import SECTION2

MAX_BATCH = 128  # one program keeps a (B, B) tile in registers: past this, the graph path is faster


@functools.lru_cache(maxsize=1)
def _kernel():
    """The jitted kernel, or None when Triton is missing (built lazily: importing aplot never imports triton)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    # Sizes are not specialised on (Triton would compile again for a batch not divisible by 16, e.g. an
    # epoch's last batch): one compile per (flags, ot_iters, block size).
    @triton.jit(do_not_specialize=["n_rows", "n_cols"])
    def aplot_ot_kernel(cost_ptr, rc_ptr, rr_ptr, sim_ptr, plan_ptr, raw_ptr, error_ptr, n_rows, n_cols, w_rew,
                        w_sem, inv_reg, log_a, log_b, a, b, FROM_REWARDS: tl.constexpr, HAS_SIM: tl.constexpr,
                        DIAG: tl.constexpr, NUM_ITER: tl.constexpr, BLOCK: tl.constexpr):
        rows = tl.arange(0, BLOCK)
        cols = tl.arange(0, BLOCK)
        row_ok = rows < n_rows
        col_ok = cols < n_cols
        mask = row_ok[:, None] & col_ok[None, :]
        offsets = rows[:, None] * n_cols + cols[None, :]
        # method.md section 2, step 4: C = w_rew (1 - sigmoid|r_c[i] - r_r[j]|) + w_sem cos(e_c[i], e_r[j])
        if FROM_REWARDS:
            r_c = tl.load(rc_ptr + rows, mask=row_ok, other=0.0)
            r_r = tl.load(rr_ptr + cols, mask=col_ok, other=0.0)
            cost = w_rew * (1.0 - tl.sigmoid(tl.abs(r_c[:, None] - r_r[None, :])))
            if HAS_SIM:
                cost += w_sem * tl.load(sim_ptr + offsets, mask=mask, other=0.0)
            tl.store(cost_ptr + offsets, cost, mask=mask)
        else:
            cost = tl.load(cost_ptr + offsets, mask=mask, other=0.0)
        neg_inf = float("-inf")
        scaled = tl.where(mask, -cost * inv_reg, neg_inf)
        u = tl.zeros([BLOCK], dtype=tl.float32)
        v = tl.zeros([BLOCK], dtype=tl.float32)
        for _ in range(NUM_ITER):  # a compile-time count
            # v = log b - logsumexp_i(scaled[i, :] + u[i])
            x = scaled + u[:, None]
            peak = tl.max(x, axis=0)
            peak = tl.where(col_ok, peak, 0.0)
            lse = peak + tl.log(tl.sum(tl.exp(x - peak[None, :]), axis=0))
            v = tl.where(col_ok, log_b - lse, 0.0)
            # u = log a - logsumexp_j(scaled[:, j] + v[j])
            x = scaled + v[None, :]
            peak = tl.max(x, axis=1)
            peak = tl.where(row_ok, peak, 0.0)
            lse = peak + tl.log(tl.sum(tl.exp(x - peak[:, None]), axis=1))
            u = tl.where(row_ok, log_a - lse, 0.0)
        plan = tl.where(mask, tl.exp(scaled + u[:, None] + v[None, :]), 0.0)
        tl.store(plan_ptr + offsets, plan, mask=mask)
        # method.md section 2, step 6: the row's expected cost under the plan (x B), or the diagonal term
        weighted = plan * cost
        bad = tl.sum(tl.sum(tl.where(mask & ((weighted != weighted) | (tl.abs(weighted) == float("inf"))), 1, 0),
                            axis=1), axis=0)
        if DIAG:
            weighted = tl.where(rows[:, None] == cols[None, :], weighted, 0.0)
        tl.store(raw_ptr + rows, n_rows * tl.sum(weighted, axis=1), mask=row_ok)
        row_gap = tl.where(row_ok, tl.sum(plan, axis=1) - a, 0.0)
        col_gap = tl.where(col_ok, tl.sum(plan, axis=0) - b, 0.0)
        error = tl.maximum(tl.sqrt(tl.sum(row_gap * row_gap, axis=0)), tl.sqrt(tl.sum(col_gap * col_gap, axis=0)))
        tl.store(error_ptr, tl.where(bad > 0, float("inf"), error))

    return aplot_ot_kernel


@dataclass(frozen=True)
class FusedSolve:
    """plan (B, B); cost (B, B) the matrix solved for; raw (B,) the margin before normalisation
    (`margin_from`); error: 0-d marginal error, inf when the plan or margin is not finite; block: the
    tile the kernel was compiled for (one compile per tile and flags)."""

    plan: torch.Tensor
    cost: torch.Tensor
    raw: torch.Tensor
    error: torch.Tensor
    block: int


def available(tensor: torch.Tensor) -> bool:
    """A fused solve applies: Triton importable, the tensor on a device Triton runs on (or the
    interpreter), and the batch small enough for one program."""
    on_device = tensor.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    return on_device and max(tensor.shape) <= MAX_BATCH and _kernel() is not None


def solve(ot_reg: float, ot_iters: int, cost: torch.Tensor | None = None, r_c: torch.Tensor | None = None,
          r_r: torch.Tensor | None = None, similarity: torch.Tensor | None = None, w_rew: float = SECTION2.w_rew,
          w_sem: float = SECTION2.w_sem, margin_from: str = "row", min_block: int = 16) -> FusedSolve:
    """One launch: the cost (given, or built from rewards (B,) and a cosine matrix (B, B)), POT's
    `sinkhorn_log` updates for `ot_iters` iterations in float32, the plan, the per-row margin and the
    marginal error. `min_block`: the smallest tile to use, so a caller that has compiled for a larger
    batch reuses that kernel for a smaller one (an epoch's last batch) instead of compiling again."""
    import triton

    from_rewards = cost is None
    if from_rewards:
        r_c, r_r = r_c.detach().float().contiguous(), r_r.detach().float().contiguous()
        cost = torch.empty((r_c.shape[0], r_r.shape[0]), dtype=torch.float32, device=r_c.device)
    else:
        cost = cost.detach().float().contiguous()
        r_c = r_r = cost  # unused pointers
    n_rows, n_cols = cost.shape
    plan = torch.empty_like(cost)
    raw = torch.empty(n_rows, dtype=torch.float32, device=cost.device)
    error = torch.empty((), dtype=torch.float32, device=cost.device)
    has_sim = from_rewards and similarity is not None
    sim = similarity.detach().float().contiguous() if has_sim else cost
    block = max(16, min_block, triton.next_power_of_2(max(n_rows, n_cols)))
    _kernel()[(1,)](cost, r_c, r_r, sim, plan, raw, error, n_rows, n_cols, w_rew, w_sem, 1.0 / ot_reg,
                    -math.log(n_rows), -math.log(n_cols), 1.0 / n_rows, 1.0 / n_cols, FROM_REWARDS=from_rewards,
                    HAS_SIM=has_sim, DIAG=margin_from == "diag", NUM_ITER=ot_iters, BLOCK=block,
                    num_warps=4 if block <= 64 else 8)
    return FusedSolve(plan=plan, cost=cost, raw=raw, error=error, block=block)


def sinkhorn_log_fused(cost: torch.Tensor, ot_reg: float = SECTION2.ot_reg,
                       ot_iters: int = SECTION2.ot_iters) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `ot.sinkhorn_log_torch` (float32): (plan (B, B), marginal error 0-d; inf when the
    plan is not finite), from one kernel launch."""
    result = solve(ot_reg, ot_iters, cost=cost)
    return result.plan, result.error
