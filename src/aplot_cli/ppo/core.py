"""PPO math for language models, pure tensor functions (no models, no I/O).

Notation for one batch of B rollouts with T response tokens each (right-padded after the first EOS):
`mask` (B, T) is 1 on real response tokens (up to and including EOS) and 0 on padding; the prompt is
never part of these tensors. `logp`, `ref_logp` (B, T) are log-probabilities of the sampled tokens under
the policy and the frozen reference; `values` (B, T) is V(s_t), the value of the state *before* token t.

Per-token reward (the standard RLHF shaping, Ziegler et al. 2019; Ouyang et al. 2022):

    r_t = -beta * (logp_t - ref_logp_t)             (k1 KL estimator, every real token)
    r_T' += score                                   (T' = last real token of the response)

Generalised advantage estimation (Schulman et al. 2016), with V(s_{T'+1}) = 0:

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * A_{t+1},      returns R_t = A_t + V_t

Clipped surrogate losses (Schulman et al. 2017), ratio rho_t = exp(logp_t - logp_old_t):

    L_pg = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1-eps, 1+eps))
    L_vf = 1/2 mean_t max((V_t - R_t)^2, (clip(V_t, V_old_t - eps_v, V_old_t + eps_v) - R_t)^2)

All means are over real tokens only (`masked_mean`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token]: (B, T, V), (B, T) -> (B, T)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - sum softmax(z) z per position: (B, T, V) -> (B, T)."""
    logits = logits.float()
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * m) / sum(m), over everything or along `dim` (an all-zero mask gives 0, not NaN)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the real entries of x (Bessel-corrected when `unbiased` and more than one entry)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the real entries; padding is returned as 0.
    With `shift_mean=False` the mean is added back (scale only)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row: (B, T) -> (B,) (rows with no real token give 0)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).max(dim=1).values


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k1 estimator of KL(pi || pi_ref) per sampled token, log pi - log pi_ref, zero on padding."""
    return (logp - ref_logp) * mask.to(logp.dtype)


def shape_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """Per-token rewards (B, T): -kl_coef * KL on every real token, plus the sequence score (B,) on the
    last real response token. Padding gets 0."""
    rewards = -kl_coef * kl_per_token(logp, ref_logp, mask)
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards * mask.to(rewards.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (both (B, T)), computed right to left. Padding positions carry zero
    reward and value, so the step after the last real token is terminal (V = 0)."""
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        advantages[:, t] = next_adv
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@dataclass(frozen=True)
class LossTerms:
    """One loss (scalar tensor) and its diagnostics (floats)."""

    loss: torch.Tensor
    clipfrac: float
    extra: dict[str, float]


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float = 0.2) -> LossTerms:
    """Clipped surrogate L_pg (see the module docstring); reports the clip fraction and the
    approximate KL between the old and new policy, 1/2 mean (logp - old_logp)^2."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask).item()
        approx_kl = 0.5 * masked_mean((logp - old_logp) ** 2, mask).item()
        ratio_mean = masked_mean(ratio, mask).item()
    return LossTerms(loss, clipfrac, {"approx_kl": approx_kl, "ratio": ratio_mean})


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float = 0.2) -> LossTerms:
    """Clipped value loss L_vf (see the module docstring); reports the fraction of tokens where the
    clipped branch is the larger one."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask).item()
    return LossTerms(loss, clipfrac, {})


class RunningMoments:
    """Running mean and std of scores across updates (Chan et al. parallel update), for
    `reward_norm=running`: s' = (s - mean) / std with the statistics of every score seen so far."""

    def __init__(self, mean: float = 0.0, var: float = 1.0, count: float = 1e-24):
        self.mean, self.var, self.count = mean, var, count

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        batch_mean, batch_var, n = x.mean().item(), x.var(unbiased=False).item(), x.numel()
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta ** 2 * self.count * n / total) / total
        self.count = total

    @property
    def std(self) -> float:
        return max(self.var, 1e-8) ** 0.5

    def state(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}
