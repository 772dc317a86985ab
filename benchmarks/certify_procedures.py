"""Family-wise error and power of the certification procedures of ``search/certify.py``, by simulation with
known true drops.

Each replicate plays a search: every configuration (cost levels x allocation variants) is measured on fresh
validation items, the validation-feasible Pareto front (plus the widest configuration) becomes the candidate set,
and each procedure certifies it on fresh test items (one seed, score p-values). A replicate errs when a
procedure declares safe a configuration whose true drop exceeds the tolerance.

Scenarios:

- ``monotone``: every allocation of a cost level has the level's drop ``0.03 * 0.7**level`` (the setting of
  tests/search/test_certify_simulation.py): the fixed sequence's best case;
- ``allocations``: allocations of one cost differ (log-normal factor, sigma 1 around the level's drop), as layers
  differ in sensitivity: the front mixes safe and marginal candidates at neighbouring costs;
- ``marginal``: ``allocations`` plus, at every cost level, one allocation whose true drop sits just above the
  tolerance (0.0105) — the LeNet failure, where one marginal candidate stopped the chain;
- ``boundary``: every configuration but the widest sits just above the tolerance (0.0105): each certification of
  one is an error, so the family-wise error is near its worst case.

    python benchmarks/certify_procedures.py --replicates 400
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from boundfinder.search.certify import PROCEDURES, declared_safe, drop_p_values

TOL, ALPHA = 0.01, 0.05
BASE_ACC, GAIN = 0.95, 0.1  # baseline accuracy; P(a rounded model gets a baseline-wrong item right)
LEVELS, VARIANTS = 10, 8
SCENARIOS = ("monotone", "allocations", "marginal", "boundary")


@dataclasses.dataclass(frozen=True)
class Outcome:
    errors: int
    certified: int
    saved: float  # cost saved against the widest configuration, summed over replicates (0 when none certified)


def true_drops(scenario: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(true drop, cost) of every configuration; the last one is the widest (drop 0)."""
    level_drop = np.repeat(0.03 * 0.7 ** np.arange(LEVELS), VARIANTS)
    cost = np.repeat(np.arange(LEVELS) + 1.0, VARIANTS) + np.tile(np.arange(VARIANTS) * 1e-3, LEVELS)
    if scenario == "monotone":
        drop = level_drop
    elif scenario == "boundary":
        drop = np.full(level_drop.size, TOL + 0.0005)
    else:
        drop = level_drop * rng.lognormal(0.0, 1.0, level_drop.size)
        if scenario == "marginal":
            drop[::VARIANTS] = TOL + 0.0005
    drop = np.minimum(drop, 0.5)
    return np.append(drop, 0.0), np.append(cost, LEVELS + 1.0)


def measure(rng: np.random.Generator, drop: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-item results of the baseline and of every configuration on n fresh items."""
    base = rng.random(n) < BASE_ACC
    lose = (drop + (1 - BASE_ACC) * GAIN) / BASE_ACC  # so that E[drop] = the true drop
    u = rng.random((drop.size, n))
    return base, np.where(base, u >= lose[:, None], u < GAIN)


def front(cost: np.ndarray, val_drop: np.ndarray) -> list[int]:
    """The validation-feasible Pareto front (cost up, validation drop down), plus the widest configuration."""
    feasible = [k for k in np.argsort(cost, kind="stable") if val_drop[k] <= TOL]
    out, best = [], np.inf
    for k in feasible:
        if val_drop[k] < best:
            out.append(int(k))
            best = val_drop[k]
    widest = cost.size - 1
    if widest not in out:
        out.append(widest)
    return out


def run(scenario: str, replicates: int, n_val: int, n_test: int, seed: int) -> dict[str, Outcome]:
    rng = np.random.default_rng([seed, SCENARIOS.index(scenario)])
    tallies = {p: [0, 0, 0.0] for p in PROCEDURES}
    for _ in range(replicates):
        drop, cost = true_drops(scenario, rng)
        base_v, corr_v = measure(rng, drop, n_val)
        idx = front(cost, base_v.mean() - corr_v.mean(axis=1))
        val_p = drop_p_values(corr_v[idx], base_v, TOL)  # validation evidence: its own p-values
        base_t, corr_t = measure(rng, drop, n_test)
        p = drop_p_values(corr_t[idx], base_t, TOL)
        for proc in PROCEDURES:
            safe = declared_safe(proc, p, cost[idx], val_p, ALPHA)
            t = tallies[proc]
            t[0] += bool((drop[idx][safe] > TOL).any())
            if safe.any():
                t[1] += 1
                t[2] += cost[-1] - cost[idx][safe].min()
    return {p: Outcome(*t) for p, t in tallies.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=400)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=20261207)
    args = parser.parse_args()
    print(f"replicates {args.replicates}, validation items {args.n_val}, test items {args.n_test}, tolerance {TOL}, "
          f"alpha {ALPHA}, seed {args.seed}; saved = mean cost units below the widest (0 when none certified)")
    print("| scenario | procedure | family-wise error | certified | mean saved |")
    print("|---|---|---:|---:|---:|")
    for scenario in SCENARIOS:
        for proc, o in run(scenario, args.replicates, args.n_val, args.n_test, args.seed).items():
            r = args.replicates
            print(f"| {scenario} | {proc} | {o.errors / r:.1%} | {o.certified / r:.1%} | {o.saved / r:.2f} |")


if __name__ == "__main__":
    main()
