"""APLOT's OT margin: plan marginals, hard vs easy pairs, shapes, non-convergence and NaN handling."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from aplot_cli.margins import AplotMargin, AplotSettings, cost_matrix, gather_rows, plan_margin, sinkhorn, zscore


def constructed_batch(n_hard=6, n_easy=6, dim=16, seed=0):
    """Hard pairs: chosen and rejected rewards nearly equal and near zero, near-identical texts from one
    topic. Easy pairs: a wide reward gap (+3 vs -3) and unrelated texts."""
    gen = torch.Generator().manual_seed(seed)
    n = n_hard + n_easy
    r_c = torch.cat([0.3 * torch.randn(n_hard, generator=gen), 3 + 0.3 * torch.randn(n_easy, generator=gen)])
    r_r = torch.cat([r_c[:n_hard] - 0.1, -3 + 0.3 * torch.randn(n_easy, generator=gen)])
    unit = torch.nn.functional.normalize
    topic = unit(torch.randn(dim, generator=gen), dim=0)
    e_c = unit(0.3 * torch.randn(n, dim, generator=gen) + topic, dim=1)
    e_r = torch.cat([unit(e_c[:n_hard] + 0.05 * torch.randn(n_hard, dim, generator=gen), dim=1),
                     unit(torch.randn(n_easy, dim, generator=gen), dim=1)])
    return r_c, r_r, e_c, e_r, torch.arange(n) < n_hard


def test_cost_matrix_values():
    r_c, r_r = torch.tensor([0.0, 2.0]), torch.tensor([0.0, 1.0])
    e = torch.eye(2)
    cost = cost_matrix(r_c, r_r, e, e, w_rew=0.9, w_sem=0.1)
    assert cost.shape == (2, 2)
    assert cost[0, 0].item() == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    assert cost[1, 0].item() == pytest.approx(0.9 * (1 - torch.sigmoid(torch.tensor(2.0)).item()))
    assert cost[0, 1].item() == pytest.approx(0.9 * (1 - torch.sigmoid(torch.tensor(1.0)).item()))


@pytest.mark.parametrize("batch", [1, 5, 32])
def test_plan_marginals_sum_to_one_over_b(batch):
    gen = torch.Generator().manual_seed(batch)
    cost = cost_matrix(torch.randn(batch, generator=gen), torch.randn(batch, generator=gen))
    result = sinkhorn(cost, ot_reg=0.1, ot_iters=50)
    assert result.plan.shape == (batch, batch)
    np.testing.assert_allclose(result.plan.sum(axis=1), np.full(batch, 1 / batch), atol=1e-5)
    np.testing.assert_allclose(result.plan.sum(axis=0), np.full(batch, 1 / batch), atol=1e-5)
    assert result.converged and result.finite and result.marginal_error <= 1e-6
    assert result.seconds >= 0 and result.iterations >= 1


def test_hard_pairs_get_larger_margins_than_easy():
    r_c, r_r, e_c, e_r, hard = constructed_batch()
    for settings in (AplotSettings(), AplotSettings(margin_from="diag"), AplotSettings(w_sem=0.0)):
        result = AplotMargin(settings)(r_c, r_r, e_c, e_r)
        assert result.margin[hard].min() > result.margin[~hard].max(), settings
    z = AplotMargin(AplotSettings(margin_norm="zscore"))(r_c, r_r, e_c, e_r).margin
    assert (z[hard] > 0).all() and (z[~hard] < 0).all()


def test_margin_shape_is_b_and_constant():
    r_c = torch.randn(7, requires_grad=True)
    r_r = torch.randn(7, requires_grad=True)
    result = AplotMargin(AplotSettings())(r_c, r_r)
    assert result.margin.shape == (7,) and not result.margin.requires_grad
    assert torch.isfinite(result.margin).all()


def test_plan_margin_row_and_diag_by_hand():
    plan = torch.tensor([[0.4, 0.1], [0.1, 0.4]], dtype=torch.float64)
    cost = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    assert torch.allclose(plan_margin(plan, cost, "row"), torch.tensor([2 * (0.4 + 0.2), 2 * (0.3 + 1.6)],
                                                                       dtype=torch.float64))
    assert torch.allclose(plan_margin(plan, cost, "diag"), torch.tensor([2 * 0.4, 2 * 1.6], dtype=torch.float64))
    z = zscore(torch.tensor([1.0, 2.0, 3.0]), scale=2.0)
    assert z.mean().abs() < 1e-6 and z[2] > 0 > z[0]


def test_nonconvergence_is_recorded_not_raised():
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(16, 16, generator=gen) * 5
    result = sinkhorn(cost, ot_reg=0.01, ot_iters=1, ot_tol=1e-12)
    assert not result.converged and result.finite
    assert result.warning and "converge" in result.warning


def test_nan_never_reaches_the_margin():
    r_c = torch.tensor([0.0, float("nan"), 1.0])
    result = AplotMargin(AplotSettings())(r_c, torch.zeros(3))
    assert result.fallback and torch.equal(result.margin, torch.zeros(3))
    assert result.stats["fallback"] == 1.0 and result.stats["converged_frac"] == 0.0


def test_warmup_gives_zero_margin():
    margin = AplotMargin(AplotSettings(margin_warmup_steps=3))
    assert torch.equal(margin(torch.randn(4), torch.randn(4), step=2).margin, torch.zeros(4))
    assert margin(torch.randn(4), torch.randn(4), step=3).margin.abs().sum() > 0


def test_gather_rows_without_distributed_is_identity():
    x = torch.randn(3, 2)
    gathered, offset = gather_rows(x)
    assert gathered is x and offset == 0


# ------------------------------------------------------------------ the on-device (torch) solver

from aplot_cli.margins import DeviceSinkhorn, device_stats, sinkhorn_log_torch  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("batch", [1, 5, 32])
def test_torch_solver_matches_pot(batch):
    """Same updates as POT's sinkhorn_log: with POT's early stop switched off (tol 0) the plans agree."""
    gen = torch.Generator().manual_seed(batch)
    r_c, r_r = torch.randn(batch, generator=gen), torch.randn(batch, generator=gen)
    e = torch.nn.functional.normalize(torch.randn(2, batch, 8, generator=gen), dim=-1)
    cost = cost_matrix(r_c, r_r, e[0], e[1])
    reference = sinkhorn(cost, ot_reg=0.1, ot_iters=50, ot_tol=0.0)
    plan64, error64 = sinkhorn_log_torch(cost.double(), ot_reg=0.1, ot_iters=50)
    np.testing.assert_allclose(plan64.numpy(), reference.plan, rtol=1e-10, atol=1e-14)
    plan32, error32 = sinkhorn_log_torch(cost.float(), ot_reg=0.1, ot_iters=50)
    np.testing.assert_allclose(plan32.numpy(), reference.plan, rtol=1e-4, atol=1e-7)
    assert error32.dim() == 0 and float(error32) < 1e-6


def test_torch_solver_result_is_lazy_and_records_nonconvergence():
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(16, 16, generator=gen) * 5
    result = DeviceSinkhorn(ot_reg=0.01, ot_iters=1, ot_tol=1e-12)(cost)
    assert isinstance(result.converged, torch.Tensor) and not bool(result.converged) and bool(result.finite)
    assert result.iterations == 1


@pytest.mark.parametrize("settings", [AplotSettings(), AplotSettings(margin_from="diag"),
                                      AplotSettings(margin_norm="zscore", margin_scale=2.0), AplotSettings(w_sem=0.0)])
def test_torch_solver_margins_equal_pot_margins(settings):
    r_c, r_r, e_c, e_r, hard = constructed_batch()
    pot = AplotMargin(settings)(r_c, r_r, e_c, e_r)
    dev = AplotMargin(AplotSettings(**{**settings.__dict__, "ot_solver": "torch"}))(r_c, r_r, e_c, e_r)
    assert dev.margin.dtype == torch.float32 and dev.margin.shape == (12,)
    torch.testing.assert_close(dev.margin, pot.margin, rtol=1e-4, atol=1e-5)
    assert dev.margin[hard].min() > dev.margin[~hard].max() or settings.margin_norm == "zscore"
    stats = device_stats([dev])
    assert float(stats["converged_frac"]) == 1.0 and float(stats["fallback"]) == 0.0
    for key, value in pot.stats.items():
        if key not in ("seconds", "iterations"):
            assert float(stats[key]) == pytest.approx(value, rel=1e-3, abs=1e-5), key
    normalized = AplotMargin(AplotSettings(**{**settings.__dict__, "ot_solver": "torch"}))(r_c, r_r, e_c, e_r,
                                                                                        normalized=True)
    torch.testing.assert_close(normalized.margin, dev.margin, rtol=1e-5, atol=1e-6)  # e_c, e_r are unit length


def test_device_stats_average_steps_of_different_batch_sizes():
    """The log's per-step means over an interval whose last batch is smaller equal step-by-step stats."""
    margin = AplotMargin(AplotSettings(ot_solver="torch"))
    gen = torch.Generator().manual_seed(1)
    results = [margin(torch.randn(n, generator=gen), torch.randn(n, generator=gen)) for n in (8, 8, 5)]
    together = device_stats(results)
    alone = [device_stats([r]) for r in results]
    for key in ("margin_mean", "margin_std", "margin_spread", "cost_mean", "converged_frac", "marginal_error"):
        expected = sum(float(a[key]) for a in alone) / 3
        assert float(together[key]) == pytest.approx(expected, rel=1e-5, abs=1e-7), key
    assert float(alone[2]["margin_std"]) == pytest.approx(float(results[2].full.std(unbiased=False)), rel=1e-5)


