"""How many items a bound needs: the noise floor of the paired score bound, and the sample size for power.

Boolean scores (one seed) plan with the discordant-pair rate; continuous scores with ``item_sd``, the standard
deviation of the per-item difference (reduced minus baseline, in the metric's units), from a pilot run.
"""

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


def _check_sd(item_sd, discordance):
    if item_sd is None:
        return
    if not (isinstance(item_sd, int | float) and math.isfinite(item_sd) and item_sd > 0):
        raise StatisticsError(f"item_sd must be a finite number > 0 (metric units), got {item_sd!r}")
    if discordance != 0.0:
        raise StatisticsError(
            f"pass discordance (boolean scores) or item_sd (continuous scores), not both: got {discordance=}, "
            f"{item_sd=}"
        )


def min_detectable_drop(n_items, *, discordance=0.0, confidence=0.95, item_sd=None):
    """Smallest drop one seed of ``n_items`` paired items can certify: the score upper bound when the observed
    drop is zero and a fraction ``discordance`` of items flip (half each way).

    With no flips at all this is the "rule of three": about ``z^2 / N``. Continuous scores (``item_sd`` given):
    the t margin ``t_{confidence, N-1} item_sd / sqrt(N)`` (the studentized bound adds to it for skewed data,
    so read it as a lower limit; `BoundEstimate.min_detectable_drop` is the measured one).

    >>> round(min_detectable_drop(300), 4), round(min_detectable_drop(2000, discordance=0.02), 4)
    (0.0089, 0.0054)
    >>> round(min_detectable_drop(400, item_sd=0.2), 4)  # 1.6487 * 0.2 / 20
    0.0165
    """
    if not (isinstance(n_items, int | np.integer) and n_items >= 1):
        raise StatisticsError(f"n_items must be an int >= 1, got {n_items!r}")
    _check("discordance", discordance, 0.0, 1.0 + 1e-12)
    _check("confidence", confidence, 0.5, 1.0)
    _check_sd(item_sd, discordance)
    if item_sd is not None:
        if n_items < 2:
            raise StatisticsError(f"n_items must be >= 2 for continuous scores, got {n_items!r}")
        return float(stats.t.ppf(confidence, n_items - 1) * item_sd / math.sqrt(n_items))
    half = discordance * n_items / 2.0
    return float(score_bounds(half, half, n_items, 1.0 - confidence)[1][0])


def required_items(tolerance, *, discordance=0.0, expected_drop=0.0, confidence=0.95, power=0.8, item_sd=None):
    """Items (one seed) needed so that a level with true drop ``expected_drop`` and discordant-pair rate
    ``discordance`` is certified safe (score upper bound <= ``tolerance``) with probability ``power``.

    Continuous scores (``item_sd`` given, ``tolerance`` and ``expected_drop`` in the metric's units): the
    smallest N with ``expected_drop + (z_power + t_{confidence, N-1}) item_sd / sqrt(N) <= tolerance`` (normal
    approximation of the observed mean; skewed per-item differences need somewhat more, see the test).

    Normal approximation for the observed drop (sd ``sqrt((pd - d^2) / N)``) at its ``power`` quantile, then
    the exact score bound at those counts; the smallest such N by bisection. The study in the tests checks
    the achieved power by simulation.

    >>> required_items(0.01)  # no flips at all: the rule of three, z^2 / tol
    268
    >>> required_items(0.01, discordance=0.02, expected_drop=0.002)
    2076
    """
    _check("discordance", discordance, 0.0, 1.0 + 1e-12)
    _check("confidence", confidence, 0.5, 1.0)
    _check("power", power, 0.5, 1.0)
    _check_sd(item_sd, discordance)
    if item_sd is not None:
        if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance > 0):
            raise StatisticsError(f"tolerance must be a finite number > 0, got {tolerance!r}")
        if not expected_drop < tolerance:
            raise StatisticsError(f"expected_drop < tolerance must hold to certify anything, got {expected_drop=}")
        zp = stats.norm.ppf(power)

        def margin_ok(n):
            return expected_drop + (zp + stats.t.ppf(confidence, n - 1)) * item_sd / math.sqrt(n) <= tolerance

        lo, hi = 2, 4
        while not margin_ok(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if margin_ok(mid) else (mid, hi)
        return int(hi)
    _check("tolerance", tolerance, 1e-9, 1.0)
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
