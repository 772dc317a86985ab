"""Family-wise error and power of the certification procedures of ``search/certify.py``, by simulation with
known true drops.

Each replicate plays a search: every configuration (cost levels x allocation variants, plus one uniform
configuration per cost level and the widest, uniform too) is measured on fresh validation items; the candidate set
is every uniform configuration (what a uniform bit-width sweep certifies, candidates whatever their validation
drop) and the validation-feasible Pareto front of the others; each procedure certifies it on fresh test items (one
seed, score p-values). A replicate errs when a procedure declares safe a configuration whose true drop exceeds the
tolerance. ``sweep`` is the fixed sequence on the uniform candidates alone at the full alpha (a sweep's
certificate); "not worse" counts the replicates where a procedure's cheapest certified cost is at most the sweep's
(certifying nothing counts as infinitely expensive). ``graph w=...`` is the graphical procedure with that share of
alpha on the uniform chain (``--graph-weights``).

A uniform configuration of a cost level costs a little more than the level's allocations and has the level's drop
times ``UNIFORM_FACTOR`` (1.5): less efficient than a mixed allocation of the same cost, as per-layer widths are.

Scenarios:

- ``monotone``: every allocation of a cost level has the level's drop ``0.03 * 0.7**level`` (the setting of
  tests/search/test_certify_simulation.py): the fixed sequence's best case;
- ``allocations``: allocations of one cost differ (log-normal factor, sigma 1 around the level's drop), as layers
  differ in sensitivity: the front mixes safe and marginal candidates at neighbouring costs;
- ``marginal``: ``allocations`` plus, at every cost level, one allocation whose true drop sits just above the
  tolerance (0.0105) — the LeNet failure, where one marginal candidate stopped the chain;
- ``boundary``: every configuration but the widest sits just above the tolerance (0.0105), the uniform ones too:
  each certification of one is an error, so the family-wise error is near its worst case.

    python benchmarks/certify_procedures.py --replicates 400 --graph-weights 0.5,0.7,0.8,0.9
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import numpy as np

from boundfinder.search.certify import GRAPH_UNIFORM_WEIGHT, PROCEDURES, declared_safe, drop_p_values

TOL, ALPHA = 0.01, 0.05
BASE_ACC, GAIN = 0.95, 0.1  # baseline accuracy; P(a rounded model gets a baseline-wrong item right)
LEVELS, VARIANTS = 10, 8
UNIFORM_FACTOR = 1.5  # a uniform configuration's drop over its cost level's (mixed allocations are more efficient)
SCENARIOS = ("monotone", "allocations", "marginal", "boundary")


@dataclasses.dataclass(frozen=True)
class Outcome:
    errors: int
    certified: int
    saved: float  # cost saved against the widest configuration, summed over replicates (0 when none certified)
    not_worse: int  # replicates whose cheapest certified cost is at most the sweep's


def true_drops(scenario: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true drop, cost, uniform) of every configuration: the allocations, then one uniform configuration per cost
    level, then the widest (uniform, drop 0)."""
    levels = 0.03 * 0.7 ** np.arange(LEVELS)
    level_drop = np.repeat(levels, VARIANTS)
    cost = np.repeat(np.arange(LEVELS) + 1.0, VARIANTS) + np.tile(np.arange(VARIANTS) * 1e-3, LEVELS)
    uniform_drop = levels * UNIFORM_FACTOR
    if scenario == "monotone":
        drop = level_drop
    elif scenario == "boundary":
        drop = np.full(level_drop.size, TOL + 0.0005)
        uniform_drop = np.full(LEVELS, TOL + 0.0005)
    else:
        drop = level_drop * rng.lognormal(0.0, 1.0, level_drop.size)
        if scenario == "marginal":
            drop[::VARIANTS] = TOL + 0.0005
    drop = np.minimum(np.concatenate([drop, uniform_drop, [0.0]]), 0.5)
    cost = np.concatenate([cost, np.arange(LEVELS) + 1.0 + VARIANTS * 1e-3, [LEVELS + 1.0]])
    uniform = np.arange(cost.size) >= level_drop.size
    return drop, cost, uniform


