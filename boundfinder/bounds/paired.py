"""Per-level confidence bounds on the accuracy drop from paired (baseline, reduced-precision) measurements.

Every function here works on one-sided bounds at level ``alpha`` and is vectorised over levels. The drop
of one item is ``D = baseline_correct - reduced_correct`` in {-1, 0, 1}; its mean over items is
``(b10 - b01) / N`` where ``b10`` counts items right at baseline but wrong at reduced precision and ``b01``
the reverse (the discordant pairs of McNemar's test).

Methods:

* ``score`` (one seed): inversion of Tango's (1998) score test for a difference of paired proportions.
  Approximate, but close to nominal even with few discordant pairs; the study in ``benchmarks/`` checks it.
* ``exact`` (one seed): conservative and exact. McNemar's conditional binomial gives a Clopper–Pearson
  bound on ``pi = p10 / (p10 + p01)``, a second Clopper–Pearson bound covers the discordant rate
  ``pd = p10 + p01``, each at ``alpha / 2``; the drop ``pd * (2 pi - 1)`` is bounded by their product
  (union bound, so coverage >= 1 - alpha for every N and every true table).
* ``t`` (several seeds): a t-interval over per-seed drops, widened by the variance that seeds share
  through the common test items (crossed seeds x items random-effects ANOVA, Satterthwaite degrees of
  freedom), and never tighter than the score bound on the pooled pairs (which keeps the discreteness of
  rare flips in view when every seed happens to agree on every item).
* ``bootstrap`` (any seeds): hierarchical percentile bootstrap, seeds resampled first, then items.

`accuracy_bounds` bounds the baseline accuracy for relative drops with the same crossed variance.

Continuous per-item scores (loss, error, a per-item metric): the drop of one item is any real number, in the
metric's direction. `studentized_bounds` (``method="studentized"``, the default for them) takes the wider of
a bootstrap-t bound over items (skewness- and tail-aware) and the crossed t bound of `mean_t_bounds`
(between-seed variance); the study in ``benchmarks/calibration.py`` is why.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

__all__ = [
    "accuracy_bounds",
    "bootstrap_bounds",
    "clopper_pearson",
    "exact_bounds",
    "mean_t_bounds",
    "score_bounds",
    "studentized_bounds",
    "t_bounds",
]


def clopper_pearson(k, n, alpha, side):
    """One-sided Clopper–Pearson bound on a binomial proportion, vectorised.

    ``side="upper"`` gives the largest p with P(X <= k | p) >= alpha; ``"lower"`` the smallest p with
    P(X >= k | p) >= alpha. Non-integer ``k`` is allowed (the beta quantile is continuous in it), which the
    noise-floor computation uses.

    >>> round(float(clopper_pearson(0, 300, 0.05, "upper")), 5)  # 1 - 0.05 ** (1 / 300)
    0.00994
    """
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    k, n = np.broadcast_arrays(k, n)
    out = np.empty(k.shape)
    if side == "upper":
        full = k >= n
        out[full] = 1.0
        ok = ~full & (n > 0)
        out[ok] = special.betaincinv(k[ok] + 1.0, n[ok] - k[ok], 1.0 - alpha)
        out[n <= 0] = 1.0
    elif side == "lower":
        none = k <= 0
        out[none] = 0.0
        ok = ~none & (n > 0)
        out[ok] = special.betaincinv(k[ok], n[ok] - k[ok] + 1.0, alpha)
        out[n <= 0] = 0.0
    else:  # pragma: no cover - internal helper, callers pass literals
        raise ValueError(f"side must be 'upper' or 'lower', got {side!r}")
    return out


def exact_bounds(b10, b01, n, alpha):
    """Exact conservative (lower, upper) bounds on the drop ``(p10 - p01)`` for one seed.

    Upper: with ``pi_U`` the McNemar (conditional binomial) Clopper–Pearson upper bound on
    ``p10 / (p10 + p01)`` at ``alpha / 2`` and ``pd_U`` the Clopper–Pearson upper bound on the discordant rate
    at ``alpha / 2``, the drop ``pd (2 pi - 1)`` is at most ``pd_U (2 pi_U - 1)`` when ``pi_U >= 1/2``, and at
    most 0 otherwise (then the drop is negative whatever ``pd`` is). The lower bound mirrors it.
    Both hold jointly with the union bound, so each one-sided statement has coverage >= 1 - alpha.

    >>> lo, up = exact_bounds(0, 0, 300, 0.05)  # no discordant pair: 1 - 0.025 ** (1 / 300)
    >>> round(float(up[0]), 5), float(lo[0])
    (0.01222, -1.0)
    """
    b10 = np.atleast_1d(np.asarray(b10, dtype=float))
    b01 = np.atleast_1d(np.asarray(b01, dtype=float))
    nd = b10 + b01
    half = alpha / 2.0
    pd_up = clopper_pearson(nd, n, half, "upper")
    pd_lo = clopper_pearson(nd, n, half, "lower")
    # With no discordant pair the conditional binomial carries no information: pi is anywhere in [0, 1].
    pi_up = np.where(nd > 0, clopper_pearson(b10, nd, half, "upper"), 1.0)
    pi_lo = np.where(nd > 0, clopper_pearson(b10, nd, half, "lower"), 0.0)
    g_up = 2.0 * pi_up - 1.0
    g_lo = 2.0 * pi_lo - 1.0
    # Each side uses only events it can afford: pi on the right side of 1/2 needs the matching pd bound;
    # on the wrong side the trivial facts pd >= 0 (upper) and pd <= 1 (lower) suffice.
    upper = np.where(g_up >= 0, pd_up * g_up, 0.0)
    lower = np.where(g_lo >= 0, pd_lo * g_lo, g_lo)
    return lower, upper


def _tango_z(b10, b01, n, delta):
    """Tango's score statistic for H0: p10 - p01 = delta, with p01 at its constrained MLE."""
    a = 2.0 * n
    b = -b10 - b01 + (2.0 * n - b10 + b01) * delta
    c = -b01 * delta * (1.0 - delta)
    disc = np.maximum(b * b - 4.0 * a * c, 0.0)
    q = np.maximum((-b + np.sqrt(disc)) / (2.0 * a), 0.0)
    var = n * (2.0 * q + delta * (1.0 - delta))
    num = b10 - b01 - n * delta
    with np.errstate(divide="ignore", invalid="ignore"):
        z = num / np.sqrt(var)
    # A zero variance only happens at delta = +-1 with no pair on the other side: the sign decides.
    return np.where(var > 0, z, np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0)))


