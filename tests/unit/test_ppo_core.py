"""PPO math: GAE against a hand-computed example, the clipped losses, KL, reward placement."""

import math

import pytest
import torch

from aplot_cli.ppo import core


def test_gae_matches_hand_computation_and_ignores_padding():
    # Row 0: three real tokens. gamma=1, lam=0.5, V = (0.5, 0.4, 0.2), r = (0, 0, 1):
    #   t=2: delta = 1 - 0.2 = 0.8;            A = 0.8
    #   t=1: delta = 0 + 0.2 - 0.4 = -0.2;     A = -0.2 + 0.5 * 0.8 = 0.2
    #   t=0: delta = 0 + 0.4 - 0.5 = -0.1;     A = -0.1 + 0.5 * 0.2 = 0.0
    # Row 1: one real token then padding (garbage values there must not leak): A = 1 - 0.3 = 0.7.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [1.0, 5.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.2], [0.3, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv, ret = core.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.2, 0.8], [0.7, 0.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.5, 0.6, 1.0], [1.0, 0.0, 0.0]]))


def test_gae_with_discount():
    # gamma=0.5, lam=1: A_t = sum_k gamma^k r_{t+k} - V_t (Monte Carlo return minus the baseline).
    rewards, values = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.1, 0.2]])
    adv, ret = core.gae(rewards, values, torch.ones(1, 2), gamma=0.5, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[1.0 + 0.5 * 2.0, 2.0]]))
    torch.testing.assert_close(adv, ret - values)


def test_rewards_land_on_last_real_token_never_on_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    logp = torch.zeros(3, 5)
    scores = torch.tensor([2.0, -1.0, 0.5])
    rewards = core.shape_rewards(scores, logp, logp.clone(), mask, kl_coef=0.1)
    expected = torch.zeros(3, 5)
    expected[0, 2], expected[1, 4], expected[2, 0] = 2.0, -1.0, 0.5
    torch.testing.assert_close(rewards, expected)
    assert (rewards[mask == 0] == 0).all()


def test_kl_penalty_on_every_real_token():
    mask = torch.tensor([[1, 1, 0]])
    logp, ref = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -1.0, 0.0]])
    rewards = core.shape_rewards(torch.tensor([0.0]), logp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 0.0]]))


def test_kl_is_zero_when_policy_equals_reference():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 11)
    tokens = torch.randint(0, 11, (2, 4))
    logp = core.logprobs_from_logits(logits, tokens)
    ref = core.logprobs_from_logits(logits.clone(), tokens)
    assert core.kl_per_token(logp, ref, torch.ones(2, 4)).abs().max() == 0


def test_logprobs_and_entropy():
    logits = torch.zeros(1, 1, 4)  # uniform over 4 tokens
    assert core.logprobs_from_logits(logits, torch.tensor([[2]])).item() == pytest.approx(-math.log(4))
    assert core.entropy_from_logits(logits).item() == pytest.approx(math.log(4))
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]])
    assert core.entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_mean_and_whiten_ignore_padding():
    x, mask = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]])
    assert core.masked_mean(x, mask).item() == 2.0
    white = core.masked_whiten(x, mask)
    assert white[0, 2] == 0
    assert core.masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert core.masked_var(white, mask).item() == pytest.approx(1.0, rel=1e-4)
    assert core.masked_mean(x, torch.zeros(1, 3)).item() == 0.0  # empty mask: 0, not NaN


def test_policy_loss_clips_large_ratios():
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    # Equal policies: ratio 1, loss = -mean(A), nothing clipped.
    same = core.policy_loss(old.clone(), old, adv, mask, cliprange=0.2)
    assert same.loss.item() == pytest.approx(-1 / 3)
    assert same.clipfrac == 0.0 and same.extra["approx_kl"] == 0.0
    # ratio e^1 on a positive advantage is capped at 1.2; ratio e^-1 on a negative one at 0.8.
    logp = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    out = core.policy_loss(logp, old, adv, mask, cliprange=0.2)
    assert out.loss.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 3)
    assert out.clipfrac == pytest.approx(2 / 3)
    out.loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 2] == 0 and logp.grad[0, 1] != 0  # clipped: no gradient


def test_policy_loss_pessimistic_branch_keeps_gradient():
    # A positive advantage with a ratio below 1 - eps is NOT clipped (the min picks the unclipped term).
    logp = torch.tensor([[-1.0]], requires_grad=True)
    out = core.policy_loss(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), cliprange=0.2)
    assert out.loss.item() == pytest.approx(-math.exp(-1))
    out.loss.backward()
    assert logp.grad.item() != 0


def test_value_loss_clipping():
    old, ret, mask = torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2)
    # Value moved from 0 to 0.9 (beyond the 0.2 clip): the clipped value 0.2 has the larger error.
    values = torch.tensor([[0.9, 0.1]], requires_grad=True)
    out = core.value_loss(values, old, ret, mask, cliprange_value=0.2)
    assert out.loss.item() == pytest.approx(0.5 * ((1 - 0.2) ** 2 + (1 - 0.1) ** 2) / 2)
    assert out.clipfrac == pytest.approx(0.5)
    out.loss.backward()
    assert values.grad[0, 0] == 0 and values.grad[0, 1] != 0
    # Unmoved values: the plain squared error.
    same = core.value_loss(old.clone(), old, ret, mask)
    assert same.loss.item() == pytest.approx(0.5) and same.clipfrac == 0.0


def test_running_moments_match_full_statistics():
    torch.manual_seed(0)
    a, b = torch.randn(7) * 3 + 1, torch.randn(5) - 2
    moments = core.RunningMoments()
    moments.update(a)
    moments.update(b)
    full = torch.cat([a, b]).double()
    assert moments.mean == pytest.approx(full.mean().item())
    assert moments.std == pytest.approx(full.std(unbiased=False).item())


def test_last_token_index():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert core.last_token_index(mask).tolist() == [1, 2, 0]
