"""The simulation model: its true drops and bounds are what the empirical data say."""

from __future__ import annotations

import numpy as np
import pytest

from boundfinder.bounds.simulate import Scenario, curve_drop
from boundfinder.errors import StatisticsError


@pytest.mark.parametrize(("family", "bound"), [("logistic", 9), ("exp2", 10), ("cliff", 8)])
def test_true_bounds(family, bound):
    assert Scenario(family=family, n_items=100).true_bound() == bound
    assert Scenario(family=family, n_items=100, seed_sd=0.5).true_bound() == bound


@pytest.mark.parametrize(("seed_sd", "seed_dist"), [(0.0, "lognormal"), (0.5, "lognormal"), (0.5, "normal")])
def test_empirical_mean_drop_matches_true_drop(seed_sd, seed_dist):
    # Fixed seed 7; 40 repetitions x 5 seeds x 10000 items: the mean paired drop matches the model's true
    # drop to 3 standard errors at every level.
    sc = Scenario(family="exp2", n_items=10000, n_seeds=5, seed_sd=seed_sd, seed_dist=seed_dist)
    rng = np.random.default_rng(7)
    drops = []
    for _ in range(40):
        _, correct, base = sc.sample(rng)
        drops.append(base.mean() - correct.mean(axis=(1, 2)))
    drops = np.array(drops)
    se = drops.std(axis=0, ddof=1) / np.sqrt(len(drops))
    assert np.all(np.abs(drops.mean(axis=0) - sc.true_drop()) <= 3 * se + 1e-4)


def test_seed_variance_shows_in_per_seed_drops_and_items_are_shared():
    sc = Scenario(family="exp2", n_items=20000, n_seeds=40, seed_sd=0.5)
    _, correct, base = sc.sample(np.random.default_rng(0))
    j = sc.bits.index(6)
    per_seed = base.mean(axis=1) - correct[j].mean(axis=1)
    # lognormal sd 0.5 on a 0.086 drop: per-seed sd ~0.045, far above the binomial ~0.002.
    assert per_seed.std() > 0.02
    flips = base & ~correct[j]
    # Fragile items are fragile for every seed: flips correlate across seeds.
    assert np.corrcoef(flips[0], flips[1])[0, 1] > 0.05


def test_bad_scenarios_raise():
    with pytest.raises(StatisticsError, match="family must be one of"):
        Scenario(family="step", n_items=10)
    with pytest.raises(StatisticsError, match="item_rho < 1"):
        Scenario(family="exp2", n_items=10, item_rho=1.0)
    with pytest.raises(StatisticsError, match="family must be one of"):
        curve_drop("step", [4])
    with pytest.raises(StatisticsError, match="seed_dist must be 'lognormal' or 'normal'"):
        Scenario(family="exp2", n_items=10, seed_dist="gamma")
