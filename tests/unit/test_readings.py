"""The readings of method.md section 2b (`plan_on`, `cost_norm`, `margin_from`, `margin_norm`) and the
`constant_margin` baseline: which pairs each reading gives the larger margin, the invariants of each
plan, the CPU and device solvers agreeing, and train-rm refusing readings that cannot work."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from aplot_cli import losses, train
from aplot_cli.config import TrainConfig
from aplot_cli.errors import ConfigError
from aplot_cli.margins import AplotMargin, AplotSettings, cost_matrix, normalize_cost, normalize_margin, plan_margin

from builders import hard_easy_batch


def margins(r_c, r_r, e_c, e_r, **settings):
    return AplotMargin(AplotSettings(**settings))(r_c, r_r, e_c, e_r).margin


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hardness_plan_diag_ranks_hard_pairs_above_easy_and_section2_diag_does_not(seed):
    r_c, r_r, e_c, e_r, hard = hard_easy_batch(seed=seed, easy_gap=1.5)
    for cost_norm in ("none", "minmax"):
        m = margins(r_c, r_r, e_c, e_r, plan_on="hardness", cost_norm=cost_norm, margin_from="diag")
        assert m[hard].min() > m[~hard].max(), cost_norm
    section2 = margins(r_c, r_r, e_c, e_r, margin_from="diag")
    assert not section2[hard].min() > section2[~hard].max()
    # on the rescaled cost, section 2's plan moves mass away from hard cells: hard pairs get the smaller diag margin
    rescaled = margins(r_c, r_r, e_c, e_r, cost_norm="minmax", margin_from="diag")
    assert rescaled[hard].mean() < rescaled[~hard].mean()


def test_swapping_chosen_and_rejected_of_the_hard_pairs_keeps_them_hard():
    """Hardness is symmetric in the pair; a reading that keyed on the sign of r_c - r_r would fail here."""
    r_c, r_r, e_c, e_r, hard = hard_easy_batch(easy_gap=1.5)
    r_c2, r_r2 = torch.where(hard, r_r, r_c), torch.where(hard, r_c, r_r)
    m = margins(r_c2, r_r2, e_c, e_r, plan_on="hardness", cost_norm="minmax", margin_from="diag")
    assert m[hard].min() > m[~hard].max()


@pytest.mark.parametrize("plan_on,cost_norm", list(itertools.product(["cost", "hardness"], ["none", "minmax", "std"])))
def test_every_plan_has_uniform_marginals_and_margins_are_finite_b_vectors(plan_on, cost_norm):
    r_c, r_r, e_c, e_r, _ = hard_easy_batch(easy_gap=1.5)
    for margin_from in ("row", "diag", "diag_rel", "own_cost"):
        result = AplotMargin(AplotSettings(plan_on=plan_on, cost_norm=cost_norm, margin_from=margin_from,
                                           ot_iters=2000))(r_c, r_r, e_c, e_r)  # std's range needs more iterations
        plan = np.asarray(result.ot.plan)
        np.testing.assert_allclose(plan.sum(1), np.full(16, 1 / 16), atol=1e-5)
        np.testing.assert_allclose(plan.sum(0), np.full(16, 1 / 16), atol=1e-5)
        assert result.margin.shape == (16,) and torch.isfinite(result.margin).all() and not result.fallback


def test_plan_on_hardness_puts_mass_on_hard_cells_and_cost_takes_it_away():
    r_c, r_r, e_c, e_r, hard = hard_easy_batch(easy_gap=1.5)
    own = {}
    for plan_on in ("cost", "hardness"):
        result = AplotMargin(AplotSettings(plan_on=plan_on, cost_norm="minmax"))(r_c, r_r, e_c, e_r)
        own[plan_on] = 16 * np.diagonal(result.ot.plan)
    h = hard.numpy()
    assert own["hardness"][h].mean() > 5 * own["hardness"][~h].mean()  # mass goes to the hard pairs' own cells
    assert own["cost"][h].mean() < own["cost"][~h].mean() / 5           # and away from them in section 2's plan


def test_cost_norm_minmax_spans_zero_to_one_and_moves_the_plan_off_uniform():
    r_c, r_r, e_c, e_r, _ = hard_easy_batch(easy_gap=1.5)
    r_c, r_r = 0.05 * r_c, 0.05 * r_r  # early in training: rewards have barely spread, the raw cost's range is small
    cost = cost_matrix(r_c, r_r, e_c, e_r)
    scaled = normalize_cost(cost, "minmax")
    assert float(scaled.min()) == pytest.approx(0.0) and float(scaled.max()) == pytest.approx(1.0)
    std = normalize_cost(cost, "std")
    assert float(std.mean()) == pytest.approx(0.0, abs=1e-5) and float(std.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    spread = {}
    for cost_norm in ("none", "minmax"):
        plan = AplotMargin(AplotSettings(cost_norm=cost_norm))(r_c, r_r, e_c, e_r).ot.plan
        spread[cost_norm] = float(np.std(plan * 16 * 16))  # 0 for the uniform plan
    assert spread["minmax"] > 3 * spread["none"]


def test_plan_margin_readings_by_hand():
    plan = torch.tensor([[0.4, 0.1], [0.1, 0.4]], dtype=torch.float64)
    hard = torch.tensor([[1.0, 0.0], [0.5, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(plan_margin(plan, hard, "diag_rel"), torch.tensor([1 - 0.8, 1 - 0.8], dtype=torch.float64))
    torch.testing.assert_close(plan_margin(plan, hard, "diag_rel", "hardness"),
                               torch.tensor([0.8 - 1, 0.8 - 1], dtype=torch.float64))
    torch.testing.assert_close(plan_margin(plan, hard, "own_cost"), torch.tensor([1.0, 0.2], dtype=torch.float64))
    torch.testing.assert_close(plan_margin(plan, hard, "row"), torch.tensor([0.8, 2 * (0.05 + 0.08)], dtype=torch.float64))


def test_own_cost_runs_no_solve_and_is_the_pairs_own_normalised_cost():
    r_c, r_r, e_c, e_r, _ = hard_easy_batch(easy_gap=1.5)
    result = AplotMargin(AplotSettings(margin_from="own_cost", cost_norm="minmax"))(r_c, r_r, e_c, e_r)
    expected = torch.diagonal(normalize_cost(cost_matrix(r_c, r_r, e_c, e_r), "minmax"))
    torch.testing.assert_close(result.margin, expected.float(), rtol=1e-5, atol=1e-6)
    assert result.ot.iterations == 0


def test_margin_norms():
    m = torch.tensor([0.1, 0.4, 0.2, 0.3])
    mm = normalize_margin(m, "minmax", 2.0)
    assert float(mm.min()) == 0.0 and float(mm.max()) == pytest.approx(2.0) and int(mm.argmax()) == 1
    z = normalize_margin(m, "zscore")
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-6) and int(z.argmax()) == 1
    torch.testing.assert_close(normalize_margin(m, "none", 3.0), 3 * m)


@pytest.mark.parametrize("norm", ["zscore", "minmax"])
@pytest.mark.parametrize("solver", ["pot", "torch"])
def test_normalising_fewer_than_three_margins_falls_back_to_zero_and_says_so(norm, solver):
    out = AplotMargin(AplotSettings(margin_norm=norm, ot_solver=solver))(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5]))
    assert torch.equal(out.margin, torch.zeros(2)) and bool(out.fallback)


@pytest.mark.parametrize("settings", [
    dict(plan_on="hardness", cost_norm="minmax", margin_from="diag"),
    dict(plan_on="hardness", margin_from="row", margin_norm="zscore"),
    dict(plan_on="cost", cost_norm="std", margin_from="diag_rel", margin_norm="minmax", margin_scale=2.0),
    dict(margin_from="own_cost", cost_norm="minmax"),
])
def test_device_solver_matches_pot_for_the_readings(settings):
    r_c, r_r, e_c, e_r, _ = hard_easy_batch(easy_gap=1.5)
    pot = AplotMargin(AplotSettings(**settings))(r_c, r_r, e_c, e_r)
    dev = AplotMargin(AplotSettings(**settings, ot_solver="torch"))(r_c, r_r, e_c, e_r, normalized=True)
    torch.testing.assert_close(dev.margin, pot.margin, rtol=1e-4, atol=1e-4)
    assert float(dev.cost_mean) == pytest.approx(pot.cost_mean, rel=1e-5)


def test_constant_margin_loss_is_shifted_bt():
    spec = losses.parse_losses("constant_margin")
    assert spec.constant_margin and spec.base == "bt" and spec.name == "bt+constant_margin"
    r_c, r_r = torch.tensor([0.3, -1.0]), torch.tensor([0.1, 0.5])
    result = losses.reward_loss(spec, r_c, r_r, torch.full((2,), 0.5))
    expected = -torch.nn.functional.logsigmoid(r_c - r_r - 0.5).mean()
    torch.testing.assert_close(result.loss, expected)


@pytest.mark.parametrize("changes,named", [
    (dict(loss=("aplot",), margin_norm="zscore", batch_size=2), "batch_size"),
    (dict(loss=("aplot", "constant_margin")), "constant_margin"),
    (dict(loss=("constant_margin",), constant_margin=float("inf")), "constant_margin"),
])
def test_train_rm_refuses_readings_that_cannot_work(changes, named):
    with pytest.raises(ConfigError) as info:
        train.validate(TrainConfig(**changes), has_embeddings=True)
    assert named in str(info.value)


def test_hardness_reading_trains_and_is_recorded(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    from tests.unit.test_train import tiny_cfg

    cfg = tiny_cfg(tiny_bert_dir, plan_on="hardness", cost_norm="minmax", margin_from="diag",
                   semantic_source="none", max_steps=2)
    manifest = json.loads(train.run(cfg, synthetic_pairs_dir, tmp_path / "rm").read_text())
    assert manifest["config"]["plan_on"] == "hardness" and manifest["config"]["margin_from"] == "diag"
    assert manifest["config"]["cost_norm"] == "minmax"
    assert manifest["diagnostics"]["ot"]["solves"] == 2 and manifest["diagnostics"]["ot"]["fallbacks"] == 0
    import pandas as pd

    recorded = pd.read_parquet(tmp_path / "rm" / "margins.parquet")
    step1 = recorded[recorded.step == 1]
    r_c = torch.tensor(step1.reward_chosen.to_numpy())
    r_r = torch.tensor(step1.reward_rejected.to_numpy())
    again = margins(r_c, r_r, None, None, plan_on="hardness", cost_norm="minmax", margin_from="diag", w_sem=0.0)
    np.testing.assert_allclose(step1.margin.to_numpy(), again.numpy(), rtol=1e-4, atol=1e-5)
