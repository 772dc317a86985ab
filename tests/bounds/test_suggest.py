"""suggest_next_bits: bisection on the bracket where the confidence bound crosses the tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from boundfinder.bounds import estimate_bound, suggest_next_bits
from boundfinder.errors import StatisticsError

N = 4000


def measure(bits, true_bound, seed=0):
    """Items lost: 30% below the true bound, none at or above it (a clean step)."""
    rng = np.random.default_rng(seed)
    base = rng.random(N) < 0.9
    u = rng.random(N)
    return np.stack([base & ((u >= 0.3) if b < true_bound else np.ones(N, bool)) for b in bits]), base


def run_search(true_bound, low, high):
    measured = []
    nxt = suggest_next_bits([], np.zeros((0, N), bool), np.ones(N, bool), low=low, high=high)
    while nxt is not None:
        assert nxt not in measured and low <= nxt <= high
        measured.append(nxt)
        b = sorted(measured)
        correct, base = measure(b, true_bound)
        nxt = suggest_next_bits(b, correct, base, low=low, high=high)
    return sorted(measured)


@pytest.mark.parametrize("true_bound", [3, 5, 9, 13, 16, 20])
def test_search_pins_the_bound_in_logarithmically_many_evaluations(true_bound):
    low, high = 2, 16
    measured = run_search(true_bound, low, high)
    correct, base = measure(measured, true_bound)
    est = estimate_bound(measured, correct, base, fit_curve=False)
    assert len(measured) <= math.ceil(math.log2(high - low + 1)) + 2
    if true_bound > high:
        assert est.status == "above_range"
    elif true_bound <= low:
        assert est.status == "below_range" and est.bits == low
    else:
        # Bracket closed: the level just below the bound was measured and failed.
        assert est.bits == true_bound and true_bound - 1 in measured


def test_undetermined_data_stop_the_search():
    base = np.ones(50, bool)
    correct = np.ones((2, 50), bool)
    assert suggest_next_bits([4, 16], correct, base, low=2, high=16) is None


def test_bad_range_raises():
    with pytest.raises(StatisticsError, match="low < high"):
        suggest_next_bits([], np.zeros((0, 10), bool), np.ones(10, bool), low=8, high=8)
