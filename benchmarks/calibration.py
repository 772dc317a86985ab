"""Calibration study of `boundfinder.bounds.estimate_bound` against curves with a known true bound.

For every setting (curve family x N items x S seeds x between-seed variance) it simulates ``--reps``
experiments (`boundfinder.bounds.simulate.Scenario`, seeds fixed: repetition r of setting k uses
``numpy.random.default_rng([seed, k, r])``), runs the estimator and prints, per setting and method:

* unsafe: fraction of runs whose reported bound is below the true minimum safe bits (target <= 5% at 0.95);
* +1: fraction whose bound is the true bound or one bit above (target >= 80% where N >= 2000);
* cover: fraction whose ``ci`` contains the true bound;
* undet: fraction returned as ``undetermined``;
* mean: mean reported bits over the runs that reported one.

Usage: ``python benchmarks/calibration.py [--reps 400] [--quick] [--methods auto,exact,pooled,...]``.
``--adaptive`` instead compares levels fixed in advance with levels chosen by `suggest_next_bits` on the same
items (`adaptive_study`).
``pooled`` is the item-only score bound on the S x N pairs pooled as if from one seed: what ignoring
between-seed variance gives. ``bootstrap`` and ``curve`` are slower and run with ``--slow-reps``
repetitions at ``--slow-ns`` only.

``--continuous``: continuous per-item scores (`boundfinder.bounds.simulate.ContinuousScenario`, a loss, lower
is better, exp2 drop curve, true bound 10 bits, the level below it a quarter of a standard error above the
tolerance) with heavy-tailed per-item differences (log-normal, Student t 3 df), N in {200, 10000}, one seed
or S in {3, 5, 10} seeds whose drops differ by a log-normal factor (sigma 0.6), plus the binary `Scenario` with
the same seed spread at S in {3, 5, 10} (``--reps``; repetition r of setting k uses
``numpy.random.default_rng([seed, 200 + k, r])``). Extra columns: *drop cover* is the fraction of (run, level)
pairs whose one-sided upper bound is >= the true drop (target >= 0.95), *edge cover* the same at the level just
below the true bound, the one that decides the unsafe rate.
``--per-level``: the per-level comparison that chose the continuous method: one-sided 95% upper bounds on a
mean from N i.i.d. per-item differences, t / percentile bootstrap / studentized (`paired.studentized_bounds`),
coverage over ``--reps`` samples (sample r of distribution k at N uses ``default_rng([seed, 300 + k, N, r])``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np

from boundfinder.bounds import estimate_bound, suggest_next_bits
from boundfinder.bounds.paired import bootstrap_bounds, mean_t_bounds, studentized_bounds
from boundfinder.bounds.simulate import CURVE_FAMILIES, ContinuousScenario, Scenario

SEED_SD = 0.5  # sd of the log multiplier of a seed's drop: seeds ~1.6x apart at one sd


def settings(quick, families=CURVE_FAMILIES, ns=None, seeds=(1, 3, 5), seed_dist="lognormal", no_var=True):
    ns = ns or ((300, 2000) if quick else (300, 2000, 10000))
    for family in families:
        for n in ns:
            for s in seeds:
                for sd in (0.0, SEED_SD) if no_var else (SEED_SD,):
                    yield Scenario(family=family, n_items=n, n_seeds=s, seed_sd=sd, seed_dist=seed_dist)


def run_method(method, bits, correct, base, confidence):
    s = correct.shape[1]
    if method == "pooled":
        n = correct.shape[2]
        return estimate_bound(
            bits,
            correct.reshape(len(bits), s * n),
            base.reshape(s * n),
            method="score",
            confidence=confidence,
            fit_curve=False,
        )
    if method in ("exact", "score") and s > 1:
        return None
    kwargs = {"n_boot": 500} if method == "bootstrap" else {}
    return estimate_bound(
        bits, correct, base, method=method, confidence=confidence, fit_curve=False, **kwargs
    )


def study(reps, slow_reps, methods, quick, seed, confidence, slow_ns=(2000,), out=sys.stdout, **filters):
    header = (
        "| family | N | S | seed var | true | method | runs | unsafe | +1 | cover | undet | mean bits |\n"
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    print(header, file=out, flush=True)
    rows = []
    for k, sc in enumerate(settings(quick, **filters)):
        truth = sc.true_bound()
        for method in methods:
            slow = method in ("bootstrap", "curve")
            n_rep = slow_reps if slow else reps
            if slow and sc.n_items not in slow_ns:
                continue
            if method in ("exact",) and sc.n_seeds > 1:
                continue
            if method in ("t", "pooled", "bootstrap") and sc.n_seeds == 1:
                continue
            if n_rep <= 0:
                continue
            unsafe = within = cover = undet = 0
            got = []
            t0 = time.perf_counter()
            for r in range(n_rep):
                rng = np.random.default_rng([seed, k, r])
                bits, correct, base = sc.sample(rng)
                est = run_method(method, bits, correct, base, confidence)
                if est.status == "undetermined":
                    undet += 1
                if est.bits is not None:
                    got.append(est.bits)
                    unsafe += est.bits < truth
                    within += truth <= est.bits <= truth + 1
                lo, hi = est.ci
                cover += (lo is not None and lo <= truth) and (hi is None or truth <= hi)
            row = {
                "family": sc.family,
                "N": sc.n_items,
                "S": sc.n_seeds,
                "seed_var": sc.seed_sd > 0,
                "true": truth,
                "method": method,
                "runs": n_rep,
                "unsafe": unsafe / n_rep,
                "within1": within / n_rep,
                "cover": cover / n_rep,
                "undet": undet / n_rep,
                "mean_bits": float(np.mean(got)) if got else float("nan"),
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            print(
                f"| {sc.family} | {sc.n_items} | {sc.n_seeds} | {'yes' if row['seed_var'] else 'no'} | "
                f"{truth} | "
                f"{method} | {n_rep} | {row['unsafe']:.3f} | {row['within1']:.3f} | {row['cover']:.3f} | "
                f"{row['undet']:.3f} | {row['mean_bits']:.2f} |",
                file=out,
                flush=True,
            )
    return rows


def adaptive_estimate(table, base, low, high, confidence):
    """Bisection with `suggest_next_bits` on precomputed per-level results; the estimate on the visited levels."""
    measured = []
    kw = {"low": low, "high": high, "confidence": confidence}
    nxt = suggest_next_bits([], np.zeros((0, base.size), bool), base, **kw)
    while nxt is not None:
        measured.append(nxt)
        b = sorted(measured)
        nxt = suggest_next_bits(b, np.stack([table[k] for k in b]), base, **kw)
    b = sorted(measured)
    est = estimate_bound(b, np.stack([table[k] for k in b]), base, confidence=confidence, fit_curve=False)
    return est, len(b)


def adaptive_study(reps, seed, confidence, n_items=2000, out=sys.stdout):
    """Unsafe rate of the bound on levels 4..16 fixed in advance vs levels chosen by bisection, one seed.

    * ``nested``: the ``exp2`` Scenario (errors nested across levels, as in real networks; true bound 10, the
      level below it unsafe by 8% of the tolerance).
    * ``independent``: levels 4..9 each truly unsafe by a hair (drop 0.0105: p10 0.0155, p01 0.005), 10..16
      with no flip, every level flipping its own items (upper bounds not monotone in bits).

    Repetition r of case k uses ``numpy.random.default_rng([seed, 100 + k, r])``. Column *monotone*: runs in
    which no unsafe level's upper bound (all levels measured) is below that of the level just under the bound.
    """
    print(
        "| case | N | runs | fixed: unsafe % | adaptive: unsafe % | adaptive: levels measured | monotone % |\n"
        "|---|---:|---:|---:|---:|---:|---:|",
        file=out,
        flush=True,
    )
    bits = np.arange(4, 17)
    for k, case in enumerate(("nested", "independent")):
        truth = 10
        fixed = adaptive = monotone = 0
        n_measured = []
        for r in range(reps):
            rng = np.random.default_rng([seed, 100 + k, r])
            if case == "nested":
                sc = Scenario(family="exp2", n_items=n_items)
                truth = sc.true_bound()
                _, c3, b2 = sc.sample(rng)
                correct, base = c3[:, 0], b2[0]
            else:
                base = rng.random(n_items) < 0.9
                u = rng.random((bits.size, n_items))
                p10 = np.where(bits < truth, 0.0155, 0.0)[:, None]
                p01 = np.where(bits < truth, 0.005, 0.0)[:, None]
                correct = np.where(base, u >= p10 / 0.9, u < p01 / 0.1)
            full = estimate_bound(bits, correct, base, confidence=confidence, fit_curve=False)
            est, m = adaptive_estimate(
                {int(b): correct[j] for j, b in enumerate(bits)}, base, 4, 16, confidence
            )
            n_measured.append(m)
            fixed += full.bits is not None and full.bits < truth
            adaptive += est.bits is not None and est.bits < truth
            upper = np.array([lv.upper for lv in full.levels])
            j = int(np.flatnonzero(bits == truth - 1)[0])
            monotone += bool(np.all(upper[:j] >= upper[j]))
        print(
            f"| {case} | {n_items} | {reps} | {100 * fixed / reps:.1f} | {100 * adaptive / reps:.1f} | "
            f"{np.mean(n_measured):.2f} | {100 * monotone / reps:.1f} |",
            file=out,
            flush=True,
        )


SKEWED_SEED_SD = 0.6  # the issue's few-seeds setting: seeds' drops differ by a log-normal factor, sigma 0.6


def continuous_settings(ns=(200, 10000), seeds=(3, 5, 10), only_var=False):
    """(label, scenario) pairs of the continuous study; binary settings with the same seed spread last.
    ``only_var``: only the settings with skewed seed spread."""
    for n in ns:
        if not only_var:
            for noise in ("lognormal", "t3"):
                yield "continuous", ContinuousScenario(n_items=n, noise=noise)
            yield "continuous", ContinuousScenario(n_items=n, n_seeds=3, noise="lognormal")
        for s in seeds:
            yield "continuous", ContinuousScenario(n_items=n, n_seeds=s, seed_sd=SKEWED_SEED_SD, noise="lognormal")
    for n in (2000, 10000):
        for s in seeds:
            yield "binary", Scenario(family="exp2", n_items=n, n_seeds=s, seed_sd=SKEWED_SEED_SD)


def continuous_study(
    reps, seed, confidence, n_boot=1000, ns=(200, 10000), seeds=(3, 5, 10), only_var=False, out=sys.stdout
):
    """Unsafe rate, +1 bit, CI cover and per-level drop cover of the default method on continuous scores."""
    print(
        "| scores | per-item noise | N | S | seed spread | true | method | runs | unsafe | +1 | cover | "
        "drop cover | edge cover | undet | mean bits | s/run |\n"
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        file=out,
        flush=True,
    )
    rows = []
    for k, (kind, sc) in enumerate(continuous_settings(ns, seeds, only_var)):
        truth = sc.true_bound()
        true_drop = sc.true_drop()
        edge = int(np.flatnonzero(np.array(sc.bits) == truth - 1)[0])
        unsafe = within = cover = undet = 0
        drop_cover = edge_cover = 0.0
        got = []
        t0 = time.perf_counter()
        for r in range(reps):
            bits, scores, base = sc.sample(np.random.default_rng([seed, 200 + k, r]))
            if kind == "continuous":
                kw = {"tolerance": sc.tolerance, "higher_is_better": False, "n_boot": n_boot}
            else:
                kw = {"tolerance": sc.tolerance, "fit_curve": False}
            est = estimate_bound(bits, scores, base, confidence=confidence, **kw)
            upper = np.array([lv.upper for lv in est.levels])
            drop_cover += float(np.mean(upper >= true_drop))
            edge_cover += float(upper[edge] >= true_drop[edge])
            undet += est.status == "undetermined"
            if est.bits is not None:
                got.append(est.bits)
                unsafe += est.bits < truth
                within += truth <= est.bits <= truth + 1
            lo, hi = est.ci
            cover += (lo is not None and lo <= truth) and (hi is None or truth <= hi)
        row = {
            "scores": kind,
            "noise": getattr(sc, "noise", "binary"),
            "N": sc.n_items,
            "S": sc.n_seeds,
            "seed_sd": sc.seed_sd,
            "true": truth,
            "method": est.method,
            "runs": reps,
            "unsafe": unsafe / reps,
            "within1": within / reps,
            "cover": cover / reps,
            "drop_cover": drop_cover / reps,
            "edge_cover": edge_cover / reps,
            "undet": undet / reps,
            "mean_bits": float(np.mean(got)) if got else float("nan"),
            "seconds": (time.perf_counter() - t0) / reps,
        }
        rows.append(row)
        spread = f"log-normal {sc.seed_sd:g}" if sc.seed_sd > 0 else "none"
        print(
            f"| {kind} | {row['noise']} | {sc.n_items} | {sc.n_seeds} | {spread} | {truth} | {row['method']} | "
            f"{reps} | {row['unsafe']:.3f} | {row['within1']:.3f} | {row['cover']:.3f} | "
            f"{row['drop_cover']:.3f} | {row['edge_cover']:.3f} | {row['undet']:.3f} | {row['mean_bits']:.2f} | "
            f"{row['seconds']:.2f} |",
            file=out,
            flush=True,
        )
    return rows


PER_LEVEL = {
    # name: mean-0 sampler; skewness / tails in the name
    "log-normal sd 1 (skew 6.2)": lambda rng, n: np.exp(rng.standard_normal(n)) - np.exp(0.5),
    "Student t 3 df": lambda rng, n: rng.standard_t(3, n),
    "sparse: 5% of items Exp(5), rest N(0, 0.1)": lambda rng, n: (
        0.1 * rng.standard_normal(n) + (rng.random(n) < 0.05) * rng.exponential(5.0, n) - 0.25
    ),
    "log-normal sd 1.5 (skew 33)": lambda rng, n: np.exp(1.5 * rng.standard_normal(n)) - np.exp(1.125),
    "Lomax 2.5 (infinite 3rd moment)": lambda rng, n: rng.pareto(2.5, n) - 1.0 / 1.5,
}


def per_level_study(reps, seed, confidence, ns=(200, 1000), n_boot=999, out=sys.stdout):
    """Coverage of one-sided upper bounds on a mean (true mean 0) by t, percentile bootstrap, studentized."""
    alpha = 1.0 - confidence
    print(
        "| per-item differences | N | runs | t | percentile bootstrap | studentized (max of bootstrap-t and t) |\n"
        "|---|---:|---:|---:|---:|---:|",
        file=out,
        flush=True,
    )
    for n in ns:
        for k, (name, draw) in enumerate(PER_LEVEL.items()):
            hits = {"t": 0, "pct": 0, "stud": 0}
            for r in range(reps):
                x = draw(np.random.default_rng([seed, 300 + k, n, r]), n)[None, None, :]
                hits["t"] += mean_t_bounds(x, alpha)[1][0] >= 0
                hits["pct"] += bootstrap_bounds(x, alpha, n_boot=n_boot, random_state=r)[1][0] >= 0
                hits["stud"] += studentized_bounds(x, (alpha,), n_boot=n_boot, random_state=r)[0][1][0] >= 0
            print(
                f"| {name} | {n} | {reps} | {hits['t'] / reps:.3f} | {hits['pct'] / reps:.3f} | "
                f"{hits['stud'] / reps:.3f} |",
                file=out,
                flush=True,
            )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400, help="repetitions per setting (fast methods)")
    ap.add_argument("--slow-reps", type=int, default=200, help="repetitions for bootstrap and curve")
    ap.add_argument("--quick", action="store_true", help="40 repetitions, N in {300, 2000} only")
    ap.add_argument(
        "--methods", default="auto,exact,pooled", help="comma list of auto,exact,pooled,bootstrap,curve"
    )
    ap.add_argument("--slow-ns", default="2000", help="comma list of N at which bootstrap/curve run")
    ap.add_argument("--families", default=",".join(CURVE_FAMILIES), help="comma list of curve families")
    ap.add_argument("--ns", default="", help="comma list of N (default 300,2000,10000; quick: 300,2000)")
    ap.add_argument("--seeds", default="1,3,5", help="comma list of S")
    ap.add_argument("--seed-dist", default="lognormal", choices=("lognormal", "normal"))
    ap.add_argument("--only-var", action="store_true", help="skip the settings without seed variance")
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument(
        "--adaptive", action="store_true", help="levels fixed in advance vs chosen by suggest_next_bits"
    )
    ap.add_argument("--continuous", action="store_true", help="continuous scores and few skewed seeds")
    ap.add_argument("--per-level", action="store_true", help="per-level bound coverage: t, bootstrap, studentized")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates in --continuous")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.slow_reps = 40, 20
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    print(
        f"# calibration: {' '.join(['python', *sys.argv])}\n"
        f"# {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; {platform.platform()}; "
        f"python {platform.python_version()}; {os.cpu_count()} CPUs; numpy {np.__version__}\n"
        f"# tolerance 0.01 absolute, confidence {args.confidence}, levels 4..16 bits, baseline accuracy 0.9, "
        + (
            "one seed, levels chosen by suggest_next_bits vs all levels\n"
            if args.adaptive
            else f"item correlation across seeds 0.5, seed variance = {args.seed_dist} drop multiplier sd {SEED_SD}\n"
        ),
        flush=True,
    )
    t0 = time.perf_counter()
    if args.continuous or args.per_level:
        ns = tuple(int(x) for x in args.ns.split(",") if x.strip())
        if args.per_level:
            per_level_study(args.reps, args.seed, args.confidence, ns=ns or (200, 1000))
        else:
            seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip() and int(x) > 1)
            continuous_study(
                args.reps,
                args.seed,
                args.confidence,
                n_boot=args.n_boot,
                ns=ns or (200, 10000),
                seeds=seeds,
                only_var=args.only_var,
            )
        print(f"\n# total {time.perf_counter() - t0:.0f} s", flush=True)
        return
    if args.adaptive:
        for n in tuple(int(x) for x in args.ns.split(",") if x.strip()) or (2000,):
            adaptive_study(args.reps, args.seed, args.confidence, n_items=n)
        print(f"\n# total {time.perf_counter() - t0:.0f} s", flush=True)
        return
    slow_ns = tuple(int(x) for x in args.slow_ns.split(",") if x.strip())
    study(
        args.reps,
        args.slow_reps,
        methods,
        args.quick,
        args.seed,
        args.confidence,
        slow_ns,
        families=tuple(f for f in args.families.split(",") if f),
        ns=tuple(int(x) for x in args.ns.split(",") if x.strip()) or None,
        seeds=tuple(int(x) for x in args.seeds.split(",") if x.strip()),
        seed_dist=args.seed_dist,
        no_var=not args.only_var,
    )
    print(f"\n# total {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
