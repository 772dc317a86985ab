"""`estimate_bound`: the minimum safe bits, with a confidence statement, from paired measurements."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from boundfinder.bounds import paired
from boundfinder.bounds.curves import CurveFit, fit_curves
from boundfinder.errors import StatisticsError

__all__ = ["METHODS", "STATUSES", "BoundEstimate", "LevelBound", "estimate_bound"]

METHODS = ("auto", "score", "exact", "t", "bootstrap", "curve")
STATUSES = ("ok", "below_range", "above_range", "undetermined")
_ONE_SEED = ("score", "exact")
_MANY_SEEDS = ("t",)


def _f(v):
    """Plain float, or None for NaN / inf (JSON has neither)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass(frozen=True, kw_only=True)
class LevelBound:
    """One tested level: observed accuracy and drop, one-sided confidence bounds on the true drop.

    ``lower``/``upper`` are one-sided bounds at the estimate's confidence (each alone holds with that
    confidence). ``noise_floor`` is the upper bound this level would get if its observed drop were zero with
    the same noise (discordant pairs, seed spread): the smallest drop it could certify. ``declared_safe``
    says whether the fixed-sequence procedure declared it safe.
    """

    bits: int
    accuracy: float
    drop: float
    lower: float
    upper: float
    noise_floor: float
    declared_safe: bool

    def summary(self) -> dict:
        """JSON-safe dict."""
        return {
            "bits": int(self.bits),
            "accuracy": _f(self.accuracy),
            "drop": _f(self.drop),
            "lower": _f(self.lower),
            "upper": _f(self.upper),
            "noise_floor": _f(self.noise_floor),
            "declared_safe": bool(self.declared_safe),
        }


