"""Best-of-n math: the estimator equals the brute-force average over every n-subset (ties broken at random),
the gold checker as the selector gives the oracle, a selector that prefers failing responses falls below a
random pick, and n = 1 is a random pick whatever the scores."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from aplot_cli.benchmarks import bon


def brute_force(scores: np.ndarray, gold: np.ndarray, n: int) -> float:
    """Mean over all n-subsets of the gold label of the best response, a tie at the top shared equally."""
    values = []
    for subset in itertools.combinations(range(len(scores)), n):
        best = max(scores[i] for i in subset)
        winners = [i for i in subset if scores[i] == best]
        values.append(np.mean([gold[i] for i in winners]))
    return float(np.mean(values))


@pytest.mark.parametrize("seed", range(6))
def test_estimator_is_the_average_over_every_subset(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 9))
    scores = rng.integers(0, 4, size).astype(float)  # few values: many ties
    gold = rng.random(size) < 0.5
    for n in range(1, size + 1):
        assert bon.best_of_n(scores, gold, n) == pytest.approx(brute_force(scores, gold, n), abs=1e-12), (n, scores, gold)


def test_selection_direction_oracle_and_inverse():
    gold = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    total, passing = len(gold), int(gold.sum())
    noise = np.linspace(0, 0.1, total)
    for n in range(1, total + 1):
        perfect = bon.best_of_n(gold + noise, gold, n)
        inverse = bon.best_of_n(-(gold + noise), gold, n)
        assert perfect == pytest.approx(bon.oracle(gold, n))
        assert perfect == pytest.approx(1 - math.comb(total - passing, n) / math.comb(total, n))
        assert inverse == pytest.approx(math.comb(passing, n) / math.comb(total, n))  # all n must pass
        if n >= 2:
            assert inverse < gold.mean() < perfect
    assert bon.best_of_n(noise, gold, 1) == pytest.approx(gold.mean())       # n = 1: a random pick
    assert bon.best_of_n(np.zeros(total), gold, 5) == pytest.approx(gold.mean())  # all tied: a random pick


def test_kl_ns_auc_and_bootstrap():
    assert bon.kl_bound(1) == 0 and bon.kl_bound(64) == pytest.approx(math.log(64) - 63 / 64)
    assert bon.ns_up_to(64) == [1, 2, 4, 8, 16, 32, 64] and bon.ns_up_to(12) == [1, 2, 4, 8, 12]
    assert bon.auc(np.array([3.0, 1.0, 2.0]), np.array([True, False, False])) == 1.0
    assert bon.auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert bon.auc(np.array([1.0, 2.0]), np.array([True, True])) is None
    values = np.random.default_rng(0).random((50, 2))
    low, high = bon.bootstrap(values)
    assert (low < values.mean(0)).all() and (values.mean(0) < high).all()
    assert np.array_equal(low, bon.bootstrap(values)[0])  # seeded
    with pytest.raises(ValueError, match="outside"):
        bon.best_of_n(np.zeros(3), np.zeros(3, bool), 4)