def score_bounds(b10, b01, n, alpha, iters=60):
    """(lower, upper) one-sided bounds on ``p10 - p01`` by inverting Tango's score test, vectorised.

    The upper bound is the largest ``delta`` the one-sided score test at ``alpha`` does not reject:
    ``z(delta) >= -z_{1-alpha}``; found by bisection (``z`` decreases in ``delta``), 60 halvings of [-1, 1].

    >>> lo, up = score_bounds(0, 0, 300, 0.05)  # no discordant pair: n delta / (1 - delta) = z^2
    >>> z2 = 1.6448536269514722 ** 2
    >>> round(float(up[0]), 6) == round(z2 / (300 + z2), 6)
    True
    """
    b10 = np.atleast_1d(np.asarray(b10, dtype=float))
    b01 = np.atleast_1d(np.asarray(b01, dtype=float))
    n = np.broadcast_to(np.asarray(n, dtype=float), b10.shape)
    zc = stats.norm.ppf(1.0 - alpha)
    est = (b10 - b01) / n

    def solve(target_sign):
        # Upper: search [est, 1] for z(delta) = -zc; lower: search [-1, est] for z(delta) = +zc.
        if target_sign > 0:
            lo, hi = est.copy(), np.ones_like(est)
        else:
            lo, hi = -np.ones_like(est), est.copy()
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            z = _tango_z(b10, b01, n, mid)
            if target_sign > 0:
                inside = z >= -zc
                lo = np.where(inside, mid, lo)
                hi = np.where(inside, hi, mid)
            else:
                inside = z <= zc
                hi = np.where(inside, mid, hi)
                lo = np.where(inside, lo, mid)
        return hi if target_sign > 0 else lo

    return solve(-1), solve(+1)


