"""Power helpers against closed forms and a simulation of the achieved power."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from boundfinder.bounds import min_detectable_drop, required_items
from boundfinder.bounds.paired import score_bounds
from boundfinder.errors import StatisticsError


def test_min_detectable_drop_without_flips_is_rule_of_three_like():
    z2 = stats.norm.ppf(0.95) ** 2
    for n in (100, 300, 2000):
        assert min_detectable_drop(n) == pytest.approx(z2 / (n + z2), rel=1e-9)


def test_min_detectable_drop_shrinks_like_sqrt_n_with_flips():
    a, b = min_detectable_drop(1000, discordance=0.05), min_detectable_drop(4000, discordance=0.05)
    assert a / b == pytest.approx(2.0, rel=0.05)


def test_required_items_achieves_the_requested_power_in_simulation():
    # Fixed seed 11; 1500 simulated experiments at the recommended N: achieved power within 3 points of 0.8.
    tol, pd, d = 0.01, 0.02, 0.002
    n = required_items(tol, discordance=pd, expected_drop=d)
    rng = np.random.default_rng(11)
    cells = rng.multinomial(n, [(pd + d) / 2, (pd - d) / 2, 1 - pd], size=1500)
    _, up = score_bounds(cells[:, 0], cells[:, 1], n, 0.05)
    power = float(np.mean(up <= tol))
    assert power == pytest.approx(0.8, abs=0.03)
    assert required_items(tol, discordance=pd, expected_drop=d, power=0.9) > n


def test_power_helpers_reject_bad_input():
    with pytest.raises(StatisticsError, match="expected_drop < tolerance"):
        required_items(0.01, discordance=0.05, expected_drop=0.02)
    with pytest.raises(StatisticsError, match=r"\|expected_drop\| <= discordance"):
        required_items(0.01, discordance=0.001, expected_drop=0.005)
    with pytest.raises(StatisticsError, match="n_items must be an int >= 1"):
        min_detectable_drop(0)


def test_continuous_planning_achieves_the_requested_power_in_simulation():
    # Normal per-item differences, sd 0.3, true drop 0.02, tolerance 0.05: at the recommended N the default
    # (studentized) bound certifies the level in about 80% of 300 simulated experiments (fixed seed 12).
    from boundfinder.bounds.paired import studentized_bounds

    n = required_items(0.05, expected_drop=0.02, item_sd=0.3)
    assert n == pytest.approx(((stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) * 0.3 / 0.03) ** 2, rel=0.02)
    rng = np.random.default_rng(12)
    x = 0.02 + 0.3 * rng.standard_normal((300, 1, n))
    ups = studentized_bounds(x, (0.05,), n_boot=300)[0][1]
    # 3 binomial standard errors of 300 runs at 0.8 is 0.07.
    assert float(np.mean(ups <= 0.05)) == pytest.approx(0.8, abs=0.07)
    assert min_detectable_drop(n, item_sd=0.3) == pytest.approx(stats.t.ppf(0.95, n - 1) * 0.3 / np.sqrt(n))
    with pytest.raises(StatisticsError, match="not both"):
        min_detectable_drop(100, discordance=0.1, item_sd=0.3)