def test_torch_solver_nan_never_reaches_the_margin():
    r_c = torch.tensor([0.0, float("nan"), 1.0])
    result = AplotMargin(AplotSettings(ot_solver="torch"))(r_c, torch.zeros(3))
    assert bool(result.fallback) and torch.equal(result.margin, torch.zeros(3))
    stats = device_stats([result])
    assert float(stats["fallback"]) == 1.0 and float(stats["converged_frac"]) == 0.0


def test_auto_solver_is_pot_on_cpu_and_torch_on_cuda():
    margin = AplotMargin(AplotSettings())
    assert margin.solver_for(torch.device("cpu")) == "pot"
    assert margin.solver_for(torch.device("cuda")) == "torch"
    assert AplotMargin(AplotSettings(ot_solver="pot")).solver_for(torch.device("cuda")) == "pot"
    with pytest.raises(ValueError):
        AplotMargin(AplotSettings(ot_solver="sinkhorn"))


@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False])
def test_cuda_solver_routes_match_pot(fused):
    """On CUDA: the fused Triton kernel (when Triton is there) or the captured graph (one per shape)."""
    solver = DeviceSinkhorn(ot_reg=0.1, ot_iters=50, ot_tol=1e-6, fused=fused)
    for batch in (32, 32, 7, 32, 1):
        gen = torch.Generator().manual_seed(batch)
        cost = cost_matrix(torch.randn(batch, generator=gen), torch.randn(batch, generator=gen))
        result = solver(cost.cuda())
        reference = sinkhorn(cost, ot_reg=0.1, ot_iters=50, ot_tol=0.0)
        np.testing.assert_allclose(result.plan.cpu().numpy(), reference.plan, rtol=1e-4, atol=1e-7)
        assert bool(result.converged)
    assert not solver.errors, solver.errors
    if fused:
        assert solver.routes == {"fused": 5} and solver._block == 32  # batches of 7 and 1 reuse the B 32 kernel
    else:
        assert solver.routes == {"cuda-graph": 5} and len(solver._cache) == 3


