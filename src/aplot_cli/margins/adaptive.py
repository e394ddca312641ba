"""From an OT plan to APLOT's per-pair margin (method.md section 2, steps 6-9, and the readings of
section 2b), plus the switches that cover the paper's ambiguities: `plan_on` (cost | hardness),
`cost_norm` (none | minmax | std), `margin_from` (row | diag | diag_rel | own_cost), `margin_norm`
(none | zscore | minmax), `margin_scale`, `margin_warmup_steps`, and `ot_scope` (local batch or the global
batch across data-parallel ranks); their names, allowed values and defaults are `settings`'.

Hardness `H` is section 2's cost `C` (high where rewards are close and texts similar), rescaled within
the batch by `cost_norm`. The plan is solved on `H` (`plan_on: cost`, section 2: mass avoids hard cells)
or on `1 - H` (`plan_on: hardness`: each chosen response sends its mass to the rejected responses it is
hardest to tell apart from), and the margin is read off the plan and `H`.

`AplotMargin.__call__` is the whole recipe for one batch: detached rewards (and embeddings) in, a
constant margin (B,) out, with the OT diagnostics the trainer logs. A non-finite plan gives a zero
margin for that step (counted), so a NaN never reaches the loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from aplot_cli.margins.ot import (
    DeviceSinkhorn,
    OTResult,
    _cost_from_rewards,
    cost_matrix,
    normalize_cost,
    semantic_cost,
    sinkhorn,
)
from aplot_cli.margins.readout import plan_margin
from aplot_cli.margins.settings import MARGIN_NORMS, AplotSettings, check_settings

MIN_NORM_PAIRS = 3  # zscore / minmax of fewer margins is meaningless (one pair: always zero)


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
    cost_mean: float | torch.Tensor | None = None  # mean of section 2's cost C (the plan's own cost may differ)


def zscore(margin: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(B,) `scale * (m - mean(m)) / (std(m) + 1e-6)` (population std): hard pairs positive, easy negative."""
    return scale * (margin - margin.mean()) / (margin.std(unbiased=False) + 1e-6)


def normalize_margin(margin: torch.Tensor, mode: str = "none", scale: float = 1.0) -> torch.Tensor:
    """(B,) the margin after `margin_norm` and `scale`: `none` `scale * m`; `zscore` (see `zscore`);
    `minmax` `scale * (m - min) / (max - min)`, in [0, scale] (hardest pair `scale`, easiest 0)."""
    if mode == "zscore":
        return zscore(margin, scale)
    if mode == "minmax":
        low, high = margin.amin(), margin.amax()
        return scale * (margin - low) / (high - low).clamp_min(1e-12)
    if mode == "none":
        return margin if scale == 1.0 else scale * margin
    raise ValueError(f"margin_norm must be one of {', '.join(MARGIN_NORMS)}, got {mode!r}")


def is_section2(settings: AplotSettings) -> bool:
    """The readings the fused GPU kernel computes in one launch: section 2's plan and a row or diag margin."""
    return settings.plan_on == "cost" and settings.cost_norm == "none" and settings.margin_from in ("row", "diag")