def _crossed_mean(values):
    """Grand mean over seeds and items, its variance and Satterthwaite degrees of freedom, vectorised.

    ``values`` has shape (L, S, N) with S >= 2. The variance of the grand mean in a crossed seeds x items
    design is ``sigma_seed^2 / S + sigma_item^2 / N + sigma_resid^2 / (S N)``. The sample variance of the
    per-seed means estimates the first and last terms together (``var(m_s) / S``), so it is always kept; the
    shared-item term ``max(0, MS_item - MS_resid) / (S N)`` is added when positive. Returns (grand, var, df),
    each of shape (L,).
    """
    _n_levels, s, n = values.shape
    seed_means = values.mean(axis=2)  # (L, S)
    item_means = values.mean(axis=1)  # (L, N)
    grand = seed_means.mean(axis=1)
    ms_seed = n * seed_means.var(axis=1, ddof=1)
    ms_item = s * item_means.var(axis=1, ddof=1)
    resid = values - seed_means[:, :, None] - item_means[:, None, :] + grand[:, None, None]
    ms_resid = (resid**2).sum(axis=(1, 2)) / ((s - 1) * (n - 1))
    item_extra = np.maximum(ms_item - ms_resid, 0.0)
    var = (ms_seed + item_extra) / (s * n)
    # Satterthwaite: var = sum c_k MS_k; the item part enters as (MS_item - MS_resid) only when positive.
    c = 1.0 / (s * n)
    denom = (c * ms_seed) ** 2 / (s - 1)
    use_item = item_extra > 0
    denom = denom + np.where(
        use_item, (c * ms_item) ** 2 / (n - 1) + (c * ms_resid) ** 2 / ((s - 1) * (n - 1)), 0.0
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denom > 0, var**2 / denom, np.inf)
    # Floor at the seed term's own S - 1: the approximation can dip below it only through the -MS_resid part,
    # which is a small correction; an all-equal array (denom 0) gets the large-sample quantile.
    df = np.clip(np.nan_to_num(df, nan=s - 1.0, posinf=1e9), s - 1.0, None)
    return grand, var, df


