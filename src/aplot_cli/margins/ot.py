"""The optimal-transport half of APLOT (method.md section 2, steps 2-5): the cost matrix between a
batch's chosen and rejected responses, and the entropic OT plan from POT's log-domain Sinkhorn.

Everything here takes detached tensors and returns plain results; the plan is solved on the CPU in
float64 (B is a batch, at most a few hundred, so this is microseconds of work and never touches the
accelerator's stream). Non-convergence and non-finite plans are recorded in `OTResult`, never raised
or printed."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class OTResult:
    """plan: (B, B) float64, rows sum to a = 1/B, columns to b = 1/B (up to `marginal_error`);
    cost: (B, B) float64, the matrix the plan was solved for; converged: the marginal error reached
    `tol` within the iteration budget; finite: the plan holds no NaN/inf; marginal_error: max over
    rows and columns of the L2 marginal violation; iterations: Sinkhorn iterations run; seconds: wall
    time of the solve; warning: POT's warning text, if any."""

    plan: np.ndarray
    cost: np.ndarray
    converged: bool
    finite: bool
    marginal_error: float
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
                e_r: torch.Tensor | None = None, w_rew: float = 0.9, w_sem: float = 0.1) -> torch.Tensor:
    """(B, B) `C = w_rew * C_rew + w_sem * C_sem` (the semantic term dropped when there are no
    embeddings). Inputs are detached first: the margin is a constant to the optimiser."""
    r_c, r_r = r_c.detach().float(), r_r.detach().float()
    cost = w_rew * reward_cost(r_c, r_r)
    if e_c is not None and e_r is not None and w_sem != 0.0:
        cost = cost + w_sem * semantic_cost(e_c.detach().to(r_c.device), e_r.detach().to(r_c.device))
    return cost


def sinkhorn(cost: torch.Tensor | np.ndarray, reg: float = 0.1, num_iter: int = 50, tol: float = 1e-6) -> OTResult:
    """Entropic OT with uniform marginals a = b = 1/B via `ot.sinkhorn(..., method="sinkhorn_log")`.

    Stops early once POT's marginal check falls under `tol` (checked every 10 iterations)."""
    import ot

    # POT's torch backend on CPU float64: its logsumexp is several times cheaper than scipy's for small B.
    matrix_t = torch.as_tensor(cost).detach().to("cpu", torch.float64)
    n_rows, n_cols = matrix_t.shape
    a = torch.full((n_rows,), 1.0 / n_rows, dtype=torch.float64)
    b = torch.full((n_cols,), 1.0 / n_cols, dtype=torch.float64)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan_t, log = ot.sinkhorn(a, b, matrix_t, reg, method="sinkhorn_log", numItermax=num_iter, stopThr=tol,
                                  log=True, warn=True)
    seconds = time.perf_counter() - start
    plan, matrix, a, b = plan_t.numpy(), matrix_t.numpy(), a.numpy(), b.numpy()
    finite = bool(np.isfinite(plan).all())
    if finite:
        error = float(max(np.linalg.norm(plan.sum(1) - a), np.linalg.norm(plan.sum(0) - b)))
    else:
        error = float("inf")
    message = "; ".join(str(w.message) for w in caught) or None
    return OTResult(plan=plan, cost=matrix, converged=finite and error <= tol, finite=finite,
                    marginal_error=error, iterations=int(log.get("niter", num_iter - 1)) + 1,
                    seconds=seconds, warning=message)
