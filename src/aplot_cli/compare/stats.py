"""The statistics of the compare report, pure: Student-t intervals over seeds, paired differences by seed,
the paired bootstrap over test pairs, and the smallest difference each interval could detect (MDE).

Numbers in, numbers out: nothing here reads a cell or writes a file (`experiments/downstream/report.py`
uses the same functions)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the Student-t confidence interval, n); half-width is nan for n < 2."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, 0
    if arr.size == 1:
        return float(arr[0]), math.nan, 1
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size)
    return float(arr.mean()), float(half), int(arr.size)


def paired_differences(method: dict[int, float], reference: dict[int, float]) -> list[float]:
    """Per-seed `method - reference` for the seeds both have (a seed fixes data order and head init)."""
    return [method[s] - reference[s] for s in sorted(set(method) & set(reference))
            if method[s] is not None and reference[s] is not None]


def bootstrap_ci(correct_m: np.ndarray, correct_r: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap over test pairs: (mean difference, low, high) of the seed-mean accuracy of the
    method minus the reference's. `correct_*`: (seeds, pairs) 0/1, aligned on seeds and pairs. Pairs are
    resampled with replacement (the seeds stay paired); the percentile interval is returned."""
    per_pair = (np.asarray(correct_m, float) - np.asarray(correct_r, float)).mean(axis=0)  # (pairs,)
    rng = np.random.default_rng(seed)
    draws = per_pair[rng.integers(0, per_pair.size, size=(n_boot, per_pair.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(per_pair.mean()), float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


@dataclass(frozen=True)
class Boot:
    """A paired bootstrap over test pairs: mean difference, percentile interval, and the standard error
    (the standard deviation of the resampled means)."""

    mean: float
    low: float
    high: float
    se: float


def bootstrap(correct_m: np.ndarray, correct_r: np.ndarray, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> Boot:
    """`bootstrap_ci` with the bootstrap standard error (what the power of the interval depends on)."""
    per_pair = (np.asarray(correct_m, float) - np.asarray(correct_r, float)).mean(axis=0)
    rng = np.random.default_rng(seed)
    draws = per_pair[rng.integers(0, per_pair.size, size=(n_boot, per_pair.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return Boot(float(per_pair.mean()), float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail)),
                float(draws.std(ddof=1)))


POWER = 0.8


def mde_t(diffs: list[float], level: float = 0.95, power: float = POWER) -> float:
    """Smallest true mean difference that the two-sided Student-t interval over `len(diffs)` paired seeds would
    exclude from zero with probability `power`: `(t_{1-a/2} + t_{power}) * sd / sqrt(n)` (df n - 1); nan
    under 2 seeds."""
    arr = np.asarray([d for d in diffs if d is not None and math.isfinite(d)], dtype=float)
    if arr.size < 2:
        return math.nan
    from scipy import stats

    df = arr.size - 1
    return float((stats.t.ppf(0.5 + level / 2, df) + stats.t.ppf(power, df)) * arr.std(ddof=1) / math.sqrt(arr.size))


def mde_boot(se: float, level: float = 0.95, power: float = POWER) -> float:
    """Smallest true difference a bootstrap interval of standard error `se` would exclude from zero with
    probability `power` (normal approximation): `(z_{1-a/2} + z_{power}) * se`."""
    from scipy import stats

    return float((stats.norm.ppf(0.5 + level / 2) + stats.norm.ppf(power)) * se)


def fmt_ci(values: list[float], scale: float = 100.0, low: float = 0.0, high: float = 1.0) -> str:
    """`mean [low, high]` (95% Student-t over seeds) in points, the interval clipped to the scale
    ([0, 100] for accuracies); the mean alone for one value."""
    mean, half, n = mean_ci(values)
    if n == 0:
        return "-"
    if n == 1:
        return f"{mean * scale:.1f}"
    return f"{mean * scale:.1f} [{max(low, mean - half) * scale:.1f}, {min(high, mean + half) * scale:.1f}]"