def _item_counts(diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts (K, 2S + 1) of the items' mean differences over the models, and those values ``-1, ..., 1`` in
    steps of ``1 / S``."""
    k, s, _n = diff.shape
    j = 2 * s + 1
    cells = diff.sum(axis=1, dtype=np.int64) + s + j * np.arange(k)[:, None]  # row r's value v at r j + v + s
    return np.bincount(cells.ravel(), minlength=k * j).reshape(k, j).astype(float), np.arange(-s, s + 1) / s


def _score_z_below(counts: np.ndarray, values: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """:func:`_item_score_z` where the sample mean is at most ``delta`` (the restricted fit moves mass up)."""
    n = counts.sum(axis=1)
    w = values[None, :] - delta[:, None]  # (K, J)
    w_end = 1.0 - delta  # the support's top, 1, where a fit that the observed values cannot reach puts mass
    seen = counts > 0
    # Lagrange multiplier of the mean constraint, in [-n / w_end, 0]: p_j = c_j / (n + lam w_j). g(lam) =
    # sum_j c_j w_j / (n + lam w_j) decreases in lam; no root above -n / w_end means the fit needs mass at 1.
    lo, hi = -n / np.where(w_end > 0, w_end, 1.0), np.zeros_like(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            g = np.where(seen, counts * w / (n[:, None] + mid[:, None] * w), 0.0).sum(axis=1)
            lo, hi = np.where(g > 0, mid, lo), np.where(g > 0, hi, mid)
        p = np.where(seen, counts / (n[:, None] + hi[:, None] * w), 0.0)
    p_end = np.maximum(1.0 - p.sum(axis=1), 0.0)
    var = (p * w**2).sum(axis=1) + p_end * w_end**2  # the restricted fit's variance about delta
    num = counts @ values - n * delta
    with np.errstate(divide="ignore", invalid="ignore"):
        z = num / np.sqrt(n * var)
    # delta = 1 (no room above) or a fit concentrated on delta: the sign decides, as in _tango_z
    return np.where((var > 0) & (w_end > 0), z, np.where(num < 0, -np.inf, np.where(num > 0, np.inf, 0.0)))


def _item_score_z(counts: np.ndarray, values: np.ndarray, delta) -> np.ndarray:
    """Score statistic of ``H0: E[d] = delta`` for i.i.d. item values ``d`` on a finite support in [-1, 1].

    ``counts`` (K, J) of the ``values`` (J,), ascending, ``-1`` and ``1`` among them; ``delta`` scalar or (K,).
    The multinomial score test with the variance at the restricted maximum-likelihood fit (mean ``delta``): the
    empirical-likelihood tilt of the observed values, plus mass at the support's end (1 above the sample mean, -1
    below) where the tilt cannot reach ``delta``. On the support {-1, 0, 1} (one model) it is Tango's statistic
    (:func:`boundfinder.bounds._tango_z`, to rounding), whose restricted fit is the same; decreasing in
    ``delta``.
    """
    n = counts.sum(axis=1)
    delta = np.broadcast_to(np.asarray(delta, dtype=float), n.shape)
    mean = counts @ values / n
    below = _score_z_below(counts, values, delta)
    above = -_score_z_below(counts[:, ::-1], -values[::-1], -delta)  # mirrored: the fit moves mass down
    return np.where(mean < delta, below, np.where(mean > delta, above, 0.0))


def _item_score_bounds(counts: np.ndarray, values: np.ndarray, alpha: float,
                       iters: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) one-sided bounds inverting :func:`_item_score_z` at ``alpha``: 60 halvings, as
    :func:`boundfinder.bounds.paired.score_bounds` does for Tango's statistic."""
    zc = stats.norm.ppf(1.0 - alpha)
    mean = counts @ values / counts.sum(axis=1)
    lo, hi = mean.copy(), np.ones_like(mean)  # upper: the largest delta with z(delta) >= -zc
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        inside = _item_score_z(counts, values, mid) >= -zc
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    upper = hi
    lo, hi = -np.ones_like(mean), mean.copy()  # lower: the smallest delta with z(delta) <= zc
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        inside = _item_score_z(counts, values, mid) <= zc
        lo, hi = np.where(inside, lo, mid), np.where(inside, mid, hi)
    return lo, upper


def t_bounds(diff, alpha, pooled_floor=True):
    """(lower, upper) bounds on the mean drop over seeds and items for several seeds; also returns df.

    ``diff`` has shape (L, S, N) with values in {-1, 0, 1}. The variance of the grand mean is the crossed
    seeds x items one (`_crossed_mean`): per-seed drops plus the shared-item component, Satterthwaite degrees
    of freedom; with seed variance dominating they fall to ``S - 1``: the plain t-interval over seeds.
    ``pooled_floor`` keeps the bounds no tighter than two score bounds, because the variance estimate is zero
    (or nearly so) when few items flip: the score bounds on the pooled ``S N`` pairs, and the score bounds on the
    N items' mean differences over the seeds (`_item_score_bounds`), which count items, not pairs, and so hold
    when the same few items flip in every seed (where the pooled pairs overstate the evidence S-fold: measured
    in ``benchmarks/model_claim.py``, 10.4% type-I error at a nominal 5% with S = 3 and N = 449 without it).
    """
    diff = np.asarray(diff, dtype=float)
    _n_levels, s, n = diff.shape
    grand, var, df = _crossed_mean(diff)
    tq = stats.t.ppf(1.0 - alpha, df)
    half = tq * np.sqrt(var)
    lower, upper = grand - half, grand + half
    if pooled_floor:
        b10 = (diff > 0).sum(axis=(1, 2))
        b01 = (diff < 0).sum(axis=(1, 2))
        s_lo, s_up = score_bounds(b10, b01, s * n, alpha)
        i_lo, i_up = _item_score_bounds(*_item_counts(np.rint(diff).astype(np.int8)), alpha)
        lower = np.minimum(np.minimum(lower, s_lo), i_lo)
        upper = np.maximum(np.maximum(upper, s_up), i_up)
    return lower, upper, df