@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("settings", [AplotSettings(), AplotSettings(margin_from="diag"),
                                      AplotSettings(margin_norm="zscore", margin_scale=2.0)])
def test_cuda_margin_equals_pot_margin(settings):
    """The whole APLOT margin on CUDA (fused: cost, plan and margin in one launch) equals the POT path."""
    r_c, r_r, e_c, e_r, hard = constructed_batch()
    pot = AplotMargin(settings)(r_c, r_r, e_c, e_r)
    margin = AplotMargin(AplotSettings(**{**settings.__dict__, "ot_solver": "torch"}))
    dev = margin(r_c.cuda(), r_r.cuda(), e_c.cuda(), e_r.cuda(), normalized=True)
    torch.testing.assert_close(dev.margin.cpu(), pot.margin, rtol=1e-4, atol=1e-5)
    assert not margin.device_solver.errors, margin.device_solver.errors


def test_fused_route_is_checked_before_use_and_reuses_its_tile(monkeypatch):
    """The fused route's bookkeeping on the CPU, with a stand-in for the kernel: a first batch that is not
    finite is used unchecked (the margin falls back anyway) and the next finite one is checked; the tile
    only grows; a result that disagrees with the eager solve is refused and the next route used."""
    import dataclasses

    from aplot_cli.margins import fused
    from aplot_cli.margins.ot import sinkhorn_log_torch

    calls = []

    def stand_in(ot_reg, ot_iters, cost=None, min_block=16, **_):
        block = max(16, min_block, 1 << (max(cost.shape) - 1).bit_length())
        calls.append(block)
        plan, error = sinkhorn_log_torch(cost.float(), ot_reg, ot_iters)
        return fused.FusedSolve(plan=plan, cost=cost, raw=cost.new_zeros(cost.shape[0]), error=error, block=block)

    monkeypatch.setattr(fused, "available", lambda tensor: True)
    monkeypatch.setattr(fused, "solve", stand_in)
    gen = torch.Generator().manual_seed(0)
    costs = [cost_matrix(torch.randn(n, generator=gen), torch.randn(n, generator=gen)) for n in (5, 33, 12)]
    solver = DeviceSinkhorn(0.1, 50)
    assert not bool(solver(torch.tensor([[0.0, float("nan")], [0.1, 0.2]])).finite)
    assert solver._verified == set()
    for cost in costs:
        np.testing.assert_allclose(solver(cost).plan.numpy(), sinkhorn(cost, 0.1, 50, ot_tol=0.0).plan, rtol=1e-4,
                                   atol=1e-7)
    assert calls == [16, 16, 64, 64] and solver._block == 64  # 12 pairs reuse the 64 tile
    assert solver._verified == {(16, True, False, False), (64, True, False, False)}
    assert solver.routes == {"fused": 4} and not solver.errors

    monkeypatch.setattr(fused, "solve", lambda *a, **k: dataclasses.replace(out := stand_in(*a, **k),
                                                                              plan=out.plan * 1.01))
    broken = DeviceSinkhorn(0.1, 50)
    result = broken(costs[0])
    np.testing.assert_allclose(result.plan.numpy(), sinkhorn(costs[0], 0.1, 50, ot_tol=0.0).plan, rtol=1e-4, atol=1e-7)
    assert broken.routes == {"eager": 1} and "plan differs from the eager solve" in broken.errors["fused"]
    broken(costs[1])
    assert broken.routes == {"eager": 2}  # not tried again


