"""Where to measure next: bisection on the bracket in which the confidence bound crosses the tolerance."""

from __future__ import annotations

import numpy as np

from boundfinder.bounds.estimate import estimate_bound
from boundfinder.errors import StatisticsError

__all__ = ["suggest_next_bits"]


def suggest_next_bits(
    bits,
    correct,
    baseline,
    *,
    low,
    high,
    tolerance=None,
    relative=False,
    confidence=0.95,
    method="auto",
    higher_is_better=True,
    n_boot=2000,
    random_state=0,
):
    """The next bit level to evaluate to pin the minimum safe bits with the fewest evaluations, or None.

    The certified bound lies between the highest level that failed (not declared safe) and the lowest level
    declared safe; the next level is the middle of that bracket (bisection on where the per-level upper
    confidence bound crosses the tolerance), restricted to ``low <= b <= high``. With fewer than two levels
    measured it asks for ``high`` then ``low``. It returns None when the bracket is closed (adjacent levels),
    the range is exhausted, or the estimate is ``undetermined`` (more levels cannot help; more items or seeds
    can). ``bits``/``correct``/``baseline`` are as in `estimate_bound` (``correct`` may have 0 or 1 level):
    boolean correctness (``tolerance`` defaults to 0.01) or continuous scores (``tolerance`` required, in the
    metric's units, with ``higher_is_better``), the same meaning for both.

    The levels are chosen from the same items the final `estimate_bound` is computed on, so its
    fixed-sequence guarantee (probability <= ``1 - confidence`` that a declared-safe level is unsafe) holds
    for the levels this search visits only under a condition:

    * It holds when the levels are fixed in advance (a grid, or levels chosen on other items than the ones
      the bound is computed on), exactly as for `estimate_bound`.
    * It holds for the adaptive choice when the true drop does not increase with bits, the per-level method
      bounds each level from that level's data alone (``score``, ``exact``, ``t``, ``bootstrap``; not
      ``curve``) and, on the data at hand, no truly unsafe level has a smaller upper bound than the level
      just below the true bound (the upper bounds, as they would be with every level measured, do not
      decrease as bits fall below the true bound). Then certifying any unsafe level the search visits
      implies certifying the level just below the true bound, which happens with probability <=
      ``1 - confidence`` whichever levels are visited. Errors nested across levels (an item lost at b bits
      stays lost below b, as in real networks) give this in practice.
    * It does not hold when several truly unsafe levels sit near the tolerance with independent noise
      (non-monotone upper bounds): bisection can visit and test several of them, each a fresh chance of a
      false certification, whereas the fixed sequence over all levels stops at the first. Measured at
      confidence 0.95 (``benchmarks/calibration.py --adaptive``, docs/bounds.md): 12.5% unsafe adaptively
      against 2.8% with all levels; with nested errors both 2.8%.

    Levels the search never visits are not covered by any statement; ``bits`` says that every tested level
    from it up is safe, which implies the untested ones in between are safe only if the true drop does not
    increase with bits.

    >>> import numpy as np
    >>> base = np.ones(3000, dtype=bool)
    >>> lost = lambda b: 0.9 * 2.0 ** -(b - 2)  # fraction of items lost at b bits
    >>> u = np.random.default_rng(1).random(3000)
    >>> measured = {}
    >>> nxt = suggest_next_bits([], np.zeros((0, 3000), bool), base, low=2, high=16)
    >>> while nxt is not None:
    ...     measured[nxt] = base & (u >= lost(nxt))
    ...     b = sorted(measured)
    ...     nxt = suggest_next_bits(b, np.stack([measured[k] for k in b]), base, low=2, high=16)
    >>> sorted(measured)  # true minimum safe bits is 9 (drop 0.9 * 2**-7 = 0.007; at 8 bits 0.014)
    [2, 5, 7, 8, 9, 16]
    """
    if not (isinstance(low, int | np.integer) and isinstance(high, int | np.integer) and low < high):
        raise StatisticsError(f"low < high must hold for integer bit levels, got {low=}, {high=}")
    measured = sorted(int(b) for b in np.asarray(bits).reshape(-1))
    if len(measured) < 2:
        for cand in (high, low):
            if cand not in measured:
                return int(cand)
        return None  # pragma: no cover - low < high guarantees one is free
    est = estimate_bound(
        bits,
        correct,
        baseline,
        tolerance=tolerance,
        relative=relative,
        confidence=confidence,
        method=method,
        fit_curve=False,
        higher_is_better=higher_is_better,
        n_boot=n_boot,
        random_state=random_state,
    )
    if est.status == "undetermined":
        return None
    levels = [lv.bits for lv in est.levels]
    if est.status == "above_range":
        # Nothing certified: the crossing is above the highest measured level.
        top = max(levels)
        return int(high) if top < high else None
    if est.status == "below_range":
        # Everything certified: the crossing is below the lowest measured level.
        bottom = min(levels)
        if bottom <= low:
            return None
        return int((low + bottom) // 2) if bottom - low > 1 else int(low)
    failed = max(lv.bits for lv in est.levels if not lv.declared_safe and lv.bits < est.bits)
    if est.bits - failed <= 1:
        return None
    return int((failed + est.bits) // 2)