def accuracy_bounds(correct, alpha):
    """One-sided (lower, upper) bounds on a mean accuracy from a boolean (S, N) seeds x items array.

    The accuracy estimated is the mean over the population of items and (for S >= 2) of seeds, so items
    shared by all seeds count once: the bounds are the wider of Clopper–Pearson on the N items (each item
    contributing its mean over seeds) and, for S >= 2, the t bound with the crossed seeds x items variance
    used for the drop (`t_bounds`). A baseline repeated identically for every seed (an ``(N,)`` baseline
    broadcast to S rows) therefore gets the same bounds for every S >= 2, never narrower than N items allow.

    >>> base = np.arange(300) % 10 != 0  # 270 of 300 right
    >>> lo1, _ = accuracy_bounds(base[None], 0.05)
    >>> lo5, _ = accuracy_bounds(np.broadcast_to(base, (5, 300)), 0.05)
    >>> round(lo1, 4), round(lo5, 4)  # not the 0.8863 that 1500 independent items would give
    (0.8668, 0.8668)
    """
    correct = np.asarray(correct)
    s, n = correct.shape
    k = float(correct.mean(axis=0).sum())
    lo = float(clopper_pearson(k, n, alpha, "lower"))
    up = float(clopper_pearson(k, n, alpha, "upper"))
    if s > 1:
        grand, var, df = _crossed_mean(correct[None].astype(float))
        half = float(stats.t.ppf(1.0 - alpha, df[0]) * np.sqrt(var[0]))
        lo, up = min(lo, float(grand[0]) - half), max(up, float(grand[0]) + half)
    return max(lo, 0.0), min(up, 1.0)


def bootstrap_bounds(diff, alpha, n_boot=2000, random_state=0):
    """(lower, upper) percentile bounds from a hierarchical bootstrap: seeds resampled, then items.

    ``diff`` has shape (L, S, N). Each replicate draws S seeds with replacement and item weights once for all
    levels (the pairing across levels is kept); the replicate drop is the weighted mean over (seed, item)
    cells. Items use Poisson(1) weights (the "Poisson bootstrap", equivalent to resampling N items for large
    N and much faster than multinomial draws). With S = 1 this is the ordinary paired item bootstrap. With
    few seeds the seed stage sees only S values, so it under-states between-seed variance by about
    ``(S - 1) / S`` (the study measures the consequence).
    """
    diff = np.asarray(diff, dtype=float)
    _, s, n = diff.shape
    rng = np.random.default_rng(random_state)
    w_items = rng.poisson(1.0, size=(n, n_boot)).astype(float)  # (N, B)
    w_items /= np.maximum(w_items.sum(axis=0, keepdims=True), 1.0)
    w_seeds = rng.multinomial(s, np.full(s, 1.0 / s), size=n_boot) / s  # (B, S)
    # One 2-D product: numpy's batched (L, S, N) @ (N, B) is ~80x slower than the reshaped one.
    per_seed = (diff.reshape(-1, n) @ w_items).reshape(diff.shape[0], s, n_boot)  # (L, S, B)
    reps = np.einsum("lsb,bs->lb", per_seed, w_seeds)
    lower = np.quantile(reps, alpha, axis=1)
    upper = np.quantile(reps, 1.0 - alpha, axis=1)
    return lower, upper


# ------------------------------------------------------------------------------------------ continuous scores
def mean_t_bounds(diff, alpha):
    """(lower, upper) t bounds on the grand mean of float ``diff`` (L, S, N), any S >= 1; also returns df.

    S = 1: the paired t bound over the N items (df N - 1). S >= 2: the crossed seeds x items variance of
    `_crossed_mean` with Satterthwaite df (the ``t`` method without its binary pooled-score floor). Symmetric:
    it ignores skewness, which `studentized_bounds` adds.
    """
    diff = np.asarray(diff, dtype=float)
    _n_levels, s, n = diff.shape
    if s == 1:
        x = diff[:, 0]
        grand, var, df = x.mean(axis=1), x.var(axis=1, ddof=1) / n, np.full(x.shape[0], n - 1.0)
    else:
        grand, var, df = _crossed_mean(diff)
    half = stats.t.ppf(1.0 - alpha, df) * np.sqrt(var)
    return grand - half, grand + half, df


