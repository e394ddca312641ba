"""From an OT plan to APLOT's per-pair margin (method.md section 2, steps 6-9), plus the switches that
cover the paper's ambiguities: `margin_from` (row | diag), `margin_norm` (none | zscore), `scale`,
warm-up, and `scope` (local batch or the global batch across data-parallel ranks).

`AplotMargin.__call__` is the whole recipe for one batch: detached rewards (and embeddings) in, a
constant margin (B,) out, with the OT diagnostics the trainer logs. A non-finite plan gives a zero
margin for that step (counted), so a NaN never reaches the loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from aplot_cli.margins.ot import DeviceSinkhorn, OTResult, cost_matrix, semantic_cost, sinkhorn


@dataclass(frozen=True)
class AplotSettings:
    """Every APLOT switch (defaults from method.md section 2)."""

    w_rew: float = 0.9
    w_sem: float = 0.1
    reg: float = 0.1
    num_iter: int = 50
    tol: float = 1e-6
    margin_from: str = "row"        # row: B * sum_j T[i,j] C[i,j]; diag: B * T[i,i] C[i,i]
    margin_norm: str = "none"       # none | zscore
    scale: float = 1.0
    warmup_steps: int = 0           # plain BT (zero margin) for the first steps
    scope: str = "local"            # local | global (gather across data-parallel ranks)
    solver: str = "auto"            # auto (pot on CPU, torch on CUDA) | pot | torch


@dataclass(frozen=True)
class MarginResult:
    """margin: (B_local,) constant margin for this rank's rows; ot: the solve (None during warm-up);
    raw: (B_global,) margin before normalisation; offset: first global row of this rank;
    fallback: the plan was not finite and the margin was zeroed; stats: the per-step diagnostics as
    floats. On the device solver's path nothing is read back: fallback is a 0-d tensor, `full` holds the
    global margin, stats is empty, and `device_stats` reduces many steps' results at once when the
    trainer logs."""

    margin: torch.Tensor
    ot: OTResult | None
    raw: torch.Tensor
    offset: int = 0
    fallback: bool | torch.Tensor = False
    stats: dict[str, float] = field(default_factory=dict)
    full: torch.Tensor | None = None


def plan_margin(plan: torch.Tensor, cost: torch.Tensor, margin_from: str = "row") -> torch.Tensor:
    """(B,) `B * sum_j T[i, j] C[i, j]` (row: the row's expected cost under the plan, since a row of T
    sums to 1/B) or `B * T[i, i] C[i, i]` (diag)."""
    if plan.shape != cost.shape or plan.dim() != 2:
        raise ValueError(f"plan and cost must be the same (B, B) shape, got {tuple(plan.shape)}, {tuple(cost.shape)}")
    n = plan.shape[0]
    if margin_from == "diag":
        return n * torch.diagonal(plan) * torch.diagonal(cost)
    if margin_from == "row":
        return n * (plan * cost).sum(dim=1)
    raise ValueError(f"margin_from must be row or diag, got {margin_from!r}")


def zscore(margin: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(B,) `scale * (m - mean(m)) / (std(m) + 1e-6)` (population std): hard pairs positive, easy negative."""
    return scale * (margin - margin.mean()) / (margin.std(unbiased=False) + 1e-6)


