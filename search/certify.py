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
- ``graph``: the graphical procedure of Bretz, Maurer, Brannath and Posch (2009) on two chains. The most expensive
  candidate gets all of ``alpha``; once certified, a share :data:`GRAPH_UNIFORM_WEIGHT` of it goes down the
  *uniform* chain (the candidates with every layer group at one width, cost-descending: alone, at full ``alpha``,
  the fixed sequence a uniform sweep runs) and the rest down the other chain (the sensitivity-path and sampler
  candidates). A chain's node passes its whole level to the next; a chain's last node to the other chain's head,
  so a failing candidate stops only its own chain. Needs ``uniform`` (which candidates are uniform).

Measured by ``benchmarks/certify_procedures.py --replicates 1000 --graph-weights 0.5,0.7,0.8,0.9`` (one seed,
1,000 validation and 2,000 test items, tolerance 0.01, alpha 0.05; the candidates are every uniform configuration,
1.5 times the drop of its cost level's allocations, and the validation Pareto front of the others; cost units saved
below the widest configuration, family-wise error; ``sweep``: the fixed sequence on the uniform candidates alone at
the full alpha, a uniform sweep's certificate; ``graph`` at ``w = 0.8``):

================  =================  =================  ===============  ===========================
procedure         monotone           allocations        marginal         boundary (error, worst case)
================  =================  =================  ===============  ===========================
sweep (uniform)   2.66 (0.2%)        2.65 (0.1%)        2.70 (0.6%)      3.7%
fixed_cost        2.59 (0.2%)        2.62 (0.0%)        2.65 (0.6%)      3.7%
fallback          3.01 (0.3%)        5.77 (0.1%)        5.53 (0.0%)      3.2%
fallback_widest   2.96 (0.3%)        5.33 (0.0%)        5.07 (0.2%)      3.3%
holm              2.95 (0.5%)        5.94 (0.1%)        5.68 (0.0%)      3.1%
graph             3.16 (0.1%)        4.71 (0.1%)        4.65 (0.3%)      3.4%
================  =================  =================  ===============  ===========================

Why ``GRAPH_UNIFORM_WEIGHT = 0.8``: with w = 0.5 / 0.7 / 0.8 / 0.9 the graph's cheapest certified cost is at most
the sweep's in 82.8 / 88.8 / 92.6 / 95.8% of the replicates (monotone), 91.8 / 94.7 / 95.8 / 97.7% (allocations)
and 90.4 / 94.3 / 95.9 / 97.7% (marginal), saving 3.32 / 3.22 / 3.16 / 3.00, 5.44 / 4.95 / 4.71 / 4.19 and
5.30 / 4.95 / 4.65 / 4.10 units. 0.8 cuts the replicates where 0.5 is worse than the sweep by more than half (17.2 /
8.2 / 9.6% to 7.4 / 4.2 / 4.1%) and keeps three quarters of 0.5's gain over the sweep; 0.9 cuts them by another 45%
but keeps only half the gain. No w < 1 is never worse (a uniform candidate the sweep certifies at alpha can fail at
w alpha); ``fallback_widest``, for comparison, saves more where allocations differ (5.33, 5.07) but is at most the
sweep's cost in only 81.3 / 92.3 / 91.6%.

p-values come from inverting the same one-sided upper bounds :func:`boundfinder.bounds.estimate_bound` uses
(``score`` for one seed, the crossed ``t`` bound for several): ``p_k`` is the smallest ``alpha`` at which the
candidate's upper bound on its drop is at most the tolerance, so testing ``p_k <= alpha`` is exactly the bound's
own decision at every level. :func:`model_p_values` are those of the claim about S fixed trained models (every one
of them within the tolerance): the largest one-model p-value, an intersection-union test.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import stats

from boundfinder.bounds import paired
from boundfinder.errors import BoundfinderError

__all__ = ["GRAPH_UNIFORM_WEIGHT", "PROCEDURES", "declared_safe", "drop_p_values", "model_p_values"]

PROCEDURES = ("fixed_cost", "fixed_validation", "fallback", "fallback_widest", "holm", "holm_top", "graph")
#: ``graph``: the fraction of the root's level passed to the uniform chain (the rest goes to the other chain)
GRAPH_UNIFORM_WEIGHT = 0.8


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


def model_p_values(correct: np.ndarray, baseline: np.ndarray, tolerance: float) -> np.ndarray:
    """p-values of the claim about S fixed trained models: ``H_k: some model s has drop_ks > tolerance``.

    ``correct``: (K, S, N) per-item results of the candidates applied to each of the S models; ``baseline``:
    (S, N) of the S full-precision models on the same items. The claim "every one of these S models loses at
    most ``tolerance``" is an intersection of S one-model claims, so its null is the union of theirs and the
    intersection-union test (Berger 1982) applies: ``p_k`` is the largest of the S one-model p-values
    (:func:`drop_p_values` on one seed, the score test). Rejecting when ``p_k <= alpha`` has level ``alpha``
    with no multiplicity correction across the models (each model's test is run at the full ``alpha``, and
    an error needs the unsafe model's own test to err). The claim is about these S models, not about the
    training recipe: that one is the seeds' mean drop, :func:`drop_p_values` on (K, S, N).

    >>> base = np.ones((2, 400), dtype=bool)
    >>> safe, lossy = base[0], np.arange(400) % 10 != 0  # no drop; a drop of 0.1
    >>> p = model_p_values(np.stack([[safe, safe], [safe, lossy]]), base, 0.01)
    >>> bool(p[0] < 0.05), bool(p[1] > 0.99)  # the second candidate fails on model 2: the claim fails
    (True, True)
    >>> one = model_p_values(np.stack([[safe], [lossy]]), base[:1], 0.01)
    >>> bool((one == drop_p_values(np.stack([safe, lossy]), base[0], 0.01)).all())  # S = 1: the one-seed test
    True
    """
    correct = np.asarray(correct, dtype=bool)
    baseline = np.asarray(baseline, dtype=bool)
    if correct.ndim != 3 or baseline.shape != correct.shape[1:]:
        raise BoundfinderError(
            f"correct must be (K, S, N) and baseline (S, N): S models on the same N items, got shapes "
            f"{correct.shape} and {baseline.shape}."
        )
    per_model = [drop_p_values(correct[:, s], baseline[s], tolerance) for s in range(correct.shape[1])]
    return np.max(per_model, axis=0)


def _graph_rejections(p: np.ndarray, weights: np.ndarray, transitions: np.ndarray, alpha: float) -> np.ndarray:
    """The sequentially rejective graphical procedure (Bretz, Maurer, Brannath, Posch 2009, Algorithm 1).

    ``weights``: initial shares of ``alpha`` (sum <= 1); ``transitions``: G, row j the shares of j's level passed
    on when H_j is rejected (rows sum <= 1, zero diagonal). Rejects any H_j with ``p_j <= alpha_j`` and updates
    the graph, until none is left; the result does not depend on which rejectable hypothesis goes first.
    """
    level = alpha * np.asarray(weights, dtype=float)
    g = np.array(transitions, dtype=float)
    active = np.ones(p.size, dtype=bool)
    # (a level of 0 rejects nothing, not even p = 0, which the score test gives to a candidate far below tolerance)
    while (ready := np.flatnonzero(active & (level > 0) & (p <= level))).size:
        j = ready[0]
        active[j] = False
        level[active] += level[j] * g[j, active]
        level[j] = 0.0
        # g_lk <- (g_lk + g_lj g_jk) / (1 - g_lj g_jl); 0 where l and j passed everything to each other
        denom = (1.0 - g[:, j] * g[j, :])[:, None]
        g = np.divide(g + np.outer(g[:, j], g[j, :]), denom, out=np.zeros_like(g), where=denom > 0)
        g[j, :] = g[:, j] = 0.0  # (rows and columns of earlier rejections stay 0: nothing flows to or from them)
        np.fill_diagonal(g, 0.0)
    return ~active


def _two_chain_graph(cost: np.ndarray, uniform: np.ndarray, uniform_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and transitions of ``graph``: the most expensive candidate gets all of alpha and passes
    ``uniform_weight`` of it to the head of the uniform chain, the rest to the head of the other chain; each node
    passes its level to the next of its chain, a chain's last node to the head of the other chain."""
    k = cost.size
    by_cost = np.argsort(-cost, kind="stable")
    root = by_cost[0]
    chains = [[i for i in by_cost[1:] if uniform[i]], [i for i in by_cost[1:] if not uniform[i]]]
    weights = np.zeros(k)
    weights[root] = 1.0
    g = np.zeros((k, k))
    if chains[0] and chains[1]:
        g[root, chains[0][0]], g[root, chains[1][0]] = uniform_weight, 1.0 - uniform_weight
    elif chains[0] or chains[1]:
        g[root, (chains[0] or chains[1])[0]] = 1.0
    for chain, other in (chains, chains[::-1]):
        for a, b in itertools.pairwise(chain):
            g[a, b] = 1.0
        if chain and other:
            g[chain[-1], other[0]] = 1.0
    return weights, g


def declared_safe(procedure: str, p: Sequence[float], cost: Sequence[float], validation: Sequence[float],
                  alpha: float, *, top: int = 3, uniform: Sequence[bool] | None = None,
                  uniform_weight: float | None = None) -> np.ndarray:
    """Which candidates ``procedure`` declares safe (a boolean mask), family-wise error at most ``alpha``.

    ``p``: test p-values (:func:`drop_p_values`); ``cost``: the candidates' costs (the fixed and fallback
    sequences start at the most expensive); ``validation``: evidence from validation items only, smaller is
    stronger (e.g. the validation upper bound or p-value): it orders ``fixed_validation`` and filters
    ``holm_top`` (``top`` candidates). Ties keep the given order. ``uniform`` (``graph`` only, which needs it):
    which candidates are uniform (every layer group at one width, as a sweep certifies them); ``uniform_weight``
    (``graph`` only): the share of alpha passed to the uniform chain, :data:`GRAPH_UNIFORM_WEIGHT` by default.

    >>> declared_safe("fixed_cost", [0.01, 0.2, 0.001], cost=[3, 2, 1], validation=[0, 0, 0], alpha=0.05).tolist()
    [True, False, False]
    >>> declared_safe("fallback", [0.01, 0.2, 0.001], cost=[3, 2, 1], validation=[0, 0, 0], alpha=0.05).tolist()
    [True, False, True]

    ``graph``: the widest (root) certified, 0.8 of its 0.05 goes to the uniform chain (0.04: the uniform candidate
    with p 0.03 passes and hands its level on, to the other chain's head, which then has all of 0.05):

    >>> declared_safe("graph", [0.01, 0.03, 0.045], cost=[3, 2, 1], validation=[0, 0, 0], alpha=0.05,
    ...               uniform=[True, True, False], uniform_weight=0.8).tolist()
    [True, True, True]
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
    if procedure == "graph":
        flags = np.asarray(uniform)
        if uniform is None or flags.shape != (k,) or not (flags.dtype == bool or (
                flags.dtype.kind in "iuf" and ((flags == 0) | (flags == 1)).all())):
            raise BoundfinderError(f"procedure 'graph' needs `uniform`: one bool per candidate ({k}), True for the "
                                   f"uniform configurations (every layer group at one width), got {uniform!r}.")
        weight = GRAPH_UNIFORM_WEIGHT if uniform_weight is None else float(uniform_weight)
        if not 0 <= weight <= 1:
            raise BoundfinderError(f"`0 <= uniform_weight <= 1` must hold, but got uniform_weight={uniform_weight!r}.")
        weights, g = _two_chain_graph(cost, flags.astype(bool), weight)
        return _graph_rejections(p, weights, g, alpha)
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
