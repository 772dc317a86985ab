"""`estimate_bound`: the minimum safe bits, with a confidence statement, from paired measurements."""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from boundfinder.bounds import paired
from boundfinder.bounds.curves import CurveFit, fit_curves
from boundfinder.errors import StatisticsError

__all__ = ["METHODS", "SEEDS_FOR_SKEWED_SPREAD", "STATUSES", "BoundEstimate", "LevelBound", "estimate_bound"]

_log = logging.getLogger(__name__)
_CURVE_NOTED = False  # the log line about continuous scores having no curve is said once per process

METHODS = ("auto", "score", "exact", "t", "bootstrap", "curve", "studentized")
STATUSES = ("ok", "below_range", "above_range", "undetermined")
_ONE_SEED = ("score", "exact")
_MANY_SEEDS = ("t",)
_BINARY_ONLY = ("score", "exact", "curve")
_CONTINUOUS_METHODS = ("auto", "studentized", "t", "bootstrap")

#: Fewest seeds from which the multi-seed guarantee held in the calibration study when the seeds' drops differ
#: by a right-skewed (log-normal, sigma 0.6) factor, for binary and continuous scores (docs/bounds.md,
#: "Few seeds": 4.0-5.5% unsafe at S = 20 and 2.8-3.0% at S = 30 (400 runs per setting), against 4.5-11% at
#: S = 10 and 7.0-11% at S = 3 and 5, 200 runs each). A bound certified on 2 <= S < this many seeds says in its reason
#: that the guarantee is approximate there.
SEEDS_FOR_SKEWED_SPREAD = 20


def _f(v):
    """Plain float, or None for NaN / inf (JSON has neither)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass(frozen=True, kw_only=True)
class LevelBound:
    """One tested level: observed accuracy and drop, one-sided confidence bounds on the true drop.

    ``accuracy`` is the mean score at this level over seeds and items: the accuracy for boolean scores, the
    metric's mean (in its own units) for continuous ones (`BoundEstimate.metric` names it).

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
    * ``curve``: the fitted accuracy-vs-bits curve (`CurveFit`), None when fitting was skipped or failed, and
      always None for continuous scores (the curve families are binomial).
    * ``metric``, ``higher_is_better``, ``continuous``: what was measured. Boolean scores are ``"accuracy"``,
      higher is better. For continuous scores the drop is the paired mean difference in the metric's direction
      (for a loss, ``higher_is_better=False``, the drop is the increase), ``baseline_accuracy`` and
      ``LevelBound.accuracy`` are the metric's means, and ``tolerance`` is in the metric's units (or relative).
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
    metric: str = "accuracy"
    higher_is_better: bool = True
    continuous: bool = False

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
        if not (isinstance(self.metric, str) and self.metric):
            raise StatisticsError(f"metric must be a non-empty name, got {self.metric!r}")

    @property
    def direction(self) -> str:
        """``"higher is better"`` or ``"lower is better"``: how the metric is read."""
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def drop_name(self) -> str:
        """What the drop is called in reasons and reports: ``"drop"`` for accuracy, e.g. ``"nll increase"``."""
        if not self.continuous:
            return "drop"
        return f"{self.metric} {'drop' if self.higher_is_better else 'increase'}"

    @property
    def seeds_approximate(self) -> bool:
        """True when a bound was certified on 2 <= S < `SEEDS_FOR_SKEWED_SPREAD` seeds: the multi-seed
        guarantee is approximate there if the seeds' drops differ by a right-skewed factor."""
        return self.bits is not None and 2 <= self.n_seeds < SEEDS_FOR_SKEWED_SPREAD

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
            "metric": self.metric,
            "higher_is_better": bool(self.higher_is_better),
            "continuous": bool(self.continuous),
            "seeds_approximate": bool(self.seeds_approximate),
        }

    def report(self) -> str:
        """Human-readable text: the verdict, the reason, the per-level table and the curve."""
        unit = "relative" if self.relative else "absolute"
        lo, hi = self.ci
        ci_txt = f"[{'-' if lo is None else lo}, {'above range' if hi is None else hi}]"
        name = self.drop_name
        base = f"{self.baseline_accuracy:.4f}" if not self.continuous else f"{self.baseline_accuracy:.6g}"
        lines = [
            f"minimum safe bits: {self.bits}  ({self.status}; {self.confidence:.0%} CI {ci_txt})",
            f"reason: {self.reason}",
            f"method: {self.method}; tolerance {self.tolerance:g} ({unit} {name}); "
            f"N={self.n_items} items x S={self.n_seeds} seeds; "
            f"baseline {self.metric} {base}; "
            f"smallest certifiable {name} {self.min_detectable_drop:.4g}",
        ]
        if self.continuous:
            lines.insert(2, f"metric: {self.metric} ({self.direction})")
        fmt = ".4f" if not self.continuous else ".4g"
        head = self.metric[:9]
        lines.append(f"{'bits':>5} {head:>9} {'drop':>9} {'lower':>9} {'upper':>9} {'floor':>9}  safe")
        for lv in self.levels:
            lines.append(
                f"{lv.bits:>5} {lv.accuracy:>9{fmt}} {lv.drop:>9{fmt}} {lv.lower:>9{fmt}} {lv.upper:>9{fmt}} "
                f"{lv.noise_floor:>9{fmt}}  {'yes' if lv.declared_safe else 'no'}"
            )
        if self.curve is not None:
            params = ", ".join(
                f"{k}={v:.4g}" + ("" if self.curve.stderr.get(k) is None else f"±{self.curve.stderr[k]:.2g}")
                for k, v in self.curve.params.items()
            )
            lines.append(f"curve: {self.curve.family} ({params}); {self.curve.message}")
        return "\n".join(lines)

    def plot(self, ax):
        """Draw the metric (accuracy for boolean scores) vs bits on a matplotlib ``ax``: measured points with the
        per-level confidence bars, the fitted curve and its confidence band, the tolerance line and the bound
        marker. Returns ``ax``."""
        from boundfinder.bounds.plot import plot_estimate

        return plot_estimate(self, ax)