def measure(rng: np.random.Generator, drop: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-item results of the baseline and of every configuration on n fresh items."""
    base = rng.random(n) < BASE_ACC
    lose = (drop + (1 - BASE_ACC) * GAIN) / BASE_ACC  # so that E[drop] = the true drop
    u = rng.random((drop.size, n))
    return base, np.where(base, u >= lose[:, None], u < GAIN)


def front(cost: np.ndarray, val_drop: np.ndarray, uniform: np.ndarray) -> list[int]:
    """Every uniform configuration and the validation-feasible Pareto front (cost up, validation drop down) of the
    others, cheapest first."""
    feasible = [k for k in np.argsort(cost, kind="stable") if val_drop[k] <= TOL and not uniform[k]]
    out, best = [], np.inf
    for k in feasible:
        if val_drop[k] < best:
            out.append(int(k))
            best = val_drop[k]
    return sorted(out + np.flatnonzero(uniform).tolist(), key=lambda k: cost[k])


def procedures(graph_weights: Sequence[float] = (GRAPH_UNIFORM_WEIGHT,)) -> list[str]:
    """The rows of the table: the sweep, every procedure but ``graph``, then ``graph`` at each weight."""
    return ["sweep", *(p for p in PROCEDURES if p != "graph"), *(f"graph w={w:g}" for w in graph_weights),
            "graph, as the search"]


def _certified_cost(safe: np.ndarray, cost: np.ndarray) -> float:
    return float(cost[safe].min()) if safe.any() else np.inf


def run(scenario: str, replicates: int, n_val: int, n_test: int, seed: int,
        graph_weights: Sequence[float] = (GRAPH_UNIFORM_WEIGHT,)) -> dict[str, Outcome]:
    rng = np.random.default_rng([seed, SCENARIOS.index(scenario)])
    names = procedures(graph_weights)
    tallies = {p: [0, 0, 0.0, 0] for p in names}
    for _ in range(replicates):
        drop, cost, uniform = true_drops(scenario, rng)
        base_v, corr_v = measure(rng, drop, n_val)
        idx = front(cost, base_v.mean() - corr_v.mean(axis=1), uniform)
        val_p = drop_p_values(corr_v[idx], base_v, TOL)  # validation evidence: its own p-values
        base_t, corr_t = measure(rng, drop, n_test)
        p = drop_p_values(corr_t[idx], base_t, TOL)
        c, u = cost[idx], uniform[idx]
        sweep = np.zeros(len(idx), dtype=bool)
        sweep[u] = declared_safe("fixed_cost", p[u], c[u], val_p[u], ALPHA)
        sweep_cost = _certified_cost(sweep, c)
        for name in names:
            if name == "sweep":
                safe = sweep
            elif name.startswith("graph w="):
                safe = declared_safe("graph", p, c, val_p, ALPHA, uniform=u, uniform_weight=float(name[8:]))
            elif name == "graph, as the search":
                # as precision_search runs it: a mixed candidate dearer than a uniform one within half the
                # tolerance on validation is not a candidate (search/study.py's _candidates)
                vd = base_v.mean() - corr_v[idx].mean(axis=1)
                confident = u & (vd <= TOL / 2)
                keep = u | (c < (c[confident].min() if confident.any() else np.inf))
                safe = np.zeros(len(idx), dtype=bool)
                safe[keep] = declared_safe("graph", p[keep], c[keep], val_p[keep], ALPHA, uniform=u[keep])
            else:
                safe = declared_safe(name, p, c, val_p, ALPHA)
            t = tallies[name]
            t[0] += bool((drop[idx][safe] > TOL).any())
            if safe.any():
                t[1] += 1
                t[2] += cost[-1] - c[safe].min()
            t[3] += _certified_cost(safe, c) <= sweep_cost
    return {p: Outcome(*t) for p, t in tallies.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=400)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--graph-weights", default=f"{GRAPH_UNIFORM_WEIGHT:g}",
                        help="comma-separated shares of alpha on the uniform chain, one graph row each")
    args = parser.parse_args()
    weights = [float(w) for w in args.graph_weights.split(",")]
    print(f"replicates {args.replicates}, validation items {args.n_val}, test items {args.n_test}, tolerance {TOL}, "
          f"alpha {ALPHA}, seed {args.seed}; saved = mean cost units below the widest (0 when none certified)")
    print("| scenario | procedure | family-wise error | certified | mean saved | not worse than sweep |")
    print("|---|---|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        for proc, o in run(scenario, args.replicates, args.n_val, args.n_test, args.seed, weights).items():
            r = args.replicates
            print(f"| {scenario} | {proc} | {o.errors / r:.1%} | {o.certified / r:.1%} | {o.saved / r:.2f} "
                  f"| {o.not_worse / r:.1%} |")


if __name__ == "__main__":
    main()
