"""Each loss against hand-computed values, and the shape guards (method.md section 3)."""

import math

import pytest
import torch

from aplot_cli import losses
from aplot_cli.errors import ConfigError


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def softplus(x):
    return math.log1p(math.exp(x))  # -log sigmoid(-x)


def test_equal_rewards_zero_margin_give_log2():
    r = t(0.3, -1.2, 2.0)
    assert torch.allclose(losses.bt(r, r), torch.full((3,), math.log(2), dtype=torch.float64))
    assert torch.allclose(losses.label_smooth(r, r, 0.1), torch.full((3,), math.log(2), dtype=torch.float64))
    result = losses.reward_loss(losses.parse_losses("aplot"), r, r, torch.zeros(3, dtype=torch.float64))
    assert result.loss.item() == pytest.approx(math.log(2))


def test_bt_and_margin_hand_values():
    assert losses.bt(t(1.0), t(0.0)).item() == pytest.approx(softplus(-1.0))          # 0.31326
    assert losses.bt(t(1.0), t(0.0), t(0.5)).item() == pytest.approx(softplus(-0.5))  # 0.47408
    assert losses.bt(t(1.0), t(0.0), t(-1.0)).item() == pytest.approx(softplus(-2.0))


def test_label_smooth_hand_value():
    expected = 0.9 * softplus(-1.0) + 0.1 * softplus(1.0)  # 0.41326
    assert losses.label_smooth(t(1.0), t(0.0), 0.1).item() == pytest.approx(expected)


def test_focal_hand_value_and_gamma_zero_is_bt():
    sig_neg = 1 / (1 + math.exp(1.0))  # 1 - sigmoid(1)
    assert losses.focal(t(1.0), t(0.0), 2.0).item() == pytest.approx(sig_neg ** 2 * softplus(-1.0))
    r_c, r_r = t(0.5, -2.0, 3.0), t(0.0, 1.0, 3.5)
    assert torch.allclose(losses.focal(r_c, r_r, 0.0), losses.bt(r_c, r_r))
    # large |d| stays finite
    assert torch.isfinite(losses.focal(t(80.0, -80.0), t(-80.0, 80.0), 2.0)).all()


def test_center_hand_value_and_composition():
    spec = losses.parse_losses(("aplot", "center"))
    assert spec == losses.LossSpec(base="bt", aplot=True, center=True)
    r_c, r_r, m = t(1.0, 2.0), t(3.0, -1.0), t(0.1, 0.2)
    result = losses.reward_loss(spec, r_c, r_r, m, eta=0.01)
    penalty = 0.01 * ((4.0 ** 2 + 1.0 ** 2) / 2)
    base = (softplus(-(1 - 3 - 0.1)) + softplus(-(2 + 1 - 0.2))) / 2
    assert result.penalty.item() == pytest.approx(penalty)
    assert result.loss.item() == pytest.approx(base + penalty)
    assert result.accuracy == 0.5


def test_margin_shape_never_broadcasts():
    r_c, r_r = torch.zeros(4), torch.zeros(4)
    with pytest.raises(ValueError, match="margin must be shape"):
        losses.bt(r_c, r_r, torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        losses.bt(r_c[:, None], r_r)
    result = losses.reward_loss(losses.parse_losses("aplot"), r_c, r_r, torch.ones(4))
    assert result.per_pair.shape == (4,) and result.margin.shape == (4,)


def test_margin_is_a_constant_to_the_optimiser():
    r_c = torch.tensor([0.5, 1.0], requires_grad=True)
    r_r = torch.tensor([0.0, 0.2], requires_grad=True)
    margin = (r_c * 2).sum().expand(2)  # depends on r_c; must be detached by reward_loss
    losses.reward_loss(losses.parse_losses("aplot"), r_c, r_r, margin).loss.backward()
    d = (r_c - r_r - margin).detach()
    assert torch.allclose(r_c.grad, -torch.sigmoid(-d) / 2)


def test_parse_losses_errors_and_names():
    assert losses.parse_losses("bt").name == "bt"
    assert losses.parse_losses("focal+aplot+center").name == "focal+aplot+center"
    assert losses.parse_losses("margin").dataset_margin
    with pytest.raises(ConfigError, match="do not compose"):
        losses.parse_losses("focal+label_smooth")
    with pytest.raises(ConfigError, match="unknown loss"):
        losses.parse_losses("aplott")