def _as_bool(name, value):
    arr = np.asarray(value)
    if arr.dtype != np.bool_:
        raise StatisticsError(
            f"{name} must be a boolean array (True = item answered correctly), got dtype {arr.dtype}; "
            f"convert 0/1 data with .astype(bool), or pass continuous scores as floats for both arrays"
        )
    return arr


def _is_numeric(arr):
    return arr.dtype != np.bool_ and (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    )


def _scores_kind(correct, baseline):
    """``"binary"`` when both arrays are boolean, ``"continuous"`` when both are numeric and not boolean;
    anything else goes down the binary path, whose check names the array that is not boolean."""
    c, b = np.asarray(correct), np.asarray(baseline)
    return "continuous" if _is_numeric(c) and _is_numeric(b) else "binary"


def _validate_bits(bits):
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
    return bits_arr


def _shapes(bits_arr, correct, baseline, names):
    """(L, S, N) scores and (S, N) baseline, checked against each other and the levels."""
    cn, bn = names
    if correct.ndim not in (2, 3):
        raise StatisticsError(
            f"{cn} must have shape (L, N) or (L, S, N) (levels x [seeds x] items), got {correct.shape}"
        )
    if correct.shape[0] != bits_arr.size:
        raise StatisticsError(
            f"{cn} has {correct.shape[0]} levels on axis 0 but bits has {bits_arr.size}; they must agree"
        )
    if correct.ndim == 2:
        correct = correct[:, None, :]
    _, s, n = correct.shape
    if n < 2:
        raise StatisticsError(f"at least 2 test items are needed, got N={n}")
    if baseline.ndim == 1:
        if baseline.shape[0] != n:
            raise StatisticsError(
                f"{bn} has {baseline.shape[0]} items but {cn} has N={n}; they must agree"
            )
        baseline = np.broadcast_to(baseline, (s, n))
    elif baseline.ndim == 2:
        if baseline.shape != (s, n):
            raise StatisticsError(
                f"{bn} shape {baseline.shape} must be (S, N) = {(s, n)} to match {cn} {correct.shape}"
            )
    else:
        raise StatisticsError(f"{bn} must have shape (N,) or (S, N), got {baseline.shape}")
    return correct, baseline


