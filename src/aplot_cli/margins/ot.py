"""The optimal-transport half of APLOT (method.md section 2, steps 2-5): the cost matrix between a
batch's chosen and rejected responses, and the entropic OT plan from POT's log-domain Sinkhorn.

Two solvers with the same updates. `sinkhorn` is POT's log-domain Sinkhorn on the CPU in float64,
stopping on the marginal error: the default for CPU training and the reference. `DeviceSinkhorn` runs
the same log-domain updates in float32 on the accelerator for a fixed number of iterations, as one fused
Triton kernel (`margins.fused`) or one captured CUDA graph, so an APLOT step never waits for the host
(the default on CUDA; tests hold it to POT). Everything takes detached tensors; non-convergence and non-finite plans are recorded in
`OTResult`, never raised or printed."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from aplot_cli.margins.readout import plan_margin
from aplot_cli.margins.settings import COST_NORMS, SECTION2


@dataclass(frozen=True)
class OTResult:
    """plan: (B, B) float64, rows sum to a = 1/B, columns to b = 1/B (up to `marginal_error`);
    cost: (B, B) float64, the matrix the plan was solved for; converged: the marginal error reached
    `ot_tol` within the iteration budget; finite: the plan holds no NaN/inf; marginal_error: max over
    rows and columns of the L2 marginal violation; iterations: Sinkhorn iterations run; seconds: wall
    time of the solve (host time: on the device path, the launch); warning: POT's warning text, if any.
    From `DeviceSinkhorn` the arrays are device tensors and converged/finite/marginal_error 0-d tensors."""

    plan: np.ndarray | torch.Tensor
    cost: np.ndarray | torch.Tensor
    converged: bool | torch.Tensor
    finite: bool | torch.Tensor
    marginal_error: float | torch.Tensor
    iterations: int
    seconds: float
    warning: str | None = None


def reward_cost(r_c: torch.Tensor, r_r: torch.Tensor) -> torch.Tensor:
    """(B, B) `C_rew[i, j] = 1 - sigmoid(|r_c[i] - r_r[j]|)`, in (0, 0.5]; high when rewards are close."""
    return 1.0 - torch.sigmoid((r_c[:, None] - r_r[None, :]).abs())


def semantic_cost(e_c: torch.Tensor, e_r: torch.Tensor) -> torch.Tensor:
    """(B, B) `C_sem[i, j] = cos(e_c[i], e_r[j])` for embeddings (B, D); high when texts are similar."""
    e_c = torch.nn.functional.normalize(e_c.float(), dim=-1)
    e_r = torch.nn.functional.normalize(e_r.float(), dim=-1)
    return e_c @ e_r.T


def cost_matrix(r_c: torch.Tensor, r_r: torch.Tensor, e_c: torch.Tensor | None = None,
                e_r: torch.Tensor | None = None, w_rew: float = SECTION2.w_rew, w_sem: float = SECTION2.w_sem,
                normalized: bool = False) -> torch.Tensor:
    """(B, B) `C = w_rew * C_rew + w_sem * C_sem` (the semantic term dropped when there are no
    embeddings). Inputs are detached first: the margin is a constant to the optimiser. `normalized`:
    the embeddings are unit length already, so the cosine is a plain product."""
    r_c, r_r = r_c.detach().float(), r_r.detach().float()
    cost = w_rew * reward_cost(r_c, r_r)
    if e_c is not None and e_r is not None and w_sem != 0.0:
        e_c, e_r = e_c.detach().to(r_c.device), e_r.detach().to(r_c.device)
        if normalized:
            cost = torch.addmm(cost, e_c.float(), e_r.float().T, alpha=w_sem)
        else:
            cost = cost + w_sem * semantic_cost(e_c, e_r)
    return cost



def normalize_cost(cost: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """(B, B) the cost rescaled within the batch (method.md section 2b, `cost_norm`): `none` keeps it;
    `minmax` maps it onto [0, 1] (`(C - min) / (max - min)`); `std` centres it and divides by its std.
    Rescaling makes epsilon relative to the cost's range: section 2's cost spans a few hundredths, so
    against epsilon 0.1 its plan stays near uniform. A constant matrix maps to zeros."""
    if mode == "none":
        return cost
    if mode == "minmax":
        low, high = cost.amin(), cost.amax()
        return (cost - low) / (high - low).clamp_min(1e-12)
    if mode == "std":
        return (cost - cost.mean()) / (cost.std(unbiased=False) + 1e-6)
    raise ValueError(f"cost_norm must be one of {', '.join(COST_NORMS)}, got {mode!r}")


def sinkhorn(cost: torch.Tensor | np.ndarray, ot_reg: float = SECTION2.ot_reg, ot_iters: int = SECTION2.ot_iters,
             ot_tol: float = SECTION2.ot_tol) -> OTResult:
    """Entropic OT with uniform marginals a = b = 1/B via `ot.sinkhorn(..., method="sinkhorn_log")`.

    Stops early once POT's marginal check falls under `ot_tol` (checked every 10 iterations)."""
    import ot

    # POT's torch backend on CPU float64: its logsumexp is several times cheaper than scipy's for small B.
    matrix_t = torch.as_tensor(cost).detach().to("cpu", torch.float64)
    n_rows, n_cols = matrix_t.shape
    a = torch.full((n_rows,), 1.0 / n_rows, dtype=torch.float64)
    b = torch.full((n_cols,), 1.0 / n_cols, dtype=torch.float64)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan_t, log = ot.sinkhorn(a, b, matrix_t, ot_reg, method="sinkhorn_log", numItermax=ot_iters, stopThr=ot_tol,
                                  log=True, warn=True)
    seconds = time.perf_counter() - start
    plan, matrix, a, b = plan_t.numpy(), matrix_t.numpy(), a.numpy(), b.numpy()
    finite = bool(np.isfinite(plan).all())
    if finite:
        error = float(max(np.linalg.norm(plan.sum(1) - a), np.linalg.norm(plan.sum(0) - b)))
    else:
        error = float("inf")
    message = "; ".join(str(w.message) for w in caught) or None
    return OTResult(plan=plan, cost=matrix, converged=finite and error <= ot_tol, finite=finite,
                    marginal_error=error, iterations=int(log.get("niter", ot_iters - 1)) + 1,
                    seconds=seconds, warning=message)


