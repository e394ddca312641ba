"""Best-of-n math, pure numpy (no models, no I/O): the unbiased best-of-n estimator, its oracle and
random-pick references, the analytic KL, and a bootstrap over prompts.

For one prompt with N sampled responses, scores s (N,) from a selector and gold labels g (N,) in {0, 1}:
best-of-n draws n of the N responses uniformly without replacement and keeps the highest-scoring one.
Its expected gold success, over all C(N, n) subsets, is exact (Nakano et al. 2021, WebGPT; the estimator of
Gao et al. 2023): with the responses sorted by score in ascending order, the i-th (1-based) is the best of
a random n-subset with probability C(i-1, n-1) / C(N, n), so

    E[gold of best-of-n] = sum_i C(i-1, n-1) / C(N, n) * gbar_i

where gbar_i is the mean gold label of the responses tied with the i-th (a tie at the top is broken
uniformly at random, so tied responses share their probability). This uses all N samples and has no
sampling noise of its own; only the prompts are a sample, and intervals are a bootstrap over prompts.

References at the same n: `oracle` (the gold label itself as the selector: success when any of the n
passes, 1 - C(N-k, n) / C(N, n) with k passing) and `random` (one response picked at random: the mean
gold label, the same for every n). The KL of the best-of-n policy from the sampling policy is at most
log n - (n-1)/n nats (Stiennon et al. 2020; Beirami et al. 2024 show it is an upper bound, exact when
the n samples are distinct); it is reported as the x axis, as is usual."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def kl_bound(n: int) -> float:
    """log n - (n-1)/n: the usual analytic KL (nats) of best-of-n from the sampling policy."""
    return math.log(n) - (n - 1) / n


def ns_up_to(count: int) -> list[int]:
    """1, 2, 4, ... up to `count`, and `count` itself when it is not a power of two."""
    ns = [1 << k for k in range(count.bit_length()) if 1 << k <= count]
    return ns if ns[-1] == count else [*ns, count]


def _tie_means(scores: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores ascending, gold labels in that order with each tie group replaced by its mean)."""
    order = np.argsort(scores, kind="stable")
    s, g = scores[order], gold[order].astype(np.float64)
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    for first, count in zip(start, counts):
        if count > 1:
            g[first:first + count] = g[first:first + count].mean()
    return s, g


def best_of_n(scores: np.ndarray, gold: np.ndarray, n: int) -> float:
    """Expected gold success of best-of-n by `scores` over all n-subsets of the N responses (exact)."""
    total = scores.shape[0]
    if not 1 <= n <= total:
        raise ValueError(f"n = {n} is outside 1..{total} (the responses of this prompt)")
    _, g = _tie_means(np.asarray(scores, dtype=np.float64), np.asarray(gold))
    weights = np.array([math.comb(i, n - 1) for i in range(total)], dtype=np.float64) / math.comb(total, n)
    return float(weights @ g)


def oracle(gold: np.ndarray, n: int) -> float:
    """Best-of-n with the gold label as the selector: P(at least one of n passes) = 1 - C(N-k, n)/C(N, n)."""
    total, passing = len(gold), int(np.sum(gold))
    return 1.0 - math.comb(total - passing, n) / math.comb(total, n)


def auc(scores: np.ndarray, gold: np.ndarray) -> float | None:
    """P(score of a passing response > score of a failing one) within the prompt, ties counting 1/2; None
    when all responses pass or all fail."""
    gold = np.asarray(gold, dtype=bool)
    good, bad = scores[gold], scores[~gold]
    if good.size == 0 or bad.size == 0:
        return None
    diff = good[:, None] - bad[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def bootstrap(values: np.ndarray, draws: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean over prompts: values (P, K) -> (low (K,), high (K,)), prompts
    resampled with replacement `draws` times."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.shape[0], size=(draws, values.shape[0]))
    means = values[picks].mean(axis=1)
    tail = (1 - level) / 2
    return np.quantile(means, tail, axis=0), np.quantile(means, 1 - tail, axis=0)


@dataclass(frozen=True)
class Curve:
    """Mean over prompts at each n, with its bootstrap interval; `per_prompt` is (P, len(ns))."""

    mean: list[float]
    low: list[float]
    high: list[float]
    per_prompt: np.ndarray

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def curve(per_prompt: np.ndarray, draws: int = 2000, seed: int = 0) -> Curve:
    low, high = bootstrap(per_prompt, draws, seed)
    return Curve(per_prompt.mean(axis=0).tolist(), low.tolist(), high.tolist(), per_prompt)


@dataclass(frozen=True)
class BonCurves:
    """Best-of-n over a set of prompts: the selector's curve, the oracle and random-pick references, and
    the selector minus random (paired by prompt), each at every n in `ns`."""

    ns: list[int]
    kl: list[float]
    selector: Curve
    oracle: Curve
    random: Curve
    gain: Curve
    prompts: int


def bon_curves(groups: list[tuple[np.ndarray, np.ndarray]], ns: list[int], draws: int = 2000,
               seed: int = 0) -> BonCurves:
    """groups: one (scores (N,), gold (N,)) per prompt -> the curves at every n in `ns` (each <= every N)."""
    sel = np.array([[best_of_n(s, g, n) for n in ns] for s, g in groups])
    orc = np.array([[oracle(g, n) for n in ns] for _, g in groups])
    rnd = np.array([[float(np.mean(g))] * len(ns) for _, g in groups])
    return BonCurves(ns=list(ns), kl=[kl_bound(n) for n in ns], selector=curve(sel, draws, seed),
                     oracle=curve(orc, draws, seed), random=curve(rnd, draws, seed),
                     gain=curve(sel - rnd, draws, seed), prompts=len(groups))
