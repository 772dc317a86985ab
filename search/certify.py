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
own decision at every level.

:func:`model_p_values` (and the bounds they invert, :func:`model_bounds`) are those of a claim about S fixed trained
models, the test items the only randomness. By default (``combine="mean"``) the claim is about the drop
averaged over the S models: the largest p-value of the t test over the items' mean differences (df N - 1), the
score test on the S N pooled pairs, and the score test on the items' mean differences, which counts items, not
pairs (Tango's statistic on the support ``-1, -1 + 1/S, ..., 1``), so it holds when the same few items flip in
every model; for S = 1 the one-seed score test. ``combine="each"``: every model within the tolerance, the
intersection-union test (the largest of the S one-model p-values).

Measured by ``benchmarks/model_claim.py --replicates 2000`` (true mean drop at the tolerance 0.01: the rate is the
type-I error, the largest over discordances 0.002 / 0.01 / 0.03, rho and equal or differing models; true drop
0: power, mean over the discordances, equal models, ``mean`` / ``each``; flips shared across the models with
probability rho; ``t+pooled``: the first version, without the item score test; limit 5% + 3 s.e. = 6.5%):

=  ====  ======================  ============  =============  ============
S  N     type-I mean (t+pooled)  power rho 0   power rho 0.5  power rho 1
=  ====  ======================  ============  =============  ============
1  449   5.0% (5.0%)             47.0 / 47.0%
1  2000  5.4% (5.4%)             82.8 / 82.8%
3  449   5.9% (10.4%)            73.5 / 20.7%  54.2 / 28.5%   47.9 / 47.9%
3  2000  5.7% (6.9%)             97.8 / 65.4%  90.0 / 71.1%   82.8 / 82.8%
5  449   4.9% (10.5%)            83.9 / 11.3%  54.9 / 21.9%   48.1 / 48.1%
5  2000  5.5% (8.2%)             99.8 / 57.2%  91.2 / 66.2%   83.2 / 83.2%
=  ====  ======================  ============  =============  ============

Where the same items flip in every model (rho 1) the S models carry no more evidence than one, and the mean test
is the one-model test; the item score test costs power only where few items flip (S 5, 449 items, discordance
0.002, independent models: type-I 0.7% with equal models).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from boundfinder.bounds import paired
from boundfinder.errors import BoundfinderError

__all__ = [
    "GRAPH_UNIFORM_WEIGHT",
    "MODEL_COMBINES",
    "PROCEDURES",
    "continuous_p_values",
    "declared_safe",
    "drop_p_values",
    "model_bounds",
    "model_p_values",
]

PROCEDURES = ("fixed_cost", "fixed_validation", "fallback", "fallback_widest", "holm", "holm_top", "graph")
#: ``graph``: the fraction of the root's level passed to the uniform chain (the rest goes to the other chain)
GRAPH_UNIFORM_WEIGHT = 0.8
#: the claims about S fixed models: their mean drop (the default) or every model's drop
MODEL_COMBINES = ("mean", "each")


def drop_p_values(correct: np.ndarray, baseline: np.ndarray, tolerance: float) -> np.ndarray:
    """One-sided p-values of ``H_k: drop_k > tolerance`` for each candidate.

    ``correct``: (K, N) or (K, S, N) per-item results of the candidates; ``baseline``: (N,) or (S, N) of the
    full-precision model(s) on the same items. ``p_k`` is the smallest ``alpha`` at which the candidate's
    one-sided upper bound (as :func:`~boundfinder.bounds.estimate_bound` computes it with ``method="auto"``) is
    at most ``tolerance``: for one seed the score test of ``drop = tolerance`` (Tango's statistic, whose inversion
    is the ``score`` bound), ``Phi(z(tolerance))``; for several seeds the largest of the crossed-variance ``t``
    test's, the score test's on the pooled pairs and the score test's on the items' mean differences (the ``t``
    bound is floored at both score bounds).

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
    return _drop_p_values_of(baseline[None].astype(float) - correct.astype(float), tolerance)


def _drop_p_values_of(diff: np.ndarray, tolerance: float) -> np.ndarray:
    """:func:`drop_p_values` from ``baseline - correct`` (K, S, N) in {-1, 0, 1} (what the simulations draw)."""
    _k, s, n = diff.shape
    b10 = (diff > 0).sum(axis=(1, 2)).astype(float)
    b01 = (diff < 0).sum(axis=(1, 2)).astype(float)
    p = stats.norm.cdf(paired._tango_z(b10, b01, float(s * n), tolerance))
    if s > 1:
        grand, var, df = paired._crossed_mean(diff)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(var > 0, (tolerance - grand) / np.sqrt(var), np.where(grand < tolerance, np.inf, -np.inf))
        items = paired._item_score_z(*paired._item_counts(np.rint(diff).astype(np.int8)), tolerance)
        p = np.maximum(np.maximum(p, stats.t.sf(t, df)), stats.norm.cdf(items))
    return p


def _model_diff(correct: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """``baseline - correct`` as (K, S, N) int8 in {-1, 0, 1}, after checking the shapes."""
    correct = np.asarray(correct, dtype=bool)
    baseline = np.asarray(baseline, dtype=bool)
    if correct.ndim != 3 or baseline.shape != correct.shape[1:]:
        raise BoundfinderError(
            f"correct must be (K, S, N) and baseline (S, N): S models on the same N items, got shapes "
            f"{correct.shape} and {baseline.shape}."
        )
    return baseline[None].astype(np.int8) - correct.astype(np.int8)


def _check_combine(combine: str) -> None:
    if combine not in MODEL_COMBINES:
        raise BoundfinderError(f"combine must be one of {', '.join(MODEL_COMBINES)}, got {combine!r}.")


def _mean_t(diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over items of the per-item mean difference over the models, and its standard error (df N - 1)."""
    d = diff.mean(axis=1)  # (K, N)
    n = d.shape[1]
    # one item shows no spread: an infinite standard error, so that the t test decides nothing (p = 1/2)
    return d.mean(axis=1), d.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.full(d.shape[0], np.inf)


def model_p_values(correct: np.ndarray, baseline: np.ndarray, tolerance: float, combine: str = "mean") -> np.ndarray:
    """p-values of a claim about S fixed trained models, the test items the only randomness.

    ``correct``: (K, S, N) per-item results of the candidates applied to each of the S models; ``baseline``:
    (S, N) of the S full-precision models on the same items.

    ``combine="mean"`` (default): ``H_k: mean_s drop_ks > tolerance``, the drop averaged over these S models (of a
    model picked at random among them). With ``d_i`` the item's mean over the models of ``baseline - correct``
    (in [-1, 1], i.i.d. over items), ``p_k`` is the largest of three one-sided tests of ``E[d] = tolerance``: the
    t test over the N items (df N - 1); the score test on the S N pooled pairs (the floor of
    :func:`boundfinder.bounds.paired.t_bounds`); the score test on the N items' values ``d_i``
    (:func:`boundfinder.bounds.paired._item_score_z`, Tango's statistic on the support ``-1, -1 + 1/S, ..., 1``),
    which counts items, not pairs, so it holds whatever the flips' correlation across models is (the other two
    fail when the same few items flip in every model). With S = 1 it is the one-seed score test,
    :func:`drop_p_values`, exactly.

    ``combine="each"``: ``H_k: some model s has drop_ks > tolerance``, every model within the tolerance. The claim
    is an intersection of S one-model claims, so the intersection-union test (Berger 1982) applies: ``p_k`` is the
    largest of the S one-model p-values (the one-seed score test), with no multiplicity correction.

    Neither claim is about the training recipe (the seeds' mean drop over trainings): that one is
    :func:`drop_p_values` on (K, S, N). :func:`model_bounds` gives the bounds these tests invert.

    >>> base = np.ones((2, 400), dtype=bool)
    >>> safe, lossy = base[0], np.arange(400) % 10 != 0  # no drop; a drop of 0.1
    >>> cand = np.stack([[safe, safe], [safe, lossy]])
    >>> p = model_p_values(cand, base, 0.01, combine="each")
    >>> bool(p[0] < 0.05), bool(p[1] > 0.99)  # the second candidate fails on model 2: every-model claim fails
    (True, True)
    >>> bool(model_p_values(cand, base, 0.01)[1] > 0.99)  # and its mean drop over the two models is 0.05
    True
    >>> one = model_p_values(np.stack([[safe], [lossy]]), base[:1], 0.01)
    >>> bool((one == drop_p_values(np.stack([safe, lossy]), base[0], 0.01)).all())  # S = 1: the one-seed test
    True
    """
    _check_combine(combine)
    return _model_p_values_of(_model_diff(correct, baseline), tolerance, combine)


def _model_p_values_of(diff: np.ndarray, tolerance: float, combine: str) -> np.ndarray:
    """:func:`model_p_values` from ``baseline - correct`` (K, S, N) in {-1, 0, 1} (what the simulations draw)."""
    _k, s, n = diff.shape
    if s == 1 or combine == "each":
        # one-seed score p-values, each model alone, as drop_p_values computes them from the same counts
        b10 = (diff > 0).sum(axis=2).astype(float)
        b01 = (diff < 0).sum(axis=2).astype(float)
        return stats.norm.cdf(paired._tango_z(b10, b01, float(n), tolerance)).max(axis=1)
    mean, se = _mean_t(diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, (tolerance - mean) / se, np.where(mean < tolerance, np.inf, -np.inf))
    p_t = stats.t.sf(t, max(n - 1, 1))
    b10 = (diff > 0).sum(axis=(1, 2)).astype(float)
    b01 = (diff < 0).sum(axis=(1, 2)).astype(float)
    p_pooled = stats.norm.cdf(paired._tango_z(b10, b01, float(s * n), tolerance))
    p_items = stats.norm.cdf(paired._item_score_z(*paired._item_counts(diff), tolerance))
    return np.maximum(np.maximum(p_t, p_pooled), p_items)


def model_bounds(correct: np.ndarray, baseline: np.ndarray, alpha: float,
                 combine: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """One-sided (lower, upper) bounds, each at level ``alpha`` alone, of the claim :func:`model_p_values` tests.

    Shapes as in :func:`model_p_values`; returns two (K,) arrays. ``combine="mean"``: bounds on the drop averaged
    over the S models, the widest of the three bounds whose tests it combines (t over the items, score on the
    pooled pairs, score on the items' mean differences); for S = 1 the one-seed ``score`` bounds.
    ``combine="each"``: bounds on the largest of the S models' drops: the largest one-model ``score`` upper bound
    at ``alpha`` (the intersection-union test's), the largest lower bound at ``alpha / S`` (Bonferroni: the
    largest drop is at least every model's). For either, ``model_p_values(...) <= alpha`` exactly when the upper
    bound is at most the tolerance (up to the bisections' 2**-60).

    Three models on 449 items; a candidate with no flip, and one that loses 7 items, on different items in each
    model (a mean drop of 7 / 1347 = 0.0052):

    >>> base = np.ones((3, 449), dtype=bool)
    >>> cand = np.stack([base, np.arange(3 * 449).reshape(3, 449) % 200 != 0])
    >>> for combine in ("mean", "each"):
    ...     print(combine, [round(float(u), 4) for u in model_bounds(cand, base, 0.05, combine)[1]])
    mean [0.006, 0.0112]
    each [0.006, 0.0166]

    With no flip the mean's bound is what 449 items allow, not the 0.0020 of 1,347 independent pairs: nothing
    shows that the models would not lose the same items. The decisions are the p-values':

    >>> upper = model_bounds(cand, base, 0.2)[1]
    >>> (model_p_values(cand, base, 0.01) <= 0.2).tolist(), (upper <= 0.01).tolist()
    ([True, True], [True, True])
    """
    _check_combine(combine)
    if not 0 < alpha < 1:
        raise BoundfinderError(f"`0 < alpha < 1` must hold, but got alpha={alpha!r}.")
    diff = _model_diff(correct, baseline)
    _k, s, n = diff.shape
    if s == 1 or combine == "each":
        counts = [((diff[:, m] > 0).sum(axis=1), (diff[:, m] < 0).sum(axis=1)) for m in range(s)]
        upper = np.max([paired.score_bounds(b10, b01, n, alpha)[1] for b10, b01 in counts], axis=0)
        lower = np.max([paired.score_bounds(b10, b01, n, alpha / s)[0] for b10, b01 in counts], axis=0)
        return lower, upper
    mean, se = _mean_t(diff)
    half = stats.t.ppf(1.0 - alpha, max(n - 1, 1)) * se
    pooled = paired.score_bounds((diff > 0).sum(axis=(1, 2)), (diff < 0).sum(axis=(1, 2)), s * n, alpha)
    items = paired._item_score_bounds(*paired._item_counts(diff), alpha)
    return np.minimum(np.minimum(mean - half, pooled[0]), items[0]), np.maximum(
        np.maximum(mean + half, pooled[1]), items[1])


def continuous_p_values(scores: np.ndarray, baseline: np.ndarray, tolerance: float, *, higher_is_better: bool = True,
                        relative: bool = False, fixed_models: bool = False, n_boot: int = 2000, random_state: int = 0,
                        iters: int = 50) -> np.ndarray:
    """One-sided p-values of ``H_k: drop_k > tolerance`` for continuous per-item scores (a loss, an error).

    ``scores``: (K, S, N) or (K, N) float per-item scores of the candidates; ``baseline``: (S, N) or (N,) of the
    full-precision model(s) on the same items. The drop is the paired mean difference in the metric's direction
    (``higher_is_better=False``: the increase of a loss), in its units, or a fraction of the baseline mean with
    ``relative``. ``p_k`` is the smallest ``alpha`` at which the upper bound
    :func:`~boundfinder.bounds.estimate_bound` computes for continuous scores (``method="studentized"``: the wider
    of the bootstrap-t bound over items and the t bound; ``n_boot`` and ``random_state`` as there) is at most the
    tolerance, found by ``iters`` halvings of ``alpha`` (the bound falls as ``alpha`` grows): ``p_k <= alpha``
    is the bound's own decision at every level, to ``2**-iters``.

    ``fixed_models`` (the search's claim ``model``, S > 1): the S models are fixed and the items random, the claim
    is about the drop averaged over the models; each item's scores are averaged over the models first, and the
    bound is the one-seed bound over those N item means (the t part over items, df N - 1, as
    :func:`model_p_values`). Otherwise several seeds are a sample of trainings: the crossed seeds x items t part.

    >>> rng = np.random.default_rng(0)
    >>> base = rng.lognormal(0.0, 1.0, 500)
    >>> cand = np.stack([base + 0.001, base + 0.5])  # a loss that rises by 0.001, and by 0.5
    >>> p = continuous_p_values(cand, base, 0.05, higher_is_better=False)
    >>> bool(p[0] < 1e-6), bool(p[1] == 1.0)
    (True, True)
    """
    from boundfinder.bounds.estimate import _continuous_bounds

    scores = np.asarray(scores, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    if scores.ndim == 2:
        scores = scores[:, None, :]
    if baseline.ndim == 1:
        baseline = baseline[None]
    if scores.ndim != 3 or baseline.shape != scores.shape[1:]:
        raise BoundfinderError(
            f"scores must be (K, N) or (K, S, N) and baseline (N,) or (S, N) on the same items, got shapes "
            f"{scores.shape} and {baseline.shape}.")
    for name, values in (("scores", scores), ("baseline", baseline)):
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            where = ", ".join(f"{axis} {int(i)}" for axis, i in zip(
                ("candidate", "seed", "item") if name == "scores" else ("seed", "item"), bad[0], strict=True))
            raise BoundfinderError(f"continuous scores must be finite (a NaN or infinite per-item score has no mean), "
                                   f"but {name} holds {values[tuple(bad[0])]} at {where}.")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise BoundfinderError(f"tolerance must be a finite number > 0, but got {tolerance!r}.")
    if fixed_models and scores.shape[1] > 1:
        scores, baseline = scores.mean(axis=1, keepdims=True), baseline.mean(axis=0, keepdims=True)
    if relative and not baseline.mean() > 0:
        raise BoundfinderError(f"a relative tolerance needs a baseline mean > 0, but the full-precision models' mean "
                               f"is {baseline.mean():.6g}; give an absolute tolerance in the metric's units.")
    diff = (1.0 if higher_is_better else -1.0) * (baseline[None] - scores)  # (K, S, N): the drop per item
    k = diff.shape[0]

    def upper(alphas: np.ndarray) -> np.ndarray:
        """Candidate j's upper bound at alphas[j] (one set of bootstrap replicates, the estimate's)."""
        bounds = _continuous_bounds("studentized", diff, baseline, list(alphas), relative, n_boot, random_state)
        return np.array([bounds[j][1][j] for j in range(k)])

    # p is 1 where not even alpha -> 1 certifies; otherwise the halvings close on the smallest alpha that does
    top = 1.0 - 2.0**-iters
    p = np.where(upper(np.full(k, top)) <= tolerance, top, 1.0)
    lo, hi = np.zeros(k), p.copy()
    todo = p < 1.0
    for _ in range(iters):
        if not todo.any():
            break
        mid = 0.5 * (lo + hi)
        ok = upper(np.where(todo, mid, top)) <= tolerance
        hi = np.where(todo & ok, mid, hi)
        lo = np.where(todo & ~ok, mid, lo)
    return np.where(todo, hi, p)


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