@dataclass(frozen=True, kw_only=True)
class BoundEstimate:
    """The minimum safe bits, how sure we are, and the evidence (result of `estimate_bound`).

    Definitions. Measurements are *paired*: for each tested level (and seed) which test items the
    reduced-precision model gets right, next to which the full-precision model gets right. The *drop* at a
    level is baseline accuracy minus accuracy at that level (absolute points, or divided by the baseline
    accuracy when ``relative``), averaged over seeds. A level is *safe* when its true drop is <=
    ``tolerance``. The *minimum safe bits* is the smallest tested level such that it and every larger
    tested level are declared safe at ``confidence``.

    Fields:

    * ``bits``: that level, or None when no tested level could be declared safe.
      Guarantee: with probability >= ``confidence`` every declared-safe level is truly safe, so ``bits`` is
      at or above the true minimum safe tested level (exact for ``method="exact"``; for the approximate
      methods as measured in ``docs/bounds.md``). Levels are tested from the highest down, each at the full
      level ``1 - confidence``, stopping at the first failure: a fixed-sequence (closed-testing) procedure
      whose family-wise error is at most ``1 - confidence`` without any Bonferroni division.
    * ``ci``: ``(low, high)``, a two-sided confidence interval (at ``confidence``) on the true minimum safe
      tested level. ``high`` is the same procedure run at ``(1 - confidence) / 2``; ``low`` is the level just
      above the highest level declared *unsafe* by a fixed sequence from the lowest level upward (lower
      confidence bound on the drop > tolerance), also at ``(1 - confidence) / 2``. ``high`` None means "above
      the tested range"; ``low`` None means every tested level is confidently unsafe. It is not a bootstrap of
      the decision (bootstraps of argmin-type statistics are unreliable); its coverage is measured in the
      study.
    * ``status``: ``ok`` (a bound inside the range), ``below_range`` (every tested level is safe: the true
      bound may be lower than ``bits``, test lower levels), ``above_range`` (the highest tested level is not
      certified: either its lower confidence bound exceeds the tolerance, or the data could have certified a
      small drop), ``undetermined`` (nothing certified, the highest level is not confidently unsafe, and not
      even a level with zero observed drop could have been certified: ``min_detectable_drop`` >
      ``tolerance``; more items or seeds are needed, not more levels).
    * ``min_detectable_drop``: the smallest noise floor over the levels (see `LevelBound`).
    * ``curve``: the fitted accuracy-vs-bits curve (`CurveFit`), None when fitting was skipped or failed.
    """

    bits: int | None
    ci: tuple
    status: str
    reason: str
    method: str
    confidence: float
    tolerance: float
    relative: bool
    n_items: int
    n_seeds: int
    baseline_accuracy: float
    min_detectable_drop: float
    levels: tuple = field(default=())
    curve: CurveFit | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise StatisticsError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.method not in METHODS[1:]:
            raise StatisticsError(f"method must be one of {METHODS[1:]} once resolved, got {self.method!r}")
        if (self.bits is None) != (self.status in ("above_range", "undetermined")):
            raise StatisticsError(
                f"bits is None exactly when status is above_range or undetermined, got {self.bits=}, "
                f"{self.status=}"
            )
        if len(self.ci) != 2:
            raise StatisticsError(f"ci must be a (low, high) pair, got {self.ci!r}")

    @property
    def drop_units(self) -> str:
        return "relative" if self.relative else "absolute"

    def summary(self) -> dict:
        """JSON-safe dict (plain ints/floats/str/None, no NaN), ready for ``mlflow.log_dict``."""
        return {
            "bits": None if self.bits is None else int(self.bits),
            "ci": [None if c is None else int(c) for c in self.ci],
            "status": self.status,
            "reason": self.reason,
            "method": self.method,
            "confidence": float(self.confidence),
            "tolerance": float(self.tolerance),
            "relative": bool(self.relative),
            "n_items": int(self.n_items),
            "n_seeds": int(self.n_seeds),
            "baseline_accuracy": _f(self.baseline_accuracy),
            "min_detectable_drop": _f(self.min_detectable_drop),
            "levels": [lv.summary() for lv in self.levels],
            "curve": None if self.curve is None else self.curve.summary(),
        }

    def report(self) -> str:
        """Human-readable text: the verdict, the reason, the per-level table and the curve."""
        unit = "relative" if self.relative else "absolute"
        lo, hi = self.ci
        ci_txt = f"[{'-' if lo is None else lo}, {'above range' if hi is None else hi}]"
        lines = [
            f"minimum safe bits: {self.bits}  ({self.status}; {self.confidence:.0%} CI {ci_txt})",
            f"reason: {self.reason}",
            f"method: {self.method}; tolerance {self.tolerance:g} ({unit} drop); "
            f"N={self.n_items} items x S={self.n_seeds} seeds; "
            f"baseline accuracy {self.baseline_accuracy:.4f}; "
            f"smallest certifiable drop {self.min_detectable_drop:.4g}",
            f"{'bits':>5} {'accuracy':>9} {'drop':>9} {'lower':>9} {'upper':>9} {'floor':>9}  safe",
        ]
        for lv in self.levels:
            lines.append(
                f"{lv.bits:>5} {lv.accuracy:>9.4f} {lv.drop:>9.4f} {lv.lower:>9.4f} {lv.upper:>9.4f} "
                f"{lv.noise_floor:>9.4f}  {'yes' if lv.declared_safe else 'no'}"
            )
        if self.curve is not None:
            params = ", ".join(
                f"{k}={v:.4g}" + ("" if self.curve.stderr.get(k) is None else f"±{self.curve.stderr[k]:.2g}")
                for k, v in self.curve.params.items()
            )
            lines.append(f"curve: {self.curve.family} ({params}); {self.curve.message}")
        return "\n".join(lines)

    def plot(self, ax):
        """Draw accuracy vs bits on a matplotlib ``ax``: measured points with the per-level confidence bars,
        the fitted curve and its confidence band, the tolerance line and the bound marker. Returns ``ax``."""
        from boundfinder.bounds.plot import plot_estimate

        return plot_estimate(self, ax)


def _as_bool(name, value):
    arr = np.asarray(value)
    if arr.dtype != np.bool_:
        raise StatisticsError(
            f"{name} must be a boolean array (True = item answered correctly), got dtype {arr.dtype}; "
            f"convert 0/1 data with .astype(bool)"
        )
    return arr


