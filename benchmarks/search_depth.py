"""Search strategies against depth: evaluations and certified cost of TPE alone, the sensitivity path alone and
the default path-then-TPE, next to TPE with ten times the default's budget, on the same models, data and seeds.

Models (digits, 15 epochs, the CLI's defaults otherwise: e8m{b} with b in 0..10, layer level, nearest rounding,
tolerance 0.01, 95% confidence, the model claim):

- ``lenet``: the built-in LeNet (4 groups);
- ``mlp6``: the built-in MLP with six hidden layers of 64 (7 groups);
- ``resnet``: examples/resnet's ResidualCNN as it is (2 residual blocks: 11 groups, 5 convolutions, 5 batch norms
  and the head).

The default's budget is ``groups x (widths - 1) + 40`` evaluations (each group alone at each narrower width, then
40 more); TPE alone gets the same budget, and the reference TPE ten times it.

    python benchmarks/search_depth.py --models lenet,mlp6,resnet --seeds 0
"""

from __future__ import annotations

import argparse
import time

import optuna

from boundfinder.experiment import load_experiment
from boundfinder.search.study import precision_search

MODELS = {
    "lenet": {"model": "lenet"},
    "mlp6": {"model": "mlp", "model_args": {"hidden": [64] * 6}},
    "resnet": {"model": "examples/resnet/resnet.py:ResidualCNN", "data": "digits"},
}
BITS = range(0, 11)


def run(name: str, seeds: list[int], epochs: int, reference: int) -> list[tuple]:
    rows = []
    groups = None
    for strategy, scale in [("path+tpe", 1), ("path", 1), ("tpe", 1), ("tpe", reference)]:
        exp = load_experiment(**MODELS[name])
        if groups is None:
            from boundfinder.search.study import _groups_of

            groups = len(_groups_of(exp.probe(), None))
        budget = groups * (len(BITS) - 1) + 40
        n_trials = 40 if strategy != "tpe" else budget * scale
        start = time.perf_counter()
        r = precision_search(exp, None, "e8m{b}", BITS, seeds=seeds, epochs=epochs, n_trials=n_trials,
                             strategy=strategy, sampler_seed=0)
        seconds = time.perf_counter() - start
        cost = r.chosen.cost if r.chosen is not None else float("nan")
        label = strategy if scale == 1 else f"tpe x{scale}"
        rows.append((name, groups, label, r.n_configurations, cost, seconds,
                     r.chosen.describe() if r.chosen is not None else "none certified"))
        print(f"{name:<7} {groups:>3} {label:<9} {r.n_configurations:>6} {cost:8.3f} {seconds:7.0f}s  {rows[-1][-1]}",
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lenet,mlp6,resnet")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--reference", type=int, default=10, help="the reference TPE's budget, in default budgets")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{'model':<7} {'grp':>3} {'strategy':<9} {'evals':>6} {'cost':>8} {'time':>8}  chosen")
    table = []
    for name in args.models.split(","):
        table += run(name, seeds, args.epochs, args.reference)
    print("\ncertified cost of each strategy over the reference TPE's (lower is better; <= 1.05: within 5%)")
    for name in args.models.split(","):
        ref = next(r[4] for r in table if r[0] == name and r[2].startswith("tpe x"))
        for r in table:
            if r[0] == name and not r[2].startswith("tpe x"):
                print(f"{name:<7} {r[2]:<9} {r[4] / ref:6.3f}")


if __name__ == "__main__":
    main()