def gather_rows(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate `local` (B_r, ...) over the data-parallel ranks in rank order (ranks may hold
    different B_r); returns (global tensor, this rank's first row). A no-op outside torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([local.shape[0]], device=local.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]), sum(sizes[:rank])


class AplotMargin:
    """Callable: (r_c, r_r, e_c, e_r, step) -> MarginResult, per the settings."""

    def __init__(self, settings: AplotSettings):
        if (settings.margin_from not in ("row", "diag") or settings.margin_norm not in ("none", "zscore")
                or settings.solver not in ("auto", "pot", "torch")):
            raise ValueError(f"bad margin settings {settings}")
        self.settings = settings
        self.device_solver = DeviceSinkhorn(settings.reg, settings.num_iter, settings.tol)

    def solver_for(self, device: torch.device) -> str:
        """`pot` (CPU, float64, early stop) or `torch` (float32 on `device`: fused kernel or graph on CUDA)."""
        if self.settings.solver == "auto":
            return "torch" if torch.device(device).type == "cuda" else "pot"
        return self.settings.solver

    def __call__(self, r_c: torch.Tensor, r_r: torch.Tensor, e_c: torch.Tensor | None = None,
                 e_r: torch.Tensor | None = None, step: int = 0, normalized: bool = False) -> MarginResult:
        """`normalized`: the embeddings are already unit length (as `aplot embed` writes them)."""
        s = self.settings
        r_c, r_r = r_c.detach().float(), r_r.detach().float()
        n_local = r_c.shape[0]
        if step < s.warmup_steps:
            zero = torch.zeros_like(r_c)
            return MarginResult(margin=zero, ot=None, raw=zero, stats={"warmup": 1.0})
        offset = 0
        if s.scope == "global":
            # One gather of [r_c | r_r | e_c | e_r] keeps the ranks' rows aligned.
            parts = [r_c[:, None], r_r[:, None]]
            if e_c is not None and e_r is not None:
                parts += [e_c.detach().float().to(r_c.device), e_r.detach().float().to(r_c.device)]
            stacked, offset = gather_rows(torch.cat(parts, dim=1))
            r_c, r_r = stacked[:, 0], stacked[:, 1]
            if e_c is not None and e_r is not None:
                dim = e_c.shape[1]
                e_c, e_r = stacked[:, 2:2 + dim], stacked[:, 2 + dim:]
        if self.solver_for(r_c.device) == "torch":
            similarity = None
            if e_c is not None and e_r is not None and s.w_sem != 0.0:
                e_c, e_r = e_c.detach().float().to(r_c.device), e_r.detach().float().to(r_c.device)
                similarity = e_c @ e_r.T if normalized else semantic_cost(e_c, e_r)
            return self._on_device(r_c, r_r, similarity, n_local, offset)
        cost = cost_matrix(r_c.cpu(), r_r.cpu(), None if e_c is None else e_c.cpu(),
                           None if e_r is None else e_r.cpu(), s.w_rew, s.w_sem)
        result = sinkhorn(cost, s.reg, s.num_iter, s.tol)
        if not result.finite:
            zero = torch.zeros(n_local, dtype=torch.float32, device=r_c.device)
            return MarginResult(margin=zero, ot=result, raw=torch.zeros(cost.shape[0]), offset=offset,
                                fallback=True, stats=_stats(result, zero, torch.zeros(1), fallback=True))
        raw = plan_margin(torch.from_numpy(result.plan), torch.from_numpy(result.cost), s.margin_from).float()
        full = zscore(raw, s.scale) if s.margin_norm == "zscore" else s.scale * raw
        full = torch.nan_to_num(full, nan=0.0, posinf=0.0, neginf=0.0)
        margin = full[offset:offset + n_local].to(r_c.device)
        return MarginResult(margin=margin, ot=result, raw=raw, offset=offset, stats=_stats(result, full, raw))


    def _on_device(self, r_c: torch.Tensor, r_r: torch.Tensor, similarity: torch.Tensor | None, n_local: int,
                   offset: int) -> MarginResult:
        """Steps 4-9 where the rewards live, with no host sync: a non-finite plan zeroes the margin by
        `torch.where` instead of a branch."""
        s = self.settings
        result, raw = self.device_solver.margin(r_c, r_r, similarity, s.w_rew, s.w_sem, s.margin_from)
        if raw is None:  # not the fused route
            raw = plan_margin(result.plan, result.cost, s.margin_from)
        full = zscore(raw, s.scale) if s.margin_norm == "zscore" else (raw if s.scale == 1.0 else s.scale * raw)
        zero = torch.zeros((), dtype=full.dtype, device=full.device)
        full = torch.where(result.finite & torch.isfinite(full), full, zero)
        raw = torch.where(result.finite, raw, zero)
        return MarginResult(margin=full[offset:offset + n_local], ot=result, raw=raw, offset=offset,
                            fallback=~result.finite, full=full)


def step_mean(values: list[torch.Tensor], reduce) -> torch.Tensor:
    """0-d mean over steps of `reduce((S, ...) -> (S,))` applied to the steps' tensors, with one stack per
    tensor shape (a run's last batch may be smaller) and no host read."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for value in values:
        groups.setdefault(tuple(value.shape), []).append(value)
    return sum(reduce(torch.stack(group)).sum() for group in groups.values()) / len(values)


def device_stats(results: list[MarginResult]) -> dict[str, torch.Tensor]:
    """`_stats` averaged over many device-path steps, as 0-d tensors (`step_mean` of each statistic)."""
    flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731 - (S, ...) -> (S, n)
    errors = [r.ot.marginal_error for r in results]
    return {
        "margin_mean": step_mean([r.full for r in results], lambda x: x.mean(1)),
        "margin_std": step_mean([r.full for r in results], lambda x: x.std(1, unbiased=False)),
        "margin_spread": step_mean([r.raw for r in results], lambda x: x.std(1, unbiased=False)),
        "cost_mean": step_mean([r.ot.cost for r in results], lambda x: flat(x).mean(1)),
        "converged_frac": step_mean([r.ot.converged for r in results], lambda x: x.float()),
        "marginal_error": step_mean(errors, lambda x: torch.where(torch.isfinite(x), x, torch.full_like(x, -1.0))),
        "iterations": torch.tensor(float(np.mean([r.ot.iterations for r in results]))),
        "seconds": torch.tensor(float(np.mean([r.ot.seconds for r in results]))),
        "fallback": step_mean([r.fallback for r in results], lambda x: x.float()),
    }


def _stats(result: OTResult, margin: torch.Tensor, raw: torch.Tensor, fallback: bool = False) -> dict[str, float]:
    """Per-step diagnostics with the log names of method.md section 2 (without the `ot/` prefix)."""
    return {
        "margin_mean": float(margin.mean()),
        "margin_std": float(margin.std(unbiased=False)),
        "margin_spread": float(raw.std(unbiased=False)),
        "cost_mean": float(np.mean(result.cost)),
        "converged_frac": float(result.converged),
        "marginal_error": float(result.marginal_error) if np.isfinite(result.marginal_error) else -1.0,
        "iterations": float(result.iterations),
        "seconds": float(result.seconds),
        "fallback": float(fallback),
    }