def _validate(bits, correct, baseline, tolerance, relative, confidence, method):
    bits_arr = np.asarray(bits)
    if bits_arr.ndim != 1:
        raise StatisticsError(f"bits must be a 1-D sequence of ints, got shape {bits_arr.shape}")
    if bits_arr.size < 2:
        raise StatisticsError(
            f"at least 2 distinct bit levels are needed, got {bits_arr.size}: {bits_arr.tolist()}"
        )
    if not (
        np.issubdtype(bits_arr.dtype, np.integer)
        or (
            np.issubdtype(bits_arr.dtype, np.floating)
            and np.all(np.isfinite(bits_arr))
            and np.all(bits_arr == np.round(bits_arr))
        )
    ):
        raise StatisticsError(f"bits must be integers, got {bits_arr.tolist()}")
    bits_arr = bits_arr.astype(int)
    if np.unique(bits_arr).size != bits_arr.size:
        dup = sorted({int(b) for b in bits_arr if (bits_arr == b).sum() > 1})
        raise StatisticsError(f"bit levels must be distinct, got duplicates {dup} in {bits_arr.tolist()}")
    correct = _as_bool("correct", correct)
    baseline = _as_bool("baseline", baseline)
    if correct.ndim not in (2, 3):
        raise StatisticsError(
            f"correct must have shape (L, N) or (L, S, N) (levels x [seeds x] items), got {correct.shape}"
        )
    if correct.shape[0] != bits_arr.size:
        raise StatisticsError(
            f"correct has {correct.shape[0]} levels on axis 0 but bits has {bits_arr.size}; they must agree"
        )
    if correct.ndim == 2:
        correct = correct[:, None, :]
    _, s, n = correct.shape
    if n < 2:
        raise StatisticsError(f"at least 2 test items are needed, got N={n}")
    if baseline.ndim == 1:
        if baseline.shape[0] != n:
            raise StatisticsError(
                f"baseline has {baseline.shape[0]} items but correct has N={n}; they must agree"
            )
        baseline = np.broadcast_to(baseline, (s, n))
    elif baseline.ndim == 2:
        if baseline.shape != (s, n):
            raise StatisticsError(
                f"baseline shape {baseline.shape} must be (S, N) = {(s, n)} to match correct {correct.shape}"
            )
    else:
        raise StatisticsError(f"baseline must have shape (N,) or (S, N), got {baseline.shape}")
    if not (isinstance(tolerance, numbers.Real) and math.isfinite(tolerance) and 0.0 < tolerance < 1.0):
        raise StatisticsError(f"tolerance must satisfy 0 < tolerance < 1, got {tolerance!r}")
    if not (isinstance(confidence, numbers.Real) and 0.5 <= confidence < 1.0):
        raise StatisticsError(f"confidence must satisfy 0.5 <= confidence < 1, got {confidence!r}")
    if not isinstance(relative, bool | np.bool_):
        raise StatisticsError(f"relative must be a bool, got {relative!r}")
    if method not in METHODS:
        raise StatisticsError(f"method must be one of {METHODS}, got {method!r}")
    if method in _ONE_SEED and s > 1:
        raise StatisticsError(
            f"method={method!r} treats items as the only source of noise and needs one seed, got S={s}; "
            "use method='t' or 'bootstrap' (between-seed variance), or pass one seed's slice"
        )
    if method in _MANY_SEEDS and s < 2:
        raise StatisticsError(
            f"method={method!r} estimates between-seed variance and needs S >= 2 seeds, got S={s}; "
            "use method='score' or 'exact' for one seed"
        )
    if relative and not baseline.any():
        raise StatisticsError(
            "relative=True needs a baseline accuracy > 0, got a baseline with no correct item"
        )
    return bits_arr, correct, np.asarray(baseline)


def _abs_bounds(method, diff, alpha, n_boot, random_state):
    """(lower, upper, noise_floor) on the absolute drop, one-sided at ``alpha``, shape (L,)."""
    _n_levels, _s, n = diff.shape
    if method in _ONE_SEED:
        b10 = (diff[:, 0] > 0).sum(axis=1).astype(float)
        b01 = (diff[:, 0] < 0).sum(axis=1).astype(float)
        fn = paired.score_bounds if method == "score" else paired.exact_bounds
        lower, upper = fn(b10, b01, n, alpha)
        # Same discordant pairs, split evenly: what this level would certify with zero observed drop.
        half = (b10 + b01) / 2.0
        floor = fn(half, half, n, alpha)[1]
        return lower, upper, floor
    if method == "t":
        lower, upper, _ = paired.t_bounds(diff, alpha)
    else:
        lower, upper = paired.bootstrap_bounds(diff, alpha, n_boot=n_boot, random_state=random_state)
    # Both are translation-equivariant, so the margin above the estimate is the noise floor.
    est = diff.mean(axis=(1, 2))
    return lower, upper, upper - est


def _baseline_bounds(baseline, alpha):
    """One-sided (lower, upper) bounds on the baseline accuracy over items and seeds (`paired.accuracy_bounds`:
    the wider of Clopper–Pearson on the N items and the crossed seeds x items t bound). An ``(N,)`` baseline
    broadcast to S seeds is N items, not S N: its bounds do not narrow as S grows."""
    lo, up = paired.accuracy_bounds(baseline, alpha)
    return max(lo, 1e-12), min(up, 1.0)