def _check_confidence_relative(confidence, relative):
    if not (isinstance(confidence, numbers.Real) and 0.5 <= confidence < 1.0):
        raise StatisticsError(f"confidence must satisfy 0.5 <= confidence < 1, got {confidence!r}")
    if not isinstance(relative, bool | np.bool_):
        raise StatisticsError(f"relative must be a bool, got {relative!r}")


def _validate(bits, correct, baseline, tolerance, relative, confidence, method):
    bits_arr = _validate_bits(bits)
    correct = _as_bool("correct", correct)
    baseline = _as_bool("baseline", baseline)
    correct, baseline = _shapes(bits_arr, correct, baseline, ("correct", "baseline"))
    s = correct.shape[1]
    if not (isinstance(tolerance, numbers.Real) and math.isfinite(tolerance) and 0.0 < tolerance < 1.0):
        raise StatisticsError(f"tolerance must satisfy 0 < tolerance < 1, got {tolerance!r}")
    _check_confidence_relative(confidence, relative)
    if method not in METHODS:
        raise StatisticsError(f"method must be one of {METHODS}, got {method!r}")
    if method == "studentized":
        raise StatisticsError(
            "method='studentized' is for continuous (float) scores; boolean scores use "
            f"{tuple(m for m in METHODS if m != 'studentized')}"
        )
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


