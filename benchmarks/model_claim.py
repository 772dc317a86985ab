"""Type-I error and power of the claims about S fixed trained models (``model_p_values`` of
``search/certify.py``), by simulation with known true drops.

The S models are fixed; only the test items are random. Each replicate draws N fresh items and, for every model
``s``, whether the candidate loses the item (``baseline - correct = 1``, rate ``g + max(drop_s, 0)``), gains it
(``-1``, rate ``g + max(-drop_s, 0)``) or neither: ``g`` is the discordance, the flips both ways that cancel in
the drop. ``rho`` is the correlation of the flips across the models: each item, with probability ``rho``, draws
one uniform that decides its flips in every model (the same items flip in every model), otherwise one per model
(rho = 0: independent models; 1: the same items flip in all of them). Models are homogeneous (every drop equals
the mean drop) or heterogeneous (drops ``D + 0.01 * linspace(-1, 1, S)``: 0, 0.01, 0.02 around a mean of 0.01).

At a mean drop ``D`` = the tolerance (0.01) the rate of rejections of ``H: mean drop > tolerance`` is the type-I
error of ``combine="mean"``; at 0.005 and 0 it is the power. Methods (each a one-sided test at alpha 0.05):

- ``mean``: ``model_p_values(combine="mean")``: the largest of the t test over items, the score test on the
  pooled S N pairs, and the score test on the items' mean differences;
- ``each``: ``model_p_values(combine="each")``, the intersection-union test of "every model within the
  tolerance" (where models differ it tests another claim: its rejections are not errors of the mean's);
- ``t+pooled``: the first version of ``mean``, without the item score test (to show why it is there);
- ``sweep``: ``drop_p_values`` on (K, S, N), the crossed seeds x items bound a uniform sweep certifies with (a
  bound on the training recipe's drop, for reference).

    python benchmarks/model_claim.py --replicates 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import numpy as np
from scipy import stats

from boundfinder.bounds import paired
from boundfinder.search.certify import _drop_p_values_of, _mean_t, _model_p_values_of

TOL, ALPHA = 0.01, 0.05
MODELS, ITEMS = (1, 3, 5), (449, 2000)
DISCORDANCE = (0.002, 0.01, 0.03)
CORRELATIONS = (0.0, 0.5, 1.0)
DROPS = (0.01, 0.005, 0.0)  # the tolerance (type-I error), then two safe drops (power)
SPREAD = 0.01  # heterogeneous models: the drops span mean +- SPREAD
METHODS = ("mean", "each", "t+pooled", "sweep")
CHUNK = 500  # replicates drawn at once: (500, 5, 2000) cells, about 40 MB as float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cell:
    models: int
    items: int
    drop: float  # the mean drop over the models
    discordance: float
    correlation: float
    heterogeneous: bool

    @property
    def model_drops(self) -> np.ndarray:
        spread = SPREAD * np.linspace(-1.0, 1.0, self.models) if self.heterogeneous and self.models > 1 else 0.0
        return self.drop + np.zeros(self.models) + spread


def cells() -> list[Cell]:
    """Every configuration: one model alone has no correlation or heterogeneity to vary."""
    out = []
    for drop, s, n, g in itertools.product(DROPS, MODELS, ITEMS, DISCORDANCE):
        for rho, het in itertools.product(CORRELATIONS if s > 1 else (0.0,), (False, True) if s > 1 else (False,)):
            out.append(Cell(models=s, items=n, drop=drop, discordance=g, correlation=rho, heterogeneous=het))
    return out


def simulate(cell: Cell, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """``baseline - correct`` (replicates, S, N) int8 in {-1, 0, 1}."""
    drops = cell.model_drops
    lose = (cell.discordance + np.maximum(drops, 0.0))[None, :, None]
    gain = (cell.discordance + np.maximum(-drops, 0.0))[None, :, None]
    shape = (replicates, cell.models, cell.items)
    shared = rng.random((replicates, 1, cell.items)) < cell.correlation
    u = np.where(shared, rng.random((replicates, 1, cell.items)), rng.random(shape))
    return (u < lose).astype(np.int8) - (u > 1.0 - gain).astype(np.int8)


def _t_pooled_p(diff: np.ndarray) -> np.ndarray:
    """The first version of ``mean``: t over the items, floored by the score test on the pooled pairs."""
    _k, s, n = diff.shape
    mean, se = _mean_t(diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, (TOL - mean) / se, np.where(mean < TOL, np.inf, -np.inf))
    b10 = (diff > 0).sum(axis=(1, 2)).astype(float)
    b01 = (diff < 0).sum(axis=(1, 2)).astype(float)
    pooled = stats.norm.cdf(paired._tango_z(b10, b01, float(s * n), TOL))
    return pooled if s == 1 else np.maximum(stats.t.sf(t, n - 1), pooled)


def rejection_rates(cell: Cell, replicates: int, seed: int) -> dict[str, float]:
    """The share of replicates in which each method rejects ``H: drop > TOL`` at ``ALPHA``."""
    rng = np.random.default_rng([seed, cells().index(cell)])
    hits = dict.fromkeys(METHODS, 0)
    for start in range(0, replicates, CHUNK):
        diff = simulate(cell, min(CHUNK, replicates - start), rng)
        p = {"mean": _model_p_values_of(diff, TOL, "mean"), "each": _model_p_values_of(diff, TOL, "each"),
             "t+pooled": _t_pooled_p(diff), "sweep": _drop_p_values_of(diff.astype(float), TOL)}
        for name in METHODS:
            hits[name] += int((p[name] <= ALPHA).sum())
    return {name: hits[name] / replicates for name in METHODS}


def _summary(rates: dict[Cell, dict[str, float]], replicates: int) -> None:
    margin = 3.0 * np.sqrt(ALPHA * (1 - ALPHA) / replicates)
    print(f"\nSummary: type-I error = the largest rejection rate at D = {TOL} over discordance and heterogeneity "
          f"(limit {ALPHA:.0%} + 3 s.e. = {ALPHA + margin:.1%}); power = the mean rejection rate over the "
          "discordances, homogeneous models (where the claims coincide), mean / each / sweep")
    print("| S | N | rho | type-I `mean` | type-I `t+pooled` | type-I `sweep` | power D = 0.005 | power D = 0 |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    for s, n in itertools.product(MODELS, ITEMS):
        for rho in CORRELATIONS if s > 1 else (0.0,):
            group = {c: r for c, r in rates.items() if (c.models, c.items, c.correlation) == (s, n, rho)}
            boundary = [r for c, r in group.items() if c.drop == TOL]
            power = []
            for drop in DROPS[1:]:
                rs = [r for c, r in group.items() if c.drop == drop and not c.heterogeneous]
                power.append(" / ".join(f"{np.mean([r[m] for r in rs]):.1%}" for m in ("mean", "each", "sweep")))
            worst = " | ".join(f"{max(r[m] for r in boundary):.1%}" for m in ("mean", "t+pooled", "sweep"))
            print(f"| {s} | {n} | {rho:g} | {worst} | {power[0]} | {power[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=20261207)
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"replicates {args.replicates} per cell, tolerance {TOL}, alpha {ALPHA}, seed {args.seed}; rejection rates "
          "of H: mean drop > tolerance")
    print("| S | N | g | rho | models | D | mean | each | t+pooled | sweep |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    rates = {}
    for cell in cells():
        r = rates[cell] = rejection_rates(cell, args.replicates, args.seed)
        print(f"| {cell.models} | {cell.items} | {cell.discordance:g} | {cell.correlation:g} "
              f"| {'differ' if cell.heterogeneous else 'equal'} | {cell.drop:g} | "
              + " | ".join(f"{r[m]:.1%}" for m in METHODS) + " |", flush=True)
    _summary(rates, args.replicates)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