TRITON = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (CUDA torch builds have it)")


@TRITON
def test_fused_kernel_matches_pot_in_triton_interpreter():
    """The Triton kernel's logic, run by Triton's CPU interpreter in a fresh process (no GPU needed)."""
    code = """
import numpy as np, torch
from aplot_cli.margins import cost_matrix, sinkhorn
from aplot_cli.margins.fused import sinkhorn_log_fused
for batch in (1, 5, 17, 32):
    gen = torch.Generator().manual_seed(batch)
    e = torch.nn.functional.normalize(torch.randn(2, batch, 8, generator=gen), dim=-1)
    cost = cost_matrix(torch.randn(batch, generator=gen), torch.randn(batch, generator=gen), e[0], e[1])
    plan, error = sinkhorn_log_fused(cost, 0.1, 50)
    np.testing.assert_allclose(plan.numpy(), sinkhorn(cost, 0.1, 50, ot_tol=0.0).plan, rtol=1e-4, atol=1e-7)
    assert float(error) < 1e-6
plan, error = sinkhorn_log_fused(torch.tensor([[0.0, float("nan")], [0.1, 0.2]]), 0.1, 50)
assert float(error) == float("inf")
# the whole margin from rewards in one launch (cost, plan, row/diag margin) equals the POT path
from aplot_cli.margins import AplotMargin, AplotSettings, device_stats
gen = torch.Generator().manual_seed(0)
for n in (12, 33):
    r_c, r_r = 2 * torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    e = torch.nn.functional.normalize(torch.randn(2, n, 16, generator=gen), dim=-1)
    for settings in (AplotSettings(), AplotSettings(margin_from="diag"), AplotSettings(w_sem=0.0),
                     AplotSettings(margin_norm="zscore", margin_scale=2.0)):
        pot = AplotMargin(settings)(r_c, r_r, e[0], e[1])
        margin = AplotMargin(AplotSettings(**{**settings.__dict__, "ot_solver": "torch"}))
        for normalized in (True, False):
            dev = margin(r_c, r_r, e[0], e[1], normalized=normalized)
            torch.testing.assert_close(dev.margin, pot.margin, rtol=1e-4, atol=1e-5)
            stats = device_stats([dev])
            for key in ("margin_mean", "margin_spread", "cost_mean", "converged_frac"):
                assert abs(float(stats[key]) - pot.stats[key]) < 1e-4, (key, settings)
        assert margin.device_solver.routes == {"fused": 2}, margin.device_solver.routes
nan = AplotMargin(AplotSettings(ot_solver="torch"))(torch.tensor([0.0, float("nan"), 1.0]), torch.zeros(3))
assert bool(nan.fallback) and torch.equal(nan.margin, torch.zeros(3))
# an epoch's smaller last batch reuses the tile compiled (and checked) for the larger one
import dataclasses
from aplot_cli.margins import DeviceSinkhorn, fused
solver = DeviceSinkhorn(0.1, 50)
for n in (33, 12):
    gen = torch.Generator().manual_seed(n)
    cost = cost_matrix(torch.randn(n, generator=gen), torch.randn(n, generator=gen))
    np.testing.assert_allclose(solver(cost).plan.numpy(), sinkhorn(cost, 0.1, 50, ot_tol=0.0).plan, rtol=1e-4, atol=1e-7)
assert solver._block == 64 and solver.routes == {"fused": 2} and len(solver._verified) == 1, solver._verified
# a kernel that runs but computes wrongly is caught on its first result and the next route is used
real = fused.solve
fused.solve = lambda *args, **kwargs: dataclasses.replace(out := real(*args, **kwargs), plan=out.plan * 1.01)
broken = DeviceSinkhorn(0.1, 50)
np.testing.assert_allclose(broken(cost).plan.numpy(), sinkhorn(cost, 0.1, 50, ot_tol=0.0).plan, rtol=1e-4, atol=1e-7)
assert broken.routes == {"eager": 1} and "plan differs from the eager solve" in broken.errors["fused"], broken.errors
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
