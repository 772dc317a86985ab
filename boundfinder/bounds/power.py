"""How many items a bound needs: the noise floor of the paired score bound, and the sample size for power."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from boundfinder.bounds.paired import score_bounds
from boundfinder.errors import StatisticsError

__all__ = ["min_detectable_drop", "required_items"]


def _check(name, value, low, high):
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value < high):
        raise StatisticsError(f"{name} must satisfy {low} <= {name} < {high}, got {value!r}")


def min_detectable_drop(n_items, *, discordance=0.0, confidence=0.95):
    """Smallest drop one seed of ``n_items`` paired items can certify: the score upper bound when the observed
    drop is zero and a fraction ``discordance`` of items flip (half each way).

    With no flips at all this is the "rule of three": about ``z^2 / N``.

    >>> round(min_detectable_drop(300), 4), round(min_detectable_drop(2000, discordance=0.02), 4)
    (0.0089, 0.0054)
    """
    if not (isinstance(n_items, int | np.integer) and n_items >= 1):
        raise StatisticsError(f"n_items must be an int >= 1, got {n_items!r}")
    _check("discordance", discordance, 0.0, 1.0 + 1e-12)
    _check("confidence", confidence, 0.5, 1.0)
    half = discordance * n_items / 2.0
    return float(score_bounds(half, half, n_items, 1.0 - confidence)[1][0])


def required_items(tolerance, *, discordance=0.0, expected_drop=0.0, confidence=0.95, power=0.8):
    """Items (one seed) needed so that a level with true drop ``expected_drop`` and discordant-pair rate
    ``discordance`` is certified safe (score upper bound <= ``tolerance``) with probability ``power``.

    Normal approximation for the observed drop (sd ``sqrt((pd - d^2) / N)``) at its ``power`` quantile, then
    the exact score bound at those counts; the smallest such N by bisection. The study in the tests checks
    the achieved power by simulation.

    >>> required_items(0.01)  # no flips at all: the rule of three, z^2 / tol
    268
    >>> required_items(0.01, discordance=0.02, expected_drop=0.002)
    2076
    """
    _check("tolerance", tolerance, 1e-9, 1.0)
    _check("discordance", discordance, 0.0, 1.0 + 1e-12)
    _check("confidence", confidence, 0.5, 1.0)
    _check("power", power, 0.5, 1.0)
    if not (abs(expected_drop) <= discordance or expected_drop == 0.0):
        raise StatisticsError(
            f"|expected_drop| <= discordance must hold (a drop needs flips), got {expected_drop=}, "
            f"{discordance=}"
        )
    if expected_drop >= tolerance:
        raise StatisticsError(
            f"expected_drop < tolerance must hold to certify anything, got {expected_drop=}"
        )
    zp = stats.norm.ppf(power)
    var = max(discordance - expected_drop**2, 0.0)

    def certified(n):
        d = expected_drop + zp * math.sqrt(var / n)
        b10 = max(n * (discordance + d) / 2.0, 0.0)
        b01 = max(n * (discordance - d) / 2.0, 0.0)
        return score_bounds(b10, b01, n, 1.0 - confidence)[1][0] <= tolerance

    lo, hi = 1, 2
    while not certified(hi):
        lo, hi = hi, hi * 2
        if hi > 2**40:  # pragma: no cover - unreachable for expected_drop < tolerance
            raise StatisticsError("required_items did not converge")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if certified(mid) else (mid, hi)
    return int(hi)