def identity_result(hardness: torch.Tensor, as_numpy: bool) -> OTResult:
    """The plan `own_cost` implies: each chosen matched to its own rejected, `T = I / B` (uniform marginals
    exactly); no solve is run. `as_numpy`: the CPU solver's form (float64 arrays, Python flags); else the
    device solver's (tensors where the rewards live)."""
    n = hardness.shape[0]
    plan = torch.eye(n, dtype=hardness.dtype, device=hardness.device) / n
    finite = torch.isfinite(hardness).all()
    if as_numpy:
        return OTResult(plan=plan.double().numpy(), cost=hardness.double().numpy(), converged=bool(finite),
                        finite=bool(finite), marginal_error=0.0, iterations=0, seconds=0.0)
    zero = torch.zeros((), device=hardness.device)
    return OTResult(plan=plan, cost=hardness, converged=finite, finite=finite, marginal_error=zero, iterations=0,
                    seconds=0.0)


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
        check_settings(settings)
        self.settings = settings
        self.device_solver = DeviceSinkhorn(settings.ot_reg, settings.ot_iters, settings.ot_tol)

    def solver_for(self, device: torch.device) -> str:
        """`pot` (CPU, float64, early stop) or `torch` (float32 on `device`: fused kernel or graph on CUDA)."""
        if self.settings.ot_solver == "auto":
            return "torch" if torch.device(device).type == "cuda" else "pot"
        return self.settings.ot_solver

    def __call__(self, r_c: torch.Tensor, r_r: torch.Tensor, e_c: torch.Tensor | None = None,
                 e_r: torch.Tensor | None = None, step: int = 0, normalized: bool = False) -> MarginResult:
        """`normalized`: the embeddings are already unit length (as `aplot embed` writes them)."""
        s = self.settings
        r_c, r_r = r_c.detach().float(), r_r.detach().float()
        n_local = r_c.shape[0]
        if step < s.margin_warmup_steps:
            zero = torch.zeros_like(r_c)
            return MarginResult(margin=zero, ot=None, raw=zero, stats={"warmup": 1.0})
        offset = 0
        if s.ot_scope == "global":
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
        hardness = normalize_cost(cost, s.cost_norm)
        result = self._solve_cpu(hardness)
        cost_mean = float(cost.mean())
        if not result.finite or (s.margin_norm != "none" and cost.shape[0] < MIN_NORM_PAIRS):
            zero = torch.zeros(n_local, dtype=torch.float32, device=r_c.device)
            return MarginResult(margin=zero, ot=result, raw=torch.zeros(cost.shape[0]), offset=offset,
                                fallback=True, cost_mean=cost_mean,
                                stats=_stats(result, zero, torch.zeros(1), cost_mean, fallback=True))
        raw = plan_margin(torch.as_tensor(result.plan), hardness.double(), s.margin_from, s.plan_on).float()
        full = torch.nan_to_num(normalize_margin(raw, s.margin_norm, s.margin_scale), nan=0.0, posinf=0.0, neginf=0.0)
        margin = full[offset:offset + n_local].to(r_c.device)
        return MarginResult(margin=margin, ot=result, raw=raw, offset=offset, cost_mean=cost_mean,
                            stats=_stats(result, full, raw, cost_mean))

    def _solve_cpu(self, hardness: torch.Tensor) -> OTResult:
        """POT's plan for this reading: on H (`plan_on: cost`) or 1 - H (`hardness`); none for `own_cost`."""
        s = self.settings
        if s.margin_from == "own_cost":
            return identity_result(hardness.cpu(), as_numpy=True)
        return sinkhorn(hardness if s.plan_on == "cost" else 1.0 - hardness, s.ot_reg, s.ot_iters, s.ot_tol)

    def _on_device(self, r_c: torch.Tensor, r_r: torch.Tensor, similarity: torch.Tensor | None, n_local: int,
                   offset: int) -> MarginResult:
        """Steps 4-9 where the rewards live, with no host sync: a non-finite plan zeroes the margin by
        `torch.where` instead of a branch. Section 2's readings take the fused kernel (cost, plan and margin
        in one launch); the others build H here, solve it by the device routes and read the margin eagerly."""
        s = self.settings
        if is_section2(s):
            result, raw = self.device_solver.margin(r_c, r_r, similarity, s.w_rew, s.w_sem, s.margin_from)
            cost_mean = result.cost.mean()
            if raw is None:  # not the fused route
                raw = plan_margin(result.plan, result.cost, s.margin_from)
        else:
            cost = _cost_from_rewards(r_c, r_r, similarity, s.w_rew, s.w_sem)
            hardness = normalize_cost(cost, s.cost_norm)
            if s.margin_from == "own_cost":
                result = identity_result(hardness, as_numpy=False)
            else:
                result = self.device_solver(hardness if s.plan_on == "cost" else 1.0 - hardness)
            raw, cost_mean = plan_margin(result.plan, hardness, s.margin_from, s.plan_on), cost.mean()
        full = normalize_margin(raw, s.margin_norm, s.margin_scale)
        zero = torch.zeros((), dtype=full.dtype, device=full.device)
        usable = result.finite & torch.isfinite(full).all()
        if s.margin_norm != "none" and raw.shape[0] < MIN_NORM_PAIRS:  # too few margins to normalise
            usable = torch.zeros_like(usable)
        full = torch.where(usable, full, zero)
        raw = torch.where(result.finite, raw, zero)
        return MarginResult(margin=full[offset:offset + n_local], ot=result, raw=raw, offset=offset,
                            fallback=~usable, full=full, cost_mean=cost_mean)


def step_mean(values: list[torch.Tensor], reduce) -> torch.Tensor:
    """0-d mean over steps of `reduce((S, ...) -> (S,))` applied to the steps' tensors, with one stack per
    tensor shape (a run's last batch may be smaller) and no host read."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for value in values:
        groups.setdefault(tuple(value.shape), []).append(value)
    return sum(reduce(torch.stack(group)).sum() for group in groups.values()) / len(values)


def finite_mean(values: torch.Tensor) -> torch.Tensor:
    """0-d mean of the finite entries of `values` (NaN when none is), with no host read."""
    finite = torch.isfinite(values)
    return torch.where(finite, values, torch.zeros_like(values)).sum() / finite.sum()


def device_stats(results: list[MarginResult]) -> dict[str, torch.Tensor]:
    """`_stats` averaged over many device-path steps, as 0-d tensors (`step_mean` of each statistic)."""
    errors = [r.ot.marginal_error for r in results]
    return {
        "margin_mean": step_mean([r.full for r in results], lambda x: x.mean(1)),
        "margin_std": step_mean([r.full for r in results], lambda x: x.std(1, unbiased=False)),
        "margin_spread": step_mean([r.raw for r in results], lambda x: x.std(1, unbiased=False)),
        # a fallback step's cost may be NaN (non-finite rewards): it is counted in `fallback`, not averaged
        "cost_mean": finite_mean(torch.stack([r.cost_mean.reshape(()).float() for r in results])),
        "converged_frac": step_mean([r.ot.converged for r in results], lambda x: x.float()),
        "marginal_error": step_mean(errors, lambda x: torch.where(torch.isfinite(x), x, torch.full_like(x, -1.0))),
        "iterations": torch.tensor(float(np.mean([r.ot.iterations for r in results]))),
        "seconds": torch.tensor(float(np.mean([r.ot.seconds for r in results]))),
        "fallback": step_mean([r.fallback for r in results], lambda x: x.float()),
    }


def _stats(result: OTResult, margin: torch.Tensor, raw: torch.Tensor, cost_mean: float,
           fallback: bool = False) -> dict[str, float]:
    """Per-step diagnostics with the log names of method.md section 2 (without the `ot/` prefix)."""
    return {
        "margin_mean": float(margin.mean()),
        "margin_std": float(margin.std(unbiased=False)),
        "margin_spread": float(raw.std(unbiased=False)),
        "cost_mean": cost_mean,
        "converged_frac": float(result.converged),
        "marginal_error": float(result.marginal_error) if np.isfinite(result.marginal_error) else -1.0,
        "iterations": float(result.iterations),
        "seconds": float(result.seconds),
        "fallback": float(fallback),
    }