def _level_bounds(method, diff, baseline, alpha, relative, n_boot, random_state):
    """(lower, upper, floor) in the requested units. Relative bounds divide the absolute ones, each computed
    at alpha/2, by the matching alpha/2 bound on the baseline accuracy (union bound)."""
    if not relative:
        return _abs_bounds(method, diff, alpha, n_boot, random_state)
    lower, upper, floor = _abs_bounds(method, diff, alpha / 2.0, n_boot, random_state)
    a_lo, _a_up = _baseline_bounds(baseline, alpha / 2.0)
    # drop/a0 <= U/a0_lo when U >= 0; when U < 0, drop/a0 <= U/a0 <= U because a0 <= 1. Lower mirrors it.
    upper = np.where(upper >= 0, upper / a_lo, upper)
    lower = np.where(lower >= 0, lower, lower / a_lo)
    return lower, upper, floor / a_lo


def _curve_bounds(curve, bits, alpha, est):
    if curve is None or not curve.converged:
        inf = np.full(bits.shape, np.inf)
        return -inf, inf, inf
    d, lo, up = curve.drop_band(bits, alpha)
    return lo, up, up - d


def _step_down(upper, tolerance):
    """Fixed sequence from the highest level: declared safe while upper <= tolerance. Returns a mask."""
    safe = np.zeros(upper.shape, dtype=bool)
    for j in range(upper.size - 1, -1, -1):
        if not upper[j] <= tolerance:
            break
        safe[j] = True
    return safe


def _step_up(lower, tolerance):
    """Fixed sequence from the lowest level: declared unsafe while lower > tolerance. Returns a mask."""
    unsafe = np.zeros(lower.shape, dtype=bool)
    for j in range(lower.size):
        if not lower[j] > tolerance:
            break
        unsafe[j] = True
    return unsafe


