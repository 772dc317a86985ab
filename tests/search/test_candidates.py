"""Candidate generation: uniform configurations, the sensitivity-ordered greedy path and its binary search, on
a synthetic network whose drops are known (additive per group)."""

from __future__ import annotations

import itertools
import math

import pytest

from boundfinder.errors import BoundfinderError
from boundfinder.search.candidates import search_path, sensitivity_path, uniform_configurations

WIDTHS = [10, 8, 6, 4, 2, 1]
# parameters and sensitivity per group: a big insensitive layer, a small sensitive one, two in between
PARAMS = {"embed": 4000, "attn": 1000, "mlp": 3000, "head": 200}
SENS = {"embed": 0.01, "attn": 0.5, "mlp": 0.05, "head": 2.0}
TOL = 0.01


def cost(config):
    return sum(PARAMS[g] * w for g, w in config.items()) / sum(PARAMS.values())


def drop(config):
    """The true validation drop: additive over groups, each halving per added bit."""
    return sum(SENS[g] * 2.0 ** -config[g] for g in config)


def alone():
    widest = dict.fromkeys(PARAMS, WIDTHS[0])
    return {g: {w: drop({**widest, g: w}) - drop(widest) for w in WIDTHS} for g in PARAMS}


def test_the_path_lowers_one_group_one_step_at_a_time_from_widest_to_narrowest():
    path = sensitivity_path(alone(), cost)
    assert len(path) == len(PARAMS) * (len(WIDTHS) - 1) + 1
    assert path[0] == dict.fromkeys(PARAMS, 10) and path[-1] == dict.fromkeys(PARAMS, 1)
    for a, b in itertools.pairwise(path):
        changed = [g for g in a if a[g] != b[g]]
        assert len(changed) == 1 and WIDTHS.index(b[changed[0]]) == WIDTHS.index(a[changed[0]]) + 1
    # the big insensitive group goes down before the small sensitive one
    first_low = {g: next(i for i, c in enumerate(path) if c[g] == 1) for g in PARAMS}
    assert first_low["embed"] < first_low["head"]


def test_the_binary_search_finds_a_cheaper_feasible_configuration_than_every_uniform_one():
    path = sensitivity_path(alone(), cost)
    found, measured = search_path(path, lambda c: drop(c) <= TOL)
    assert found is not None and drop(path[found]) <= TOL
    assert len(measured) <= math.ceil(math.log2(len(path))) + 1
    uniform = [c for c in uniform_configurations(list(PARAMS), WIDTHS) if drop(c) <= TOL]
    assert cost(path[found]) < min(cost(c) for c in uniform)
    # the binary search lands where a linear scan of the path would (feasibility falls once along it here)
    assert found == max(i for i, c in enumerate(path) if drop(c) <= TOL)


def test_nothing_feasible_and_bad_input():
    path = sensitivity_path(alone(), cost)
    assert search_path(path, lambda c: False) == (None, [0])
    with pytest.raises(BoundfinderError, match="at least one group"):
        sensitivity_path({}, cost)
    with pytest.raises(BoundfinderError, match="at least one group"):
        uniform_configurations([], WIDTHS)