def _bootstrap_t(x, n_boot, random_state):
    """Bootstrap replicates of the studentized mean of each row of ``x`` (L, N): ``(m* - m) / se*``, (L, B).

    Items are resampled with replacement (multinomial counts built from integer draws, in chunks of about
    2.5 million cells so memory stays bounded), the same resample for every row, so levels stay paired. A
    replicate whose items are all equal has se* = 0: its statistic is 0 when m* = m and -inf / +inf otherwise
    (`np.quantile` with ``method="lower"/"higher"`` never interpolates across an infinity).
    """
    n_rows, n = x.shape
    rng = np.random.default_rng(random_state)
    centred = x - x.mean(axis=1, keepdims=True)
    sq = centred**2
    out = np.empty((n_rows, n_boot))
    chunk = max(1, 2_500_000 // n)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        w = counts.T.astype(float)  # (N, b)
        m = centred @ w / n  # (L, b): m* - m
        var = np.maximum((sq @ w - n * m**2) / (n - 1), 0.0)
        se = np.sqrt(var / n)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = m / se
        # Relative to the data's own scale, a replicate spread below 1e-12 is a constant resample.
        scale = np.sqrt(sq.mean(axis=1, keepdims=True))
        flat = se <= 1e-12 * np.maximum(scale, 1e-300)
        t = np.where(flat, np.where(m > 0, np.inf, np.where(m < 0, -np.inf, 0.0)), t)
        out[:, start : start + b] = t
    return out


def studentized_bounds(diff, alphas, n_boot=2000, random_state=0):
    """One-sided (lower, upper) bounds on the grand mean of float ``diff`` (L, S, N) at each of ``alphas``.

    Two bounds, the wider of them kept on each side (each level alone):

    * the studentized (bootstrap-t) bound over items on the per-item means over seeds: the quantiles of
      ``(m* - m) / se*`` over ``n_boot`` item resamples (shared by all levels) replace the t quantiles, which
      corrects for skewed, heavy-tailed per-item differences (Hall 1988; Efron & Tibshirani 1993, ch. 12):
      when a few items lose much, resamples that miss them have small mean *and* small spread, so the lower
      tail of the statistic is long and the upper bound moves up. It sees item noise only.
    * the t bound of `mean_t_bounds`: with S >= 2 the crossed seeds x items variance and Satterthwaite df,
      which carries between-seed variance (symmetric; with few, skewed seeds no interval can be exact).

    When items dominate the noise the bootstrap-t bound is the binding one, when seeds dominate the t bound
    is: the maximum is valid whenever one of them is. Identical per-item differences give the exact mean as
    both bounds (no noise in the data). Translation-equivariant, so ``upper - mean`` is the noise floor.
    Returns a list of (lower, upper) pairs, one per alpha, from one set of replicates.
    """
    diff = np.asarray(diff, dtype=float)
    item_means = diff.mean(axis=1)  # (L, N)
    n = item_means.shape[1]
    m = item_means.mean(axis=1)
    se = item_means.std(axis=1, ddof=1) / np.sqrt(n)
    t_star = _bootstrap_t(item_means, n_boot, random_state)
    out = []
    for alpha in alphas:
        q_lo = np.quantile(t_star, alpha, axis=1, method="lower")
        q_hi = np.quantile(t_star, 1.0 - alpha, axis=1, method="higher")
        with np.errstate(invalid="ignore"):
            up_b = np.where(se > 0, m - q_lo * se, m)
            lo_b = np.where(se > 0, m - q_hi * se, m)
        lo_t, up_t, _ = mean_t_bounds(diff, alpha)
        out.append((np.minimum(lo_b, lo_t), np.maximum(up_b, up_t)))
    return out