def estimate_bound(
    bits,
    correct,
    baseline,
    *,
    tolerance=0.01,
    relative=False,
    confidence=0.95,
    method="auto",
    fit_curve=True,
    n_boot=2000,
    random_state=0,
):
    """Estimate the minimum safe bits from paired measurements, with a confidence statement.

    Args:
        bits: L distinct integer bit levels (any order).
        correct: boolean array (L, N) or (L, S, N): item answered correctly at each level (and seed).
        baseline: boolean array (N,) or (S, N): the full-precision model on the same items (same seed).
        tolerance: largest acceptable drop, 0 < tolerance < 1 (accuracy points, e.g. 0.01 = one point).
        relative: measure the drop relative to the baseline accuracy instead of in absolute points.
        confidence: the probability that every declared-safe level is truly safe (0.5 <= confidence < 1).
        method: per-level bound; ``"auto"`` picks ``"score"`` for one seed and ``"t"`` for several.
            ``"score"`` (one seed; Tango's paired score interval), ``"exact"`` (one seed; McNemar's
            conditional binomial with Clopper–Pearson, conservative, exact), ``"t"`` (S >= 2; t over seeds
            plus the shared-item variance), ``"bootstrap"`` (hierarchical seeds-then-items percentile),
            ``"curve"`` (delta-method band of the ML accuracy-vs-bits curve; relies on the curve family being
            right).
        fit_curve: also fit the accuracy-vs-bits curve for the summary and plot (always on for "curve").
        n_boot, random_state: replicates and seed for ``method="bootstrap"``.

    Returns a `BoundEstimate`. Raises `StatisticsError` for malformed input; data that simply do not
    support a bound (all levels unsafe, all safe, noise) give a status and reason, never an exception.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> base = rng.random(2000) < 0.9
    >>> flips = rng.random(2000)
    >>> # level b loses each correct item with probability 0.8 * 2**-(b-3): the true drop at 9 bits is
    >>> # 0.9 * 0.8 / 64 = 0.011 > 0.01, at 10 bits 0.0056, so the true minimum safe bits is 10
    >>> correct = np.stack([base & (flips >= 0.8 * 2.0 ** -(b - 3)) for b in range(6, 17)])
    >>> est = estimate_bound(list(range(6, 17)), correct, base, fit_curve=False)
    >>> est.status, est.bits
    ('ok', 10)
    """
    bits_arr, correct3, baseline2 = _validate(
        bits, correct, baseline, tolerance, relative, confidence, method
    )
    order = np.argsort(bits_arr)
    bits_arr = bits_arr[order]
    correct3 = correct3[order]
    n_levels, s, n = correct3.shape
    resolved = method if method != "auto" else ("score" if s == 1 else "t")
    alpha = 1.0 - confidence
    diff = baseline2[None].astype(np.int8) - correct3.astype(np.int8)  # (L, S, N) in {-1, 0, 1}

    base_acc = float(baseline2.mean())
    acc = correct3.mean(axis=(1, 2))
    drop = base_acc - acc
    if relative:
        drop = drop / base_acc

    curve = None
    if fit_curve or resolved == "curve":
        curve = fit_curves(
            bits_arr,
            correct3.sum(axis=2).astype(float),
            baseline2.sum(axis=1).astype(float),
            n,
            relative=relative,
        )

    if resolved == "curve":
        lower, upper, floor = _curve_bounds(curve, bits_arr, alpha, drop)
        lower2, upper2, _ = _curve_bounds(curve, bits_arr, alpha / 2.0, drop)
    else:
        lower, upper, floor = _level_bounds(resolved, diff, baseline2, alpha, relative, n_boot, random_state)
        lower2, upper2, _ = _level_bounds(
            resolved, diff, baseline2, alpha / 2.0, relative, n_boot, random_state
        )

    safe = _step_down(upper, tolerance)
    ci_high_mask = _step_down(upper2, tolerance)
    unsafe_ci = _step_up(lower2, tolerance)
    ci_high = int(bits_arr[ci_high_mask.argmax()]) if ci_high_mask.any() else None
    ci_low = None if unsafe_ci.all() else int(bits_arr[(~unsafe_ci).argmax()])
    min_detectable = float(np.min(floor))

    top = n_levels - 1
    unit = "relative drop" if relative else "drop"
    if safe.all():
        out_bits, status = int(bits_arr[0]), "below_range"
        reason = (
            f"every tested level down to {bits_arr[0]} bits is safe at {confidence:.0%} confidence "
            f"(upper bound on the {unit} {upper[0]:.4g} <= tolerance {tolerance:g} at the lowest); "
            f"the minimum may be lower: test fewer bits"
        )
    elif safe.any():
        first = int(safe.argmax())
        out_bits, status = int(bits_arr[first]), "ok"
        fail = first - 1
        why = "confidently unsafe" if lower[fail] > tolerance else "not certified (the data cannot tell)"
        reason = (
            f"{bits_arr[first]} bits is the lowest level from which every tested level is safe at "
            f"{confidence:.0%} confidence; {bits_arr[fail]} bits is {why}: {unit} {drop[fail]:.4g}, "
            f"upper bound {upper[fail]:.4g} > tolerance {tolerance:g}"
        )
    elif min_detectable > tolerance and not lower[top] > tolerance:
        out_bits, status = None, "undetermined"
        reason = (
            f"these data cannot certify a {unit} as small as the tolerance {tolerance:g}: the smallest "
            f"certifiable {unit} is {min_detectable:.4g} (N={n} items, S={s} seeds); "
            f"more items or seeds are needed"
        )
    else:
        out_bits, status = None, "above_range"
        how = "confidently unsafe" if lower[top] > tolerance else f"not safe at {confidence:.0%} confidence"
        reason = (
            f"the highest tested level, {bits_arr[top]} bits, is {how}: "
            f"{unit} {drop[top]:.4g}, upper bound {upper[top]:.4g} > tolerance {tolerance:g}; test more bits"
        )
    if resolved == "curve" and (curve is None or not curve.converged):
        reason += "; the curve fit did not converge, so the curve method certifies nothing"

    levels = tuple(
        LevelBound(
            bits=int(bits_arr[j]),
            accuracy=float(acc[j]),
            drop=float(drop[j]),
            lower=float(lower[j]),
            upper=float(upper[j]),
            noise_floor=float(floor[j]),
            declared_safe=bool(safe[j]),
        )
        for j in range(n_levels)
    )
    return BoundEstimate(
        bits=out_bits,
        ci=(ci_low, ci_high),
        status=status,
        reason=reason,
        method=resolved,
        confidence=float(confidence),
        tolerance=float(tolerance),
        relative=bool(relative),
        n_items=int(n),
        n_seeds=int(s),
        baseline_accuracy=base_acc,
        min_detectable_drop=min_detectable,
        levels=levels,
        curve=curve,
    )