def _first_nonfinite(arr, name, bits_arr=None):
    """Raise naming the first NaN / inf of ``arr`` by its level (bits), seed and item."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return
    pos = tuple(int(i) for i in np.argwhere(bad)[0])
    value = float(arr[pos])
    if bits_arr is not None:
        j, si, i = pos if arr.ndim == 3 else (pos[0], 0, pos[1])
        where = f"{name}[{', '.join(map(str, pos))}] (level {j} = {bits_arr[j]} bits, seed {si}, item {i})"
    else:
        si, i = pos if arr.ndim == 2 else (0, pos[0])
        where = f"{name}[{', '.join(map(str, pos))}] (seed {si}, item {i})"
    raise StatisticsError(
        f"per-item scores must be finite, but {where} is {value!r} ({int(bad.sum())} non-finite value(s) in "
        f"{name}); a NaN or inf loss usually means the model diverged or overflowed at that precision: "
        "record it as a finite worst score, or leave that level out"
    )


def _validate_continuous(bits, scores, baseline, tolerance, relative, confidence, method, higher_is_better):
    bits_arr = _validate_bits(bits)
    scores = np.asarray(scores, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    raw_scores = scores
    scores, baseline = _shapes(bits_arr, scores, baseline, ("scores", "baseline_scores"))
    _first_nonfinite(raw_scores, "scores", bits_arr)
    _first_nonfinite(np.asarray(baseline), "baseline_scores")
    if not (isinstance(tolerance, numbers.Real) and math.isfinite(tolerance) and tolerance > 0.0):
        raise StatisticsError(
            f"tolerance must be a finite number > 0 in the metric's units (or a fraction with relative=True), "
            f"got {tolerance!r}"
        )
    _check_confidence_relative(confidence, relative)
    if not isinstance(higher_is_better, bool | np.bool_):
        raise StatisticsError(f"higher_is_better must be a bool, got {higher_is_better!r}")
    if method not in _CONTINUOUS_METHODS:
        raise StatisticsError(
            f"method must be one of {_CONTINUOUS_METHODS} for continuous scores, got {method!r}"
            + (" (a method for boolean scores)" if method in _BINARY_ONLY else "")
        )
    if relative and not float(np.mean(baseline)) > 0.0:
        raise StatisticsError(
            "relative=True needs a baseline mean > 0 (a drop relative to a non-positive mean has no meaning), "
            f"got baseline mean {float(np.mean(baseline)):.6g}; use an absolute tolerance in the metric's units"
        )
    return bits_arr, scores, np.asarray(baseline)


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


def _mean_bounds(method, values, alphas, n_boot, random_state):
    """[(lower, upper)] per alpha on the grand mean of float ``values`` (L, S, N) by ``method``."""
    if method == "studentized":
        return paired.studentized_bounds(values, alphas, n_boot=n_boot, random_state=random_state)
    if method == "t":
        return [paired.mean_t_bounds(values, a)[:2] for a in alphas]
    return [paired.bootstrap_bounds(values, a, n_boot=n_boot, random_state=random_state) for a in alphas]


def _continuous_bounds(method, diff, baseline, alphas, relative, n_boot, random_state):
    """[(lower, upper, floor)] per alpha for continuous scores, in the requested units.

    ``diff`` (L, S, N) is the per-item drop in the metric's direction, ``baseline`` (S, N) the baseline scores.
    Relative bounds divide the absolute ones, each at alpha/2, by the alpha/2 bound on the baseline mean
    (union bound): ``drop / a0 <= U / a0_low`` when U >= 0, ``<= U / a0_up`` when U < 0 (and the lower bound
    mirrors it); a baseline lower bound <= 0 leaves the relative drop unbounded (inf).
    """
    if not relative:
        est = diff.mean(axis=(1, 2))
        return [(lo, up, up - est) for lo, up in _mean_bounds(method, diff, alphas, n_boot, random_state)]
    half = [a / 2.0 for a in alphas]
    drops = _mean_bounds(method, diff, half, n_boot, random_state)
    bases = _mean_bounds(method, np.asarray(baseline, dtype=float)[None], half, n_boot, random_state)
    est = diff.mean(axis=(1, 2))
    out = []
    for (lo, up), (b_lo, b_up) in zip(drops, bases, strict=True):
        a_lo, a_up = float(b_lo[0]), float(b_up[0])
        inv_lo = 1.0 / a_lo if a_lo > 0 else np.inf
        inv_up = 1.0 / a_up  # a_up >= mean > 0
        with np.errstate(invalid="ignore"):
            upper = np.where(up >= 0, up * inv_lo, up * inv_up)
            lower = np.where(lo >= 0, lo * inv_up, lo * inv_lo)
            floor = (up - est) * inv_lo
        # 0 * inf (a zero bound over an unbounded baseline) is unbounded; infinities stay infinite.
        upper = np.nan_to_num(upper, nan=np.inf, posinf=np.inf, neginf=-np.inf)
        lower = np.nan_to_num(lower, nan=-np.inf, posinf=np.inf, neginf=-np.inf)
        out.append((lower, upper, np.nan_to_num(floor, nan=np.inf, posinf=np.inf, neginf=-np.inf)))
    return out


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
    scores=None,
    baseline_scores=None,
    *,
    tolerance=None,
    relative=False,
    higher_is_better=True,
    metric=None,
    confidence=0.95,
    method="auto",
    fit_curve=True,
    n_boot=2000,
    random_state=0,
    correct=None,
    baseline=None,
):
    """Estimate the minimum safe bits from paired measurements, with a confidence statement.

    Args:
        bits: L distinct integer bit levels (any order).
        scores: per-item scores at each level (and seed), shape (L, N) or (L, S, N). Boolean: item answered
            correctly (the binary methods below). Float (or int, not bool): a continuous per-item metric such
            as a loss or an error (0/1 floats are continuous too: convert with ``.astype(bool)`` to get the
            binary methods).
        baseline_scores: the full-precision model on the same items (same seed), (N,) or (S, N), of the same
            kind as ``scores``.
        tolerance: largest acceptable drop. Boolean scores: 0 < tolerance < 1 accuracy points (default 0.01 =
            one point). Continuous scores: required, > 0, in the metric's units (or a fraction with
            ``relative``).
        relative: measure the drop relative to the baseline mean (accuracy, or the metric's mean, which must
            be > 0) instead of in absolute units.
        higher_is_better: the metric's direction (continuous scores). The drop at a level is the paired mean
            of ``baseline - score`` when higher is better, of ``score - baseline`` when lower is better (a
            loss: the drop is the increase). Boolean scores are correctness: higher is better.
        metric: the metric's name for reasons, reports and plots (default ``"accuracy"`` for boolean scores,
            ``"score"`` for continuous ones), e.g. ``"nll"``.
        confidence: the probability that every declared-safe level is truly safe (0.5 <= confidence < 1).
        method: per-level bound; ``"auto"`` picks ``"score"`` for one seed and ``"t"`` for several with
            boolean scores, ``"studentized"`` for continuous scores.
            ``"score"`` (one seed; Tango's paired score interval), ``"exact"`` (one seed; McNemar's
            conditional binomial with Clopper–Pearson, conservative, exact), ``"t"`` (S >= 2; t over seeds
            plus the shared-item variance; for continuous scores any S, S = 1 being the paired t over items),
            ``"bootstrap"`` (hierarchical seeds-then-items percentile), ``"curve"`` (delta-method band of the
            ML accuracy-vs-bits curve; relies on the curve family being right; boolean only),
            ``"studentized"`` (continuous only: the wider of a bootstrap-t bound over items and the crossed t
            bound, `paired.studentized_bounds`).
        fit_curve: also fit the accuracy-vs-bits curve for the summary and plot (always on for "curve").
            Boolean scores only: for continuous scores no curve is fitted (``curve`` is None, said once in a
            log line).
        n_boot, random_state: replicates and seed for ``method="bootstrap"`` and ``"studentized"``.
        correct, baseline: the former names of ``scores`` and ``baseline_scores``, still accepted as keywords.

    Returns a `BoundEstimate`. Raises `StatisticsError` for malformed input (including a NaN or infinite
    per-item score, named by level, seed and item); data that simply do not support a bound (all levels
    unsafe, all safe, noise) give a status and reason, never an exception.

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

    A loss (lower is better) whose per-item increase is skewed: a few items get much worse.

    >>> base_loss = rng.gamma(2.0, 0.5, 500)
    >>> hurt = rng.lognormal(0.0, 1.0, 500) * np.exp(-0.5)  # mean 1, right-skewed
    >>> loss = np.stack([base_loss + 0.3 * 2.0 ** -(b - 6) * hurt for b in range(6, 13)])
    >>> est = estimate_bound(list(range(6, 13)), loss, base_loss, tolerance=0.025, higher_is_better=False,
    ...                      metric="nll")
    >>> est.status, est.bits, est.method  # true increase 0.0375 at 9 bits, 0.019 at 10
    ('ok', 10, 'studentized')
    >>> est.reason.split(";")[0]
    '10 bits is the lowest level from which every tested level is safe at 95% confidence'
    """
    scores, baseline_scores = _legacy_names(scores, baseline_scores, correct, baseline)
    if _scores_kind(scores, baseline_scores) == "continuous":
        return _estimate_continuous(
            bits, scores, baseline_scores, tolerance=tolerance, relative=relative,
            higher_is_better=higher_is_better, metric=metric, confidence=confidence, method=method,
            n_boot=n_boot, random_state=random_state, fit_curve=fit_curve,
        )  # fmt: skip
    if tolerance is None:
        tolerance = 0.01
    if higher_is_better is not True:
        raise StatisticsError(
            f"boolean scores mean 'item answered correctly' (higher is better), got {higher_is_better=}; "
            "pass ~errors as boolean correctness, or float scores with higher_is_better=False"
        )
    if metric is not None and not (isinstance(metric, str) and metric):
        raise StatisticsError(f"metric must be a non-empty name, got {metric!r}")
    correct, baseline = scores, baseline_scores
    bits_arr, correct3, baseline2 = _validate(
        bits, correct, baseline, tolerance, relative, confidence, method
    )
    order = np.argsort(bits_arr)
    bits_arr = bits_arr[order]
    correct3 = correct3[order]
    _n_levels, s, n = correct3.shape
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

    reason_extra = ""
    if resolved == "curve" and (curve is None or not curve.converged):
        reason_extra = "; the curve fit did not converge, so the curve method certifies nothing"
    return _decide(
        bits_arr, acc, drop, lower, upper, floor, lower2, upper2, s, n, tolerance, relative, confidence,
        resolved, base_acc, curve, unit="relative drop" if relative else "drop", reason_extra=reason_extra,
        extra={"metric": "accuracy" if metric is None else metric},
    )  # fmt: skip


def _decide(
    bits_arr, acc, drop, lower, upper, floor, lower2, upper2, s, n, tolerance, relative, confidence, resolved,
    base_acc, curve, *, unit, extra, reason_extra="",
):  # fmt: skip
    """The fixed-sequence decision, CI, status and reason from per-level bounds (sorted by bits)."""
    n_levels = bits_arr.size
    safe = _step_down(upper, tolerance)
    ci_high_mask = _step_down(upper2, tolerance)
    unsafe_ci = _step_up(lower2, tolerance)
    ci_high = int(bits_arr[ci_high_mask.argmax()]) if ci_high_mask.any() else None
    ci_low = None if unsafe_ci.all() else int(bits_arr[(~unsafe_ci).argmax()])
    min_detectable = float(np.min(floor))

    top = n_levels - 1
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
    reason += reason_extra + _seeds_note(out_bits, s)

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
        **extra,
    )




def _legacy_names(scores, baseline_scores, correct, baseline):
    """``scores``/``baseline_scores``, or the former keyword names ``correct``/``baseline``, never both."""
    if correct is not None:
        if scores is not None:
            raise StatisticsError("pass the per-item scores once: as scores (or positionally), or as correct")
        scores = correct
    if baseline is not None:
        if baseline_scores is not None:
            raise StatisticsError(
                "pass the baseline once: as baseline_scores (or positionally), or as baseline"
            )
        baseline_scores = baseline
    if scores is None or baseline_scores is None:
        raise StatisticsError("estimate_bound needs bits, scores and baseline_scores; got None for one of them")
    return scores, baseline_scores


def _seeds_note(out_bits, s):
    """The reason's rider for a bound certified on fewer seeds than the calibration supports."""
    if out_bits is None or not 2 <= s < SEEDS_FOR_SKEWED_SPREAD:
        return ""
    return (
        f"; with S={s} seeds the multi-seed guarantee is approximate: if the seeds' drops differ by a "
        f"right-skewed factor (calibrated: log-normal, sigma 0.6) the bound can be unsafe more often than "
        f"1 - confidence; S >= {SEEDS_FOR_SKEWED_SPREAD} seeds make it hold (docs/bounds.md, Few seeds)"
    )


