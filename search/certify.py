"""Multiple-testing procedures that certify search candidates, and the p-values they run on.

A search proposes K candidate configurations (chosen on validation items) and certifies them on test items: for
each candidate ``k`` the null hypothesis ``H_k: drop_k > tolerance`` (unsafe) against ``drop_k <= tolerance``
(safe). Every procedure here controls the family-wise error in the strong sense: with probability at least
``1 - alpha``, every candidate it declares safe is safe, whatever the true drops. They differ in power: how often,
and how cheap, a candidate is certified.

- ``fixed_cost``: the fixed sequence from the most expensive candidate down (the search's procedure so far).
  Each test at the full ``alpha``; the first candidate not certified stops the sequence, hiding every cheaper one.
- ``fixed_validation``: the fixed sequence in the order of the validation evidence (most confidently safe on
  validation first: Learn-then-Test / Pareto Testing). Valid because the order uses validation items only.
- ``fallback``: Wiens' fallback procedure in cost order: candidate ``i`` is tested at ``w_i alpha`` plus the level
  of the candidate before it when that one was certified, so a candidate that fails spends only its own share.
- ``fallback_widest``: the fallback procedure with half of ``alpha`` on the widest candidate (which nearly always
  passes it on) and the other half shared by the rest: the fixed sequence's power where the truth is monotone,
  the fallback's where a marginal candidate would stop the sequence.
- ``holm``: Holm's step-down over every candidate (no order at all).
- ``holm_top``: Holm over the ``m`` candidates with the strongest validation evidence (a small, validation-filtered
  family: each test at ``alpha / m`` at worst instead of ``alpha / K``).

Measured by ``benchmarks/certify_procedures.py --replicates 1000`` (one seed, 1,000 validation and 2,000 test
items, tolerance 0.01, alpha 0.05; cost units saved below the widest configuration, family-wise error):

==============  =================  =================  ===============  ===========================
procedure       monotone           allocations        marginal         boundary (error, worst case)
==============  =================  =================  ===============  ===========================
fixed_cost      3.26 (0.5%)        6.18 (0.2%)        5.73 (0.3%)      3.8%
fallback        3.02 (0.5%)        7.25 (0.3%)        6.71 (0.8%)      2.8%
fallback_widest 3.16 (0.1%)        7.13 (0.2%)        6.61 (0.5%)      3.2%
holm            2.82 (0.3%)        7.19 (0.4%)        6.55 (1.1%)      2.6%
==============  =================  =================  ===============  ===========================

p-values come from inverting the same one-sided upper bounds :func:`boundfinder.bounds.estimate_bound` uses
(``score`` for one seed, the crossed ``t`` bound for several): ``p_k`` is the smallest ``alpha`` at which the
candidate's upper bound on its drop is at most the tolerance, so testing ``p_k <= alpha`` is exactly the bound's
own decision at every level.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from boundfinder.bounds import paired
from boundfinder.errors import BoundfinderError

__all__ = ["PROCEDURES", "declared_safe", "drop_p_values"]

PROCEDURES = ("fixed_cost", "fixed_validation", "fallback", "fallback_widest", "holm", "holm_top")


def drop_p_values(correct: np.ndarray, baseline: np.ndarray, tolerance: float) -> np.ndarray:
    """One-sided p-values of ``H_k: drop_k > tolerance`` for each candidate.

    ``correct``: (K, N) or (K, S, N) per-item results of the candidates; ``baseline``: (N,) or (S, N) of the
    full-precision model(s) on the same items. ``p_k`` is the smallest ``alpha`` at which the candidate's
    one-sided upper bound (as :func:`~boundfinder.bounds.estimate_bound` computes it with ``method="auto"``) is
    at most ``tolerance``: for one seed the score test of ``drop = tolerance`` (Tango's statistic, whose inversion
    is the ``score`` bound), ``Phi(z(tolerance))``; for several seeds the larger of the crossed-variance ``t``
    test's and the score test's on the pooled pairs (the ``t`` bound is floored at that score bound).

    >>> base = np.ones(400, dtype=bool)
    >>> cand = np.stack([base, np.arange(400) % 10 != 0])  # no drop; a drop of 0.1
    >>> p = drop_p_values(cand, base, 0.01)
    >>> bool(p[0] < 0.05), bool(p[1] > 0.99)
    (True, True)
    """
    correct = np.asarray(correct, dtype=bool)
    baseline = np.asarray(baseline, dtype=bool)
    if correct.ndim == 2:
        correct = correct[:, None, :]
    if baseline.ndim == 1 and correct.ndim == 3 and baseline.shape[0] == correct.shape[2]:
        baseline = np.broadcast_to(baseline, correct.shape[1:])
    if correct.ndim != 3 or baseline.shape != correct.shape[1:]:
        raise BoundfinderError(
            f"correct must be (K, N) or (K, S, N) and baseline (N,) or (S, N) on the same items, got shapes "
            f"{correct.shape} and {baseline.shape}."
        )
    diff = baseline[None].astype(float) - correct.astype(float)
    _k, s, n = diff.shape
    b10 = (diff > 0).sum(axis=(1, 2)).astype(float)
    b01 = (diff < 0).sum(axis=(1, 2)).astype(float)
    p = stats.norm.cdf(paired._tango_z(b10, b01, float(s * n), tolerance))
    if s > 1:
        grand, var, df = paired._crossed_mean(diff)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(var > 0, (tolerance - grand) / np.sqrt(var), np.where(grand < tolerance, np.inf, -np.inf))
        p = np.maximum(p, stats.t.sf(t, df))
    return p


def declared_safe(procedure: str, p: Sequence[float], cost: Sequence[float], validation: Sequence[float],
                  alpha: float, *, top: int = 3) -> np.ndarray:
    """Which candidates ``procedure`` declares safe (a boolean mask), family-wise error at most ``alpha``.

    ``p``: test p-values (:func:`drop_p_values`); ``cost``: the candidates' costs (the fixed and fallback
    sequences start at the most expensive); ``validation``: evidence from validation items only, smaller is
    stronger (e.g. the validation upper bound or p-value): it orders ``fixed_validation`` and filters
    ``holm_top`` (``top`` candidates). Ties keep the given order.

    >>> declared_safe("fixed_cost", [0.01, 0.2, 0.001], cost=[3, 2, 1], validation=[0, 0, 0], alpha=0.05).tolist()
    [True, False, False]
    >>> declared_safe("fallback", [0.01, 0.2, 0.001], cost=[3, 2, 1], validation=[0, 0, 0], alpha=0.05).tolist()
    [True, False, True]
    """
    if procedure not in PROCEDURES:
        raise BoundfinderError(f"procedure must be one of {', '.join(PROCEDURES)}, got {procedure!r}.")
    if not 0 < alpha < 1:
        raise BoundfinderError(f"`0 < alpha < 1` must hold, but got alpha={alpha!r}.")
    p, cost, validation = (np.asarray(v, dtype=float) for v in (p, cost, validation))
    k = p.size
    if cost.shape != (k,) or validation.shape != (k,):
        raise BoundfinderError(f"p, cost and validation need one value per candidate: shapes {p.shape}, "
                               f"{cost.shape}, {validation.shape}.")
    safe = np.zeros(k, dtype=bool)
    by_cost = np.argsort(-cost, kind="stable")
    if procedure in ("fixed_cost", "fixed_validation"):
        # (the validation order starts at the widest candidate too: the anchor every search has)
        order = by_cost if procedure == "fixed_cost" else np.append(
            by_cost[0], [i for i in np.argsort(validation, kind="stable") if i != by_cost[0]]).astype(int)
        for i in order:
            if not p[i] <= alpha:
                break
            safe[i] = True
    elif procedure in ("fallback", "fallback_widest"):
        if procedure == "fallback" or k == 1:
            weights = np.full(k, 1.0 / k)
        else:  # half of alpha on the widest candidate (nearly always safe: it passes its level on), half shared
            weights = np.append(0.5, np.full(k - 1, 0.5 / (k - 1)))
        carried = 0.0  # the level of the candidate before, passed on when it was certified
        for w, i in zip(weights, by_cost, strict=True):
            level = w * alpha + carried
            safe[i] = p[i] <= level
            carried = level if safe[i] else 0.0
    else:
        family = np.arange(k) if procedure == "holm" else np.argsort(validation, kind="stable")[:top]
        m = family.size
        for rank, i in enumerate(family[np.argsort(p[family], kind="stable")]):
            if not p[i] <= alpha / (m - rank):
                break
            safe[i] = True
    return safe
