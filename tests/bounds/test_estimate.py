"""estimate_bound: input validation, statuses and reasons, the fixed-sequence decision, the result object."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from boundfinder.bounds import BoundEstimate, estimate_bound
from boundfinder.errors import StatisticsError

BITS = list(range(4, 13))


def make(drops, n=3000, seeds=1, acc=0.9, seed=0):
    """Paired data whose level j loses a fraction drops[j] of the items (nested, no wrong->right flips)."""
    rng = np.random.default_rng(seed)
    base = rng.random((seeds, n)) < acc
    u = rng.random((seeds, n))
    correct = np.stack([base & (u >= d / acc) for d in drops])
    if seeds == 1:
        return correct[:, 0], base[0]
    return correct, base


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": [8]}, "at least 2 distinct bit levels"),
        ({"bits": [8, 8, 9]}, r"distinct, got duplicates \[8\]"),
        ({"bits": [8.5, 9, 10]}, "bits must be integers"),
        ({"tolerance": 0.0}, r"0 < tolerance < 1, got 0.0"),
        ({"tolerance": 1.0}, r"0 < tolerance < 1, got 1.0"),
        ({"tolerance": float("nan")}, "0 < tolerance < 1"),
        ({"confidence": 1.0}, r"0.5 <= confidence < 1, got 1.0"),
        ({"method": "magic"}, r"method must be one of .*'auto'.*got 'magic'"),
        ({"method": "t"}, r"needs S >= 2 seeds, got S=1"),
    ],
)
def test_bad_arguments_raise_with_invariant_and_value(kwargs, match):
    correct, base = make([0.0, 0.0, 0.0], n=50)
    args = {"bits": [8, 9, 10], "correct": correct, "baseline": base}
    bits = kwargs.pop("bits", args.pop("bits"))
    if len(bits) != 3:
        args["correct"] = np.zeros((len(bits), 50), dtype=bool)
    args.pop("bits", None)
    with pytest.raises(StatisticsError, match=match):
        estimate_bound(bits, args["correct"], args["baseline"], **kwargs)


def test_shape_and_type_errors():
    correct, base = make([0.0, 0.0], n=40)
    with pytest.raises(StatisticsError, match=r"boolean array.*got dtype int64"):
        estimate_bound([8, 9], correct.astype(np.int64), base)
    with pytest.raises(StatisticsError, match=r"boolean array.*got dtype float64"):
        estimate_bound([8, 9], correct, base.astype(float))
    with pytest.raises(StatisticsError, match="correct has 2 levels on axis 0 but bits has 3"):
        estimate_bound([8, 9, 10], correct, base)
    with pytest.raises(StatisticsError, match="baseline has 39 items but correct has N=40"):
        estimate_bound([8, 9], correct, base[:-1])
    with pytest.raises(StatisticsError, match=r"shape \(L, N\) or \(L, S, N\)"):
        estimate_bound([8, 9], correct[:, 0], base)
    c3, b3 = make([0.0, 0.0], n=40, seeds=3)
    with pytest.raises(StatisticsError, match=r"baseline shape \(2, 40\) must be \(S, N\) = \(3, 40\)"):
        estimate_bound([8, 9], c3, b3[:2])
    with pytest.raises(StatisticsError, match="needs one seed, got S=3"):
        estimate_bound([8, 9], c3, b3, method="exact")
    assert issubclass(StatisticsError, ValueError)


# ---------------------------------------------------------------------------------------------- statuses
def test_ok_bound_at_the_true_crossing():
    drops = [0.4, 0.2, 0.1, 0.05, 0.02, 0.0, 0.0, 0.0, 0.0]  # true bound: 9 bits
    est = estimate_bound(BITS, *make(drops, n=5000), fit_curve=False)
    assert (est.status, est.bits) == ("ok", 9)
    assert "9 bits is the lowest level" in est.reason and "8 bits is confidently unsafe" in est.reason
    assert [lv.declared_safe for lv in est.levels] == [False] * 5 + [True] * 4
    lo, hi = est.ci
    assert lo <= est.bits <= hi


def test_all_safe_is_below_range():
    est = estimate_bound(BITS, *make([0.0] * len(BITS), n=3000), fit_curve=False)
    assert (est.status, est.bits) == ("below_range", 4)
    assert "may be lower" in est.reason


def test_all_unsafe_is_above_range():
    est = estimate_bound(BITS, *make([0.1] * len(BITS), n=3000), fit_curve=False)
    assert (est.status, est.bits) == ("above_range", None)
    assert "12 bits" in est.reason and "test more bits" in est.reason
    assert est.ci == (None, None)  # every level is confidently unsafe


def test_too_few_items_is_undetermined_with_the_figure():
    # 100 items cannot certify a 1-point drop: even zero flips leave an upper bound of about 2.7 / 100.
    est = estimate_bound(BITS, *make([0.0] * len(BITS), n=100), fit_curve=False)
    assert (est.status, est.bits) == ("undetermined", None)
    assert est.min_detectable_drop > 0.01
    assert f"{est.min_detectable_drop:.4g}" in est.reason


def test_non_monotone_level_stops_the_sequence_without_raising():
    # 10 bits is bad (a non-monotone glitch) while 9 and 11-12 are fine: the declared set must contain every
    # level above the bound, so the bound is 11, never 9.
    drops = [0.3, 0.2, 0.1, 0.05, 0.0, 0.0, 0.08, 0.0, 0.0]
    est = estimate_bound(BITS, *make(drops, n=3000), fit_curve=False)
    assert (est.status, est.bits) == ("ok", 11)


def test_top_level_failing_gives_no_bound_even_if_lower_levels_pass():
    drops = [0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1]
    est = estimate_bound(BITS, *make(drops, n=3000), fit_curve=False)
    assert est.status == "above_range" and est.bits is None


def test_numpy_scalars_and_lists_are_accepted():
    correct, base = make([0.2, 0.0, 0.0], n=3000)
    tol32, conf64 = np.float32(0.01), np.float64(0.95)
    a = estimate_bound(np.array([4, 8, 12]), correct.tolist(), base, tolerance=tol32, fit_curve=False)
    b = estimate_bound([4, 8, 12], correct, base, tolerance=0.01, confidence=conf64, fit_curve=False)
    assert a.bits == b.bits == 8


def test_level_order_does_not_matter():
    drops = [0.4, 0.2, 0.1, 0.05, 0.02, 0.005, 0.0, 0.0, 0.0]
    correct, base = make(drops, n=3000)
    perm = np.random.default_rng(5).permutation(len(BITS))
    a = estimate_bound(BITS, correct, base, fit_curve=False)
    b = estimate_bound([BITS[i] for i in perm], correct[perm], base, fit_curve=False)
    assert a.summary() == b.summary()


def test_relative_drop_is_absolute_over_baseline_and_more_conservative_bound():
    drops = [0.4, 0.2, 0.1, 0.05, 0.02, 0.005, 0.0, 0.0, 0.0]
    correct, base = make(drops, n=3000, acc=0.6)
    rel = estimate_bound(BITS, correct, base, relative=True, tolerance=0.02, fit_curve=False)
    ab = estimate_bound(BITS, correct, base, tolerance=0.02 * base.mean(), fit_curve=False)
    for r, a in zip(rel.levels, ab.levels, strict=True):
        assert r.drop == pytest.approx(a.drop / base.mean())
        # Relative bounds spend half of alpha on the baseline accuracy: never tighter.
        assert r.upper >= a.upper / base.mean() - 1e-12
    assert rel.bits >= ab.bits


def _implied_baseline_lower(correct, base):
    """The lower bound on the baseline accuracy that a relative bound divided by: the absolute upper bound at
    alpha / 2 (confidence 0.975) over the relative one at confidence 0.95, at a level with a positive bound."""
    bits = list(range(4, 4 + correct.shape[0]))
    rel = estimate_bound(bits, correct, base, relative=True, fit_curve=False)
    ab = estimate_bound(bits, correct, base, confidence=0.975, fit_curve=False)
    return [a.upper / r.upper for a, r in zip(ab.levels, rel.levels, strict=True) if a.upper > 0]


def test_relative_bound_does_not_count_a_broadcast_baseline_once_per_seed():
    # One trained model (baseline (N,)) and S seeds of the reduced-precision runs (stochastic rounding, say):
    # the baseline accuracy is known from N items whatever S is. Before the crossed variance, the (N,)
    # baseline broadcast to S rows counted as S N independent items, and its lower bound rose with S.
    rng = np.random.default_rng(11)
    n = 2000
    base = rng.random(n) < 0.9
    by_s = {}
    for s in (1, 2, 5, 20):
        correct = base & (rng.random((2, s, n)) >= np.array([0.05, 0.01])[:, None, None])
        by_s[s] = _implied_baseline_lower(correct if s > 1 else correct[:, 0], base)
    one = min(by_s[1])
    # Clopper-Pearson on the N items at alpha / 2 = 0.025 (statsmodels' two-sided 0.05 interval):
    cp_n = proportion_confint(int(base.sum()), n, alpha=0.05, method="beta")[0]
    assert one == pytest.approx(cp_n, rel=1e-9)
    for s in (2, 5, 20):
        for lo in by_s[s]:
            assert lo <= one * (1 + 1e-9)  # never narrower than the N items allow
            assert lo == pytest.approx(min(by_s[2]), rel=1e-9)  # and the same for every S


def test_several_seeds_use_t_and_curve_fits():
    drops = [0.4, 0.2, 0.1, 0.05, 0.02, 0.004, 0.001, 0.0, 0.0]
    est = estimate_bound(BITS, *make(drops, n=2000, seeds=3))
    assert est.method == "t" and est.n_seeds == 3
    assert est.bits in (9, 10)
    assert est.curve is not None and est.curve.converged
    assert set(est.curve.params) == set(est.curve.stderr)


@pytest.mark.parametrize("method", ["exact", "score", "bootstrap", "curve"])
def test_every_single_seed_method_finds_an_easy_bound(method):
    # Error halving with every bit (the curve method's exponential family fits it): true bound 10 bits.
    drops = [0.4 * 2.0 ** -(b - 4) for b in BITS]
    est = estimate_bound(BITS, *make(drops, n=5000, seed=2), method=method, n_boot=500)
    assert est.method == method
    assert est.bits in (10, 11), est.report()


def test_curve_method_that_cannot_fit_is_undetermined_not_an_error():
    correct = np.zeros((2, 200), dtype=bool)
    est = estimate_bound([8, 9], correct, np.zeros(200, dtype=bool), method="curve")
    assert est.status == "undetermined"
    assert "did not converge" in est.reason or est.curve is None or not est.curve.converged


# ---------------------------------------------------------------------------------------------- result object
def _plain(x):
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain(v) for v in x)
    return x is None or type(x) in (int, float, str, bool)


def test_summary_is_json_safe_plain_python():
    drops = [0.4, 0.2, 0.1, 0.05, 0.02, 0.0, 0.0, 0.0, 0.0]
    for est in (
        estimate_bound(BITS, *make(drops, n=3000)),
        estimate_bound(BITS, *make([0.0] * 9, n=100), method="curve"),  # inf bounds -> None
    ):
        s = est.summary()
        json.dumps(s, allow_nan=False)
        assert _plain(s)
        assert s["status"] == est.status and len(s["levels"]) == len(BITS)


def test_report_and_frozen():
    est = estimate_bound(BITS, *make([0.3, 0.1, 0.05, 0.02, 0.0, 0.0, 0.0, 0.0, 0.0], n=3000))
    text = est.report()
    assert f"minimum safe bits: {est.bits}" in text and est.reason in text and "curve:" in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.bits = 3


def test_result_object_validates_itself():
    est = estimate_bound(BITS, *make([0.0] * 9, n=3000), fit_curve=False)
    with pytest.raises(StatisticsError, match="status must be one of"):
        dataclasses.replace(est, status="fine")
    with pytest.raises(StatisticsError, match="bits is None exactly when"):
        dataclasses.replace(est, bits=None)
    assert isinstance(est, BoundEstimate)
