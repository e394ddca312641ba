"""POT's `sinkhorn_log` updates as one Triton kernel: a single program holds the (B, B) cost tile in
registers and runs every iteration there, so a solve is one launch of a few microseconds instead of
about a thousand tiny kernels (the launch-bound cost the issue measured on an H200).

Used by `ot.DeviceSinkhorn` on CUDA when Triton is importable and B <= `MAX_BATCH`; everything else
falls back to the captured graph of `ot.sinkhorn_log_torch`. Triton is never a dependency: the CUDA
builds of torch ship it, and the CPU build does not need it."""

from __future__ import annotations

import functools

import torch

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
    # epoch's last batch): one compile per (ot_iters, block size).
    @triton.jit(do_not_specialize=["n_rows", "n_cols"])
    def sinkhorn_log_kernel(cost_ptr, plan_ptr, error_ptr, n_rows, n_cols, inv_reg, log_a, log_b, a, b,
                            NUM_ITER: tl.constexpr, BLOCK: tl.constexpr):
        rows = tl.arange(0, BLOCK)
        cols = tl.arange(0, BLOCK)
        row_ok = rows < n_rows
        col_ok = cols < n_cols
        mask = row_ok[:, None] & col_ok[None, :]
        cost = tl.load(cost_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
        neg_inf = float("-inf")
        scaled = tl.where(mask, -cost * inv_reg, neg_inf)
        u = tl.zeros([BLOCK], dtype=tl.float32)
        v = tl.zeros([BLOCK], dtype=tl.float32)
        for _ in range(NUM_ITER):  # a compile-time count: one kernel per (ot_iters, block size)
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
        tl.store(plan_ptr + rows[:, None] * n_cols + cols[None, :], plan, mask=mask)
        row_gap = tl.where(row_ok, tl.sum(plan, axis=1) - a, 0.0)
        col_gap = tl.where(col_ok, tl.sum(plan, axis=0) - b, 0.0)
        error = tl.maximum(tl.sqrt(tl.sum(row_gap * row_gap, axis=0)), tl.sqrt(tl.sum(col_gap * col_gap, axis=0)))
        tl.store(error_ptr, error)

    return sinkhorn_log_kernel


def available(cost: torch.Tensor) -> bool:
    """A fused solve applies: Triton importable, the cost on a device Triton runs on (or the interpreter),
    and the batch small enough for one program."""
    import os

    on_device = cost.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    return on_device and max(cost.shape) <= MAX_BATCH and _kernel() is not None


def sinkhorn_log_fused(cost: torch.Tensor, reg: float = 0.1, num_iter: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `ot.sinkhorn_log_torch` (float32): (plan (B, B), marginal error 0-d; inf when the
    plan is not finite), from one kernel launch."""
    import math

    import triton

    cost = cost.detach().float().contiguous()
    n_rows, n_cols = cost.shape
    plan = torch.empty_like(cost)
    error = torch.empty((), dtype=torch.float32, device=cost.device)
    block = max(16, triton.next_power_of_2(max(n_rows, n_cols)))
    _kernel()[(1,)](cost, plan, error, n_rows, n_cols, 1.0 / reg, -math.log(n_rows), -math.log(n_cols),
                    1.0 / n_rows, 1.0 / n_cols, NUM_ITER=num_iter, BLOCK=block, num_warps=4 if block <= 64 else 8)
    error = torch.where(torch.isfinite(plan).all() & torch.isfinite(error), error, torch.full_like(error, float("inf")))
    return plan, error