# ------------------------------------------------------------------------- the on-device solver


def sinkhorn_log_torch(cost: torch.Tensor, ot_reg: float = SECTION2.ot_reg,
                       ot_iters: int = SECTION2.ot_iters) -> tuple[torch.Tensor, torch.Tensor]:
    """The updates of POT's `sinkhorn_log` (uniform marginals, u = v = 0 at the start, v then u each
    iteration), run for exactly `ot_iters` iterations on `cost`'s device and dtype with no host sync.

    Returns (plan (B, B), marginal error as a 0-d tensor: max over rows and columns of the L2
    marginal violation, inf when the plan is not finite). A fixed iteration count is what lets the
    solve be captured as one CUDA graph; POT's early stop needs a host read every 10 iterations."""
    n_rows, n_cols = cost.shape
    scaled = -cost / ot_reg
    log_a, log_b = -math.log(n_rows), -math.log(n_cols)
    u = cost.new_zeros(n_rows)
    v = cost.new_zeros(n_cols)
    for _ in range(ot_iters):
        v = log_b - torch.logsumexp(scaled + u[:, None], dim=0)
        u = log_a - torch.logsumexp(scaled + v[None, :], dim=1)
    plan = torch.exp(scaled + u[:, None] + v[None, :])
    error = torch.maximum(torch.linalg.vector_norm(plan.sum(1) - 1.0 / n_rows),
                          torch.linalg.vector_norm(plan.sum(0) - 1.0 / n_cols))
    error = torch.where(torch.isfinite(plan).all(), error, torch.full_like(error, float("inf")))
    return plan, error


