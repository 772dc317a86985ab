"""The certification procedures of search/certify.py: validity against simulated truths, power where the fixed
sequence stalls, p-values that decide exactly as the bounds do."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.certify_procedures import ALPHA, run
from boundfinder.bounds import estimate_bound
from boundfinder.errors import BoundfinderError
from boundfinder.search.certify import PROCEDURES, declared_safe, drop_p_values

SEED = 20261207


def test_every_procedure_keeps_the_family_wise_error_where_every_candidate_is_barely_unsafe():
    # every configuration but the widest has a true drop of 0.0105 against a tolerance of 0.01: any certification
    # below the widest is an error. 600 replicates: a 5% rate has a standard error of 0.9%.
    outcomes = run("boundary", 600, 1000, 2000, SEED)
    for proc, o in outcomes.items():
        assert o.errors / 600 <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / 600), proc
    # not vacuous: the chain reaches the unsafe candidates (measured: 2.6-3.8% errors)
    assert sum(o.errors for o in outcomes.values()) > 0


def test_fallback_from_the_widest_certifies_cheaper_where_a_marginal_candidate_stops_the_fixed_sequence():
    marginal = run("marginal", 300, 1000, 2000, SEED)
    monotone = run("monotone", 300, 1000, 2000, SEED)
    # measured (1000 replicates): marginal 6.61 vs 5.73 cost units saved; monotone 3.16 vs 3.26
    assert marginal["fallback_widest"].saved > 1.08 * marginal["fixed_cost"].saved
    assert monotone["fallback_widest"].saved > 0.9 * monotone["fixed_cost"].saved
    assert marginal["fallback_widest"].errors / 300 <= ALPHA


def test_the_worked_example_of_a_marginal_second_candidate():
    # widest certified (p 0.001), the next one marginal (p 0.06), a cheaper one clearly safe (p 0.002)
    p, cost, val = [0.001, 0.06, 0.002], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]
    assert declared_safe("fixed_cost", p, cost, val, 0.05).tolist() == [True, False, False]
    # fallback: 0.025 on the widest, passed on; 0.0125 + 0.025 for the marginal one (fails); 0.0125 for the last
    assert declared_safe("fallback_widest", p, cost, val, 0.05).tolist() == [True, False, True]
    assert declared_safe("holm", p, cost, val, 0.05).tolist() == [True, False, True]


@pytest.mark.parametrize("seeds", [1, 3])
def test_p_values_decide_exactly_as_the_upper_bounds(seeds):
    rng = np.random.default_rng([SEED, seeds])
    for _ in range(30):
        base = rng.random((seeds, 300)) < 0.9
        drop = rng.uniform(-0.01, 0.04)
        u = rng.random((seeds, 300))
        cand = np.where(base, u >= drop / 0.9 + 0.02, u < 0.2)
        both = np.stack([cand, base])
        p = drop_p_values(both, base, 0.01)
        for alpha in (0.01, 0.05, 0.2):
            est = estimate_bound([0, 1], both if seeds > 1 else both[:, 0], base if seeds > 1 else base[0],
                                 tolerance=0.01, confidence=1 - alpha, fit_curve=False)
            upper = est.levels[0].upper
            if abs(upper - 0.01) > 1e-9:  # (the bound's own bisection resolves the boundary to 2**-60)
                assert (p[0] <= alpha) == (upper <= 0.01)


def test_bad_input_is_refused_with_the_valid_choices():
    with pytest.raises(BoundfinderError, match="procedure must be one of"):
        declared_safe("bonferroni", [0.01], [1.0], [0.0], 0.05)
    with pytest.raises(BoundfinderError, match="0 < alpha < 1"):
        declared_safe("holm", [0.01], [1.0], [0.0], 1.5)
    with pytest.raises(BoundfinderError, match="one value per candidate"):
        declared_safe("holm", [0.01, 0.2], [1.0], [0.0], 0.05)
    with pytest.raises(BoundfinderError, match="on the same items"):
        drop_p_values(np.ones((2, 10), bool), np.ones(9, bool), 0.01)
    assert set(PROCEDURES) >= {"fixed_cost", "fallback_widest"}


def test_the_search_certification_takes_a_procedure():
    # certify() as the search calls it: a marginal second candidate stops the fixed sequence; the fallback from
    # the widest passes it by and certifies the cheaper one, with the family-wise guarantee
    from boundfinder.search.study import Candidate, certify

    rng = np.random.default_rng(SEED)
    n = 3000
    base = rng.random(n) < 0.95
    u = rng.random((3, n))

    def with_drop(d):
        lose = (d + 0.05 * 0.1) / 0.95
        return np.where(base, u[0] >= lose, u[0] < 0.1)

    # cheapest first: clearly safe, marginal (true drop 0.012), widest (no drop)
    correct = np.stack([with_drop(0.0), with_drop(0.012), base.copy()])
    cands = [Candidate(bits={"g": k}, formats={"g": f"c{k}"}, cost=float(k + 1), val_drop=0.0, trial=k)
             for k in range(3)]
    est_fixed, chosen_fixed = certify(cands, correct, base, tolerance=0.01, confidence=0.95)
    est_fb, chosen_fb = certify(cands, correct, base, tolerance=0.01, confidence=0.95, procedure="fallback_widest")
    assert [lv.declared_safe for lv in est_fixed.levels] == [False, False, True] and chosen_fixed is cands[2]
    assert [lv.declared_safe for lv in est_fb.levels] == [True, False, True] and chosen_fb is cands[0]
    assert "fallback_widest" in est_fb.reason and est_fb.status == "ok" and est_fb.bits == 0
    with pytest.raises(BoundfinderError, match="procedure must be one of"):
        certify(cands, correct, base, tolerance=0.01, confidence=0.95, procedure="sequential")


def test_the_cli_offers_the_procedures():
    from boundfinder.cli import build_parser

    args = build_parser().parse_args(["search", "--procedure", "fallback_widest"])
    assert args.procedure == "fallback_widest"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--procedure", "bonferroni"])
