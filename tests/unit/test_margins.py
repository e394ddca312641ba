"""APLOT's OT margin: plan marginals, hard vs easy pairs, shapes, non-convergence and NaN handling."""

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
    result = sinkhorn(cost, reg=0.1, num_iter=50)
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
    result = sinkhorn(cost, reg=0.01, num_iter=1, tol=1e-12)
    assert not result.converged and result.finite
    assert result.warning and "converge" in result.warning


def test_nan_never_reaches_the_margin():
    r_c = torch.tensor([0.0, float("nan"), 1.0])
    result = AplotMargin(AplotSettings())(r_c, torch.zeros(3))
    assert result.fallback and torch.equal(result.margin, torch.zeros(3))
    assert result.stats["fallback"] == 1.0 and result.stats["converged_frac"] == 0.0


def test_warmup_gives_zero_margin():
    margin = AplotMargin(AplotSettings(warmup_steps=3))
    assert torch.equal(margin(torch.randn(4), torch.randn(4), step=2).margin, torch.zeros(4))
    assert margin(torch.randn(4), torch.randn(4), step=3).margin.abs().sum() > 0


def test_gather_rows_without_distributed_is_identity():
    x = torch.randn(3, 2)
    gathered, offset = gather_rows(x)
    assert gathered is x and offset == 0