def _cost_from_rewards(r_c: torch.Tensor, r_r: torch.Tensor, similarity: torch.Tensor | None, w_rew: float,
                       w_sem: float) -> torch.Tensor:
    """`cost_matrix` from rewards and a precomputed cosine matrix (B, B) (what the fused kernel builds)."""
    cost = cost_matrix(r_c, r_r, w_rew=w_rew, w_sem=w_sem)
    return cost if similarity is None else cost + w_sem * similarity.float()


class DeviceSinkhorn:
    """`sinkhorn_log_torch`'s updates in float32 on the accelerator with no host sync, by the cheapest
    route that works: on CUDA one fused Triton kernel (`margins.fused`, B <= 128, when Triton is there),
    else a CUDA graph captured once per batch shape (about a thousand tiny kernels replayed as one
    launch), else eager. A route that fails once (a compile or capture error) is not tried again; the
    error is kept for the manifest. `OTResult` fields from here are tensors on the device (converged,
    finite and marginal_error are 0-d), read by the trainer only when it logs."""

    def __init__(self, ot_reg: float = SECTION2.ot_reg, ot_iters: int = SECTION2.ot_iters,
                 ot_tol: float = SECTION2.ot_tol, graphs: bool = True, fused: bool = True):
        self.ot_reg, self.ot_iters, self.ot_tol, self.graphs, self.fused = ot_reg, ot_iters, ot_tol, graphs, fused
        self._cache: dict[tuple, tuple] = {}
        self.routes: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.setup_seconds = 0.0  # graph captures and kernel compiles, kept out of `OTResult.seconds`
        self._block = 16  # the fused kernel's tile: the largest compiled so far
        self._verified: set[tuple] = set()  # fused variants whose first result matched the eager solve

    @property
    def name(self) -> str:
        """The route most solves took (e.g. `fused`, `cuda-graph`, `eager`)."""
        return max(self.routes, key=self.routes.get) if self.routes else "none"

    def _graph(self, cost: torch.Tensor):
        key = (tuple(cost.shape), str(cost.device))
        if key not in self._cache:
            start = time.perf_counter()
            static = cost.clone()
            side = torch.cuda.Stream(device=cost.device)
            side.wait_stream(torch.cuda.current_stream(cost.device))
            with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graphs asks
                sinkhorn_log_torch(static, self.ot_reg, self.ot_iters)
            torch.cuda.current_stream(cost.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = sinkhorn_log_torch(static, self.ot_reg, self.ot_iters)
            self._cache[key] = (graph, static, outputs)
            self.setup_seconds += time.perf_counter() - start
        return self._cache[key]

    def _fused(self, size_of: torch.Tensor, **inputs):
        """`fused.solve(**inputs)`, or None where the fused route does not apply or has failed (the
        failure is kept and the route not tried again). Each compiled variant's first result is checked
        against the eager solve of the same cost before it is used, so a kernel that compiles but
        computes wrongly on this GPU falls back instead of training on it; that call and the compile
        count as setup. The tile only grows, so a smaller batch reuses the compiled kernel."""
        from aplot_cli.margins import fused

        if not (self.fused and "fused" not in self.errors and fused.available(size_of)):
            return None
        start = time.perf_counter()
        try:
            out = fused.solve(self.ot_reg, self.ot_iters, min_block=self._block, **inputs)
            variant = (out.block, "cost" in inputs, inputs.get("similarity") is not None,
                       inputs.get("margin_from") == "diag")  # what the kernel is compiled for
            if variant not in self._verified:
                if self._agrees_with_eager(out, **inputs):
                    self._verified.add(variant)
                self.setup_seconds += time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - any compile/launch/check failure: use the graph route
            self.errors["fused"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            return None
        self._block = out.block
        return out

    def _agrees_with_eager(self, out, cost: torch.Tensor | None = None, r_c: torch.Tensor | None = None,
                           r_r: torch.Tensor | None = None, similarity: torch.Tensor | None = None,
                           w_rew: float = SECTION2.w_rew, w_sem: float = SECTION2.w_sem,
                           margin_from: str | None = None) -> bool:
        """True when the fused result matches `sinkhorn_log_torch` on the same input (cost, plan and,
        when asked for, the margin); False when the batch is not finite, so nothing can be checked yet;
        raises when they differ. One host sync, once per compiled variant."""
        if cost is None:
            cost = _cost_from_rewards(r_c, r_r, similarity, w_rew, w_sem)
        plan, error = sinkhorn_log_torch(cost.float(), self.ot_reg, self.ot_iters)
        if not bool(torch.isfinite(error)):
            return False
        checks = {"cost": (out.cost, cost), "plan": (out.plan, plan)}
        if margin_from is not None:
            checks["margin"] = (out.raw, plan_margin(plan, cost.float(), margin_from))
        for name, (got, want) in checks.items():
            if not torch.allclose(got, want, rtol=1e-3, atol=1e-5 if name == "margin" else 1e-6):
                gap = float((got - want).abs().nan_to_num(float("inf")).max())
                raise RuntimeError(f"the fused kernel's {name} differs from the eager solve by up to {gap:.3g} "
                                   f"(B {cost.shape[0]}, tile {out.block}); using the next route")
        return True

    def _solve(self, cost: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
        out = self._fused(cost, cost=cost)
        if out is not None:
            return "fused", out.plan, out.error
        if self.graphs and cost.device.type == "cuda" and "cuda-graph" not in self.errors:
            try:
                graph, static, (plan_out, error_out) = self._graph(cost)
                static.copy_(cost)
                graph.replay()
                return "cuda-graph", plan_out.clone(), error_out.clone()
            except RuntimeError as exc:  # capture refused (e.g. a sync inside): run eagerly from now on
                self.errors["cuda-graph"] = str(exc)[:300]
                self._cache.clear()
        return "eager", *sinkhorn_log_torch(cost, self.ot_reg, self.ot_iters)

    def margin(self, r_c: torch.Tensor, r_r: torch.Tensor, similarity: torch.Tensor | None, w_rew: float,
               w_sem: float, margin_from: str) -> tuple[OTResult, torch.Tensor | None]:
        """(the solve, the raw margin (B,) or None) from rewards and a cosine matrix: on the fused route
        the cost, plan and margin come from one launch; on the others the cost is built here and solved by
        `__call__`, and the margin is left to the caller (None)."""
        r_c, r_r = r_c.detach().float(), r_r.detach().float()
        start, setup = time.perf_counter(), self.setup_seconds
        out = self._fused(r_c, r_c=r_c, r_r=r_r, similarity=similarity, w_rew=w_rew, w_sem=w_sem,
                          margin_from=margin_from)
        if out is not None:
            self.routes["fused"] = self.routes.get("fused", 0) + 1
            seconds = time.perf_counter() - start - (self.setup_seconds - setup)
            return self._result(out.plan, out.cost, out.error, seconds), out.raw
        return self(_cost_from_rewards(r_c, r_r, similarity, w_rew, w_sem)), None

    def _result(self, plan: torch.Tensor, cost: torch.Tensor, error: torch.Tensor, seconds: float) -> OTResult:
        finite = torch.isfinite(error)
        return OTResult(plan=plan, cost=cost, converged=finite & (error <= self.ot_tol), finite=finite,
                        marginal_error=error, iterations=self.ot_iters, seconds=seconds, warning=None)

    def __call__(self, cost: torch.Tensor) -> OTResult:
        cost = cost.detach().float().contiguous()
        with torch.no_grad(), torch.autocast(device_type=cost.device.type, enabled=False):
            setup = self.setup_seconds
            start = time.perf_counter()
            route, plan, error = self._solve(cost)
            seconds = time.perf_counter() - start - (self.setup_seconds - setup)
        self.routes[route] = self.routes.get(route, 0) + 1
        return self._result(plan, cost, error, seconds)
