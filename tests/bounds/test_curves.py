"""ML curve fits: parameter recovery, standard errors against closed forms, AIC choice, failing quietly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from boundfinder.bounds.curves import fit_curves

BITS = np.arange(3, 17)


def logistic(b, top=0.9, floor=0.1, slope=1.5, mid=6.0):
    return floor + (top - floor) * special.expit(slope * (b - mid))


def test_recovers_logistic_parameters_from_expected_counts():
    # Expected counts maximise the expected log-likelihood at the true parameters: recovery is exact up to
    # optimiser tolerance.
    n = 10000
    counts = np.round(n * logistic(BITS))[:, None]  # binomial likelihood needs integer counts
    fit = fit_curves(BITS, counts, np.array([n * 0.9]), n)
    assert fit.family == "logistic4"
    assert fit.converged
    want = {"top": 0.9, "floor": 0.1, "slope": 1.5, "midpoint": 6.0}
    for k, v in want.items():
        assert fit.params[k] == pytest.approx(v, abs=2e-3), k


def test_recovers_exponential_and_chooses_it_by_aic():
    n = 10000
    acc = 0.9 - np.exp(1.0 - np.log(2) * BITS)  # error excess 2.7 * 2^-b
    rng = np.random.default_rng(0)
    fit = fit_curves(BITS, rng.binomial(n, np.clip(acc, 0, 1))[:, None], np.array([9000]), n)
    assert fit.family == "exponential"
    assert fit.aic["exponential"] < fit.aic["logistic4"]
    assert fit.params["rate"] == pytest.approx(np.log(2), abs=4 * fit.stderr["rate"])


def test_top_standard_error_is_between_its_closed_form_limits():
    # On a plateau the top is informed by every row at best (pooled binomial over (levels + baseline) x N
    # trials) and by the baseline row alone at worst (the free slope/midpoint can absorb the other levels).
    n, bits = 5000, np.arange(10, 17)
    rng = np.random.default_rng(1)
    counts = rng.binomial(n, logistic(bits, mid=2.0))[:, None]
    base = np.array([rng.binomial(n, 0.9)])
    fit = fit_curves(bits, counts, base, n)
    t = fit.params["top"]
    pooled_se = np.sqrt(t * (1 - t) / ((len(bits) + 1) * n))
    baseline_se = np.sqrt(t * (1 - t) / n)
    assert pooled_se * 0.99 <= fit.stderr["top"] <= baseline_se * 1.01
    assert abs(t - 0.9) < 3 * fit.stderr["top"]


def test_beta_binomial_widens_the_band_when_seeds_disagree():
    n, s = 2000, 5
    rng = np.random.default_rng(2)
    # Each seed has its own midpoint: accuracy varies across seeds well beyond binomial noise.
    mids = 6.0 + rng.normal(0, 0.6, s)
    counts = np.stack([rng.binomial(n, logistic(BITS, mid=m)) for m in mids], axis=1)
    base = rng.binomial(n, 0.9, s)
    fit = fit_curves(BITS, counts, base, n)
    assert "rho" in fit.params and fit.params["rho"] > 1e-3
    # The same counts treated as one seed of S*N items ignore the seed spread: narrower band.
    pooled = fit_curves(BITS, counts.sum(axis=1, keepdims=True), np.array([base.sum()]), n * s)
    _, _, up_bb = fit.drop_band(np.array([8.0]), 0.05)
    d_p, _, up_p = pooled.drop_band(np.array([8.0]), 0.05)
    assert (up_bb - fit.drop(np.array([8.0])))[0] > 2 * (up_p - d_p)[0]


def test_degenerate_data_never_raise():
    n = 500
    cases = [
        (np.array([15, 16]), np.array([[450], [451]]), np.array([451])),  # 2 levels: 4PL not identified
        (np.array([4, 8, 16]), np.zeros((3, 1)), np.array([0])),  # nothing ever right
        (np.array([4, 8, 16]), np.full((3, 1), n), np.array([n])),  # everything always right
    ]
    for bits, counts, base in cases:
        fit = fit_curves(bits, counts, base, n)
        assert fit is None or fit.family in ("logistic4", "exponential")
        if fit is not None and not fit.converged:
            _d, _lo, up = fit.drop_band(bits, 0.05)
            assert np.all(np.isinf(up))  # an unconverged curve certifies nothing


def test_summary_is_json_safe():
    import json

    n = 2000
    fit = fit_curves(BITS, (n * logistic(BITS)).round()[:, None], np.array([1800]), n)
    json.dumps(fit.summary(), allow_nan=False)