def _estimate_continuous(
    bits, scores, baseline, *, tolerance, relative, higher_is_better, metric, confidence, method, n_boot,
    random_state, fit_curve,
):  # fmt: skip
    """`estimate_bound` for continuous per-item scores: same fixed sequence, statuses and CI."""
    if tolerance is None:
        raise StatisticsError(
            "tolerance is required for continuous scores: the largest acceptable drop in the metric's units "
            "(or a fraction of the baseline mean with relative=True), e.g. tolerance=0.02"
        )
    if metric is None:
        metric = "score"
    if not (isinstance(metric, str) and metric):
        raise StatisticsError(f"metric must be a non-empty name, got {metric!r}")
    bits_arr, scores3, baseline2 = _validate_continuous(
        bits, scores, baseline, tolerance, relative, confidence, method, higher_is_better
    )
    order = np.argsort(bits_arr)
    bits_arr = bits_arr[order]
    scores3 = scores3[order]
    _n_levels, s, n = scores3.shape
    resolved = "studentized" if method == "auto" else method
    alpha = 1.0 - confidence
    sign = 1.0 if higher_is_better else -1.0
    diff = sign * (baseline2[None] - scores3)  # (L, S, N): per-item drop in the metric's direction

    base_mean = float(baseline2.mean())
    level_mean = scores3.mean(axis=(1, 2))
    drop = diff.mean(axis=(1, 2))
    if relative:
        drop = drop / base_mean
    (lower, upper, floor), (lower2, upper2, _) = _continuous_bounds(
        resolved, diff, baseline2, (alpha, alpha / 2.0), relative, n_boot, random_state
    )
    global _CURVE_NOTED
    if fit_curve and not _CURVE_NOTED:
        _CURVE_NOTED = True
        _log.info("continuous scores: no accuracy-vs-bits curve is fitted (curve=None; its families are binomial)")
    name = f"{metric} {'drop' if higher_is_better else 'increase'}"
    return _decide(
        bits_arr, level_mean, drop, lower, upper, floor, lower2, upper2, s, n, tolerance, relative,
        confidence, resolved, base_mean, None,
        unit=("relative " if relative else "") + name,
        extra={"metric": metric, "higher_is_better": bool(higher_is_better), "continuous": True},
    )  # fmt: skip
