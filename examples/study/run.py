"""The 2017 study of numerical precision in DNNs, answered with boundfinder on data it ships.

    python examples/study/run.py            # the default run (about 20 min on two CPU cores)
    python examples/study/run.py --quick    # the same pipeline, tiny settings (about 2 min): a smoke test
    python examples/study/run.py --mlflow   # also log to MLflow (sqlite:///mlflow.db, or --mlflow URI)

Five experiments, each a table in ``<out>/report.txt``, a figure in ``<out>/*.png`` and an entry of
``<out>/results.json`` (and, with --mlflow, a child run under one parent run):

1. ``truncation``: logistic regression and the CNN trained under float32 with fewer fraction bits (e8m{b}),
   every role rounded (weights, activations, gradients, optimizer state), by truncation (the study's bitmask AND)
   after each op, each layer and each batch; then round-to-nearest and stochastic rounding after each layer.
   Accuracy against bits, and the minimum safe bits with its 95% interval (tolerance 0.01, paired over items and
   seeds: ``SweepResult.bound``).
2. ``switching``: the hypothesis "train at low precision first, switch to high: as good a minimum, faster". The
   CNN trained at a low width (the widest tested width at which training throughout under truncation after each
   layer lost more than the tolerance in experiment 1; e8m2 when it is not run) before a switch
   epoch and in float32 from it on, for several switch epochs (0: float32 throughout; the last: low throughout).
   Final test accuracy with the paired 95% interval of its drop against float32 training, and the optimizer steps
   until the validation accuracy first reaches float32 training's final one (less 0.01).
3. ``switch_search``: ``precision_search(switch=...)``, the best (width, switch epoch) certified on fresh seeds.
4. ``quantization``: the study's 8-bit CNN (integer input, weight and output gradient: ``QuantizationAware``) and
   BinaryNet (``QuantizationAware.binary()`` on the CNN with batch norm and hardtanh), each against the float
   CNN of the same architecture and seeds, with the paired 95% interval of the accuracy drop.
5. ``profile``: where error accumulates (each layer's output error against a float64 run, every layer rounded
   and each alone; :func:`boundfinder.profile.error_profile`) for the two trained models, and what emulation costs
   per level for MLPs of growing depth and width (:func:`boundfinder.profile.cost_profile`).

Data: scikit-learn's digits (embedded, 8x8); ``--data mnist --data-root DIR`` (MNIST's four IDX files) or
``--data cifar10 --data-root DIR`` (the CIFAR-10 python batches) use local files instead; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS = {
    "default": {
        "seeds": (0, 1, 2, 3, 4), "epochs": 15, "bits": (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 23),
        "levels": ("op", "layer", "batch"), "switch": (0, 3, 6, 9, 12, 15), "search_bits": 3, "search_trials": 8,
        "search_seeds": (0, 1, 2), "quant_epochs": 10, "quant_seeds": (0, 1, 2, 3, 4),
        "profile_formats": ("e8m2", "e8m5", "e8m10"), "profile_items": 256,
        "cost_depths": (1, 2, 4), "cost_widths": (32, 128), "cost_repeats": 5,
    },
    "quick": {
        "seeds": (0,), "epochs": 2, "bits": (0, 4, 23), "levels": ("op", "layer", "batch"), "switch": (0, 1, 2),
        "search_bits": 2, "search_trials": 2, "search_seeds": (0,), "quant_epochs": 1, "quant_seeds": (0,),
        "profile_formats": ("e8m2", "e8m10"), "profile_items": 64,
        "cost_depths": (1, 2), "cost_widths": (16,), "cost_repeats": 2,
    },
}
TOLERANCE = 0.01
CONFIDENCE = 0.95


# -- data and models ---------------------------------------------------------------------------------------------

def datamodule(name: str, root: str | None):
    """The study's data: digits (embedded) or local MNIST / CIFAR-10 files."""
    from boundfinder.data import CIFAR10DataModule, DigitsDataModule, MNISTDataModule
    from boundfinder.errors import BoundfinderError

    if name == "digits":
        return DigitsDataModule()
    if root is None:
        raise BoundfinderError(f"--data {name} reads local files: give --data-root DIR (nothing is downloaded).")
    return MNISTDataModule(root=root) if name == "mnist" else CIFAR10DataModule(root=root)


def shapes(name: str) -> dict[str, int]:
    return {"digits": {"in_channels": 1, "image_size": 8}, "mnist": {"in_channels": 1, "image_size": 28},
            "cifar10": {"in_channels": 3, "image_size": 32}}[name]


def model_factory(kind: str, data: str):
    """``logreg``: multinomial logistic regression (SGD, lr 0.1); ``cnn``: the LeNet-style CNN (Adam, lr 3e-3);
    ``cnn_bn``: the same with batch norm and hardtanh, BinaryNet's architecture (and its float counterpart)."""
    from boundfinder.models import LeNet, LogisticRegression

    s = shapes(data)
    if kind == "logreg":
        return lambda: LogisticRegression(num_features=s["in_channels"] * s["image_size"] ** 2)
    extra = {"batch_norm": True, "activation": "hardtanh"} if kind == "cnn_bn" else {}
    return lambda: LeNet(**s, optimizer="adam", lr=3e-3, **extra)


# -- statistics --------------------------------------------------------------------------------------------------

def paired_interval(correct: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """Accuracy drop of ``correct`` (S, N) against ``baseline`` (S, N), paired over seeds and items, with its
    two-sided 95% interval (each side at 2.5%: the crossed seeds x items t bound, floored at the pooled score
    bound; one seed: the score bound)."""
    from boundfinder.bounds import paired

    diff = (baseline.astype(np.int8) - correct.astype(np.int8))[None].astype(float)
    alpha = (1.0 - CONFIDENCE) / 2.0
    if diff.shape[1] > 1:
        lo, up, _ = paired.t_bounds(diff, alpha)
    else:
        d = diff[0, 0]
        lo, up = paired.score_bounds((d > 0).sum(), (d < 0).sum(), d.size, alpha)
    return {"accuracy": float(correct.mean()), "baseline": float(baseline.mean()),
            "drop": float(diff.mean()), "low": float(np.ravel(lo)[0]), "high": float(np.ravel(up)[0])}


def mean_interval(values: list[float]) -> dict[str, float | None]:
    """Mean of per-seed values with a two-sided 95% t interval over the seeds (None with one value)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"mean": None, "low": None, "high": None}
    if v.size == 1:
        return {"mean": float(v[0]), "low": None, "high": None}
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return {"mean": float(v.mean()), "low": float(v.mean() - half), "high": float(v.mean() + half)}


# -- 1. truncation levels ----------------------------------------------------------------------------------------

def truncation(cfg: dict, data: str, dm, log) -> dict[str, Any]:
    from boundfinder.experiment import as_experiment
    from boundfinder.policy import ROLES
    from boundfinder.search.sweep import precision_sweep

    runs = []
    for kind in ("logreg", "cnn"):
        exp = as_experiment(model_factory(kind, data), dm, model_name=kind)
        for rounding, levels in (("truncate", cfg["levels"]), ("nearest", ("layer",)), ("stochastic", ("layer",))):
            for level in levels:
                t0 = time.perf_counter()
                sweep = precision_sweep(exp, None, "e8m{b}", cfg["bits"], level=level, rounding=rounding,
                                        roles=ROLES, seeds=cfg["seeds"], epochs=cfg["epochs"],
                                        train_under_emulation=True)
                bound = sweep.bound(tolerance=TOLERANCE, confidence=CONFIDENCE)
                full = list(sweep.bits).index(23) if 23 in sweep.bits else None
                runs.append({
                    "model": kind, "rounding": rounding, "level": level, "bits": list(sweep.bits),
                    "accuracy": [float(a) for a in sweep.accuracy], "baseline": float(sweep.baseline_accuracy),
                    "min_safe_bits": bound.bits, "ci": list(bound.ci), "status": bound.status,
                    "reason": bound.reason,
                    # e8m23 is float32 itself: training under it must be float32 training, item for item
                    "equal_at_23": None if full is None else bool((sweep.correct[full] == sweep.baseline).all()),
                    "diverged": [f"{d['format']} seed {d['seed']}" for d in sweep.diverged],
                    "seconds": round(time.perf_counter() - t0, 1)})
                log(f"truncation: {kind} {rounding} after each {level}: minimum safe bits {bound.bits} "
                    f"({bound.status}), {runs[-1]['seconds']} s")
    return {"runs": runs, "seeds": list(cfg["seeds"]), "epochs": cfg["epochs"], "tolerance": TOLERANCE}


def truncation_table(result: dict) -> str:
    bits = result["runs"][0]["bits"]
    head = f"{'model':<7} {'rounding':<10} {'level':<6} {'fp32':>6} " + " ".join(f"{b:>5}" for b in bits)
    lines = [f"accuracy after training under e8m{{b}} (every role; seeds {result['seeds']}, {result['epochs']} "
             f"epochs), minimum safe bits at tolerance {result['tolerance']} ({CONFIDENCE:.0%})", head]
    for r in result["runs"]:
        ci = r["ci"]
        safe = (f"{r['min_safe_bits']} [{ci[0]}, {ci[1]}]" if r["min_safe_bits"] is not None else r["status"])
        lines.append(f"{r['model']:<7} {r['rounding']:<10} {r['level']:<6} {r['baseline']:6.3f} "
                     + " ".join(f"{a:5.3f}" for a in r["accuracy"]) + f"   min safe {safe}"
                     + ("" if r["equal_at_23"] in (None, True) else "   (e8m23 differs from float32!)"))
    return "\n".join(lines)


def truncation_plot(result: dict, ax) -> None:
    styles = {"op": ":", "layer": "-", "batch": "--"}
    colors = {"truncate": "C0", "nearest": "C1", "stochastic": "C2"}
    markers = {"logreg": "o", "cnn": "s"}
    for r in result["runs"]:
        ax.plot(r["bits"], r["accuracy"], ls=styles[r["level"]], color=colors[r["rounding"]],
                marker=markers[r["model"]], ms=3, label=f"{r['model']} {r['rounding']} {r['level']}")
    ax.set_xlabel("fraction bits (e8m{b})")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6, ncol=2)


# -- 2. switching ------------------------------------------------------------------------------------------------

def _curve_recorder():
    import lightning.pytorch as pl

    class ValidationCurve(pl.Callback):
        """Validation accuracy after each epoch, with the optimizer steps taken so far."""

        def __init__(self) -> None:
            self.points: list[tuple[int, float]] = []

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking and "val_acc" in trainer.callback_metrics:
                self.points.append((int(trainer.global_step), float(trainer.callback_metrics["val_acc"])))

    return ValidationCurve()


def switching(cfg: dict, data: str, dm, low_bits: int, log) -> dict[str, Any]:
    from boundfinder.callbacks import PrecisionSchedule
    from boundfinder.experiment import as_experiment
    from boundfinder.policy import ROLES, PrecisionPolicy
    from boundfinder.search.measure import trained
    from boundfinder.search.sweep import _measure

    exp = as_experiment(model_factory("cnn", data), dm, model_name="cnn")
    exp.prepare(train=True, splits=("test",))
    fmt = f"e8m{low_bits}"
    policy = PrecisionPolicy.from_spec(fmt, rounding="truncate", roles=ROLES)
    schedules = []
    for switch in cfg["switch"]:
        curves: dict[int, Any] = {}

        def callbacks(seed: int, switch=switch, curves=curves) -> list:
            curves[seed] = _curve_recorder()
            if switch == 0:
                return [curves[seed]]
            return [PrecisionSchedule({0: policy, switch: None}, unit="epoch", level="layer", rounding="truncate",
                                      seed=seed, roles=ROLES), curves[seed]]

        t0 = time.perf_counter()
        diverged: list = []
        models = trained(exp, cfg["seeds"], cfg["epochs"], callbacks, diverged)
        correct = np.stack([_measure(m, exp, exp.device, "test") for m in models])
        schedules.append({"switch": switch, "correct": correct, "curves": {s: c.points for s, c in curves.items()},
                          "diverged": [d["seed"] for d in diverged], "seconds": time.perf_counter() - t0})
        log(f"switching: {fmt} before epoch {switch}, float32 from it on: accuracy {correct.mean():.4f}")
    base = next(s for s in schedules if s["switch"] == 0)
    target = float(np.mean([c[-1][1] for c in base["curves"].values()])) - TOLERANCE
    rows = []
    for s in schedules:
        steps = [next((step for step, acc in curve if acc >= target), None) for curve in s["curves"].values()]
        reached = [v for v in steps if v is not None]
        rows.append({"switch": s["switch"], "low_fraction": s["switch"] / cfg["epochs"],
                     **paired_interval(s["correct"], base["correct"]),
                     "steps_to_target": mean_interval(reached), "reached": f"{len(reached)}/{len(steps)}",
                     "curves": {str(k): v for k, v in s["curves"].items()}, "diverged_seeds": s["diverged"],
                     "seconds": round(s["seconds"], 1)})
    hold = [r for r in rows if r["switch"] > 0 and r["high"] <= TOLERANCE]
    return {"format": fmt, "rounding": "truncate", "level": "layer", "seeds": list(cfg["seeds"]),
            "epochs": cfg["epochs"], "target_val_accuracy": target, "rows": rows,
            "as_good": [r["switch"] for r in hold],
            "verdict": (f"training under {fmt} for the first {max(r['switch'] for r in hold)} of {cfg['epochs']} "
                        "epochs, then float32, is certified within 0.01 of float32 training's accuracy"
                        if hold else f"no schedule with {fmt} epochs is certified within 0.01 of float32 training")}


def switching_table(result: dict) -> str:
    lines = [f"switching: {result['format']} (truncation after each layer, every role) before the switch epoch, "
             f"float32 from it on; seeds {result['seeds']}, {result['epochs']} epochs; steps until the validation "
             f"accuracy reaches {result['target_val_accuracy']:.4f} (float32 training's final, less 0.01)",
             f"{'switch':>6} {'low':>5} {'accuracy':>8} {'drop':>8} {'95% interval':>18} {'steps to target':>22}"]
    for r in result["rows"]:
        st = r["steps_to_target"]
        steps = "never" if st["mean"] is None else (
            f"{st['mean']:.0f}" + (f" [{st['low']:.0f}, {st['high']:.0f}]" if st["low"] is not None else ""))
        lines.append(f"{r['switch']:>6} {r['low_fraction']:5.0%} {r['accuracy']:8.4f} {r['drop']:+8.4f} "
                     f"[{r['low']:+.4f}, {r['high']:+.4f}] {steps:>16} ({r['reached']})")
    lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)


def switching_plot(result: dict, ax) -> None:
    for r in result["rows"]:
        pts = np.array([p for curve in r["curves"].values() for p in curve])
        if pts.size:
            steps = sorted({int(p[0]) for p in pts})
            mean = [pts[pts[:, 0] == s, 1].mean() for s in steps]
            ax.plot(steps, mean, marker=".", label=f"switch at epoch {r['switch']}")
    ax.axhline(result["target_val_accuracy"], color="gray", ls="--", lw=1, label="target")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("validation accuracy (mean over seeds)")
    ax.legend(fontsize=7)


# -- 3. the switch search ----------------------------------------------------------------------------------------

def switch_search(cfg: dict, data: str, dm, low_bits: int, log) -> dict[str, Any]:
    from boundfinder.experiment import as_experiment
    from boundfinder.search.study import precision_search

    exp = as_experiment(model_factory("cnn", data), dm, model_name="cnn")
    bits = list(range(low_bits, low_bits + cfg["search_bits"]))
    result = precision_search(exp, None, "e8m{b}", bits, layers=["*"], rounding="truncate", level="layer",
                              switch=cfg["switch"], seeds=cfg["search_seeds"], epochs=cfg["epochs"],
                              tolerance=TOLERANCE, confidence=CONFIDENCE, n_trials=cfg["search_trials"],
                              sampler_seed=0)
    log(f"switch search: {result.reason}")
    return {"bits": bits, "summary": result.summary(), "report": result.report()}


# -- 4. quantization ---------------------------------------------------------------------------------------------

def _predict_correct(model, dm, callbacks) -> np.ndarray:
    """Per-item correctness on the test items, predicted through the Trainer (so that the callbacks' quantized
    inference is what is measured)."""
    import lightning.pytorch as pl
    import torch

    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         accelerator="cpu")
    loader = dm.test_dataloader()
    preds = torch.cat(trainer.predict(model, dataloaders=loader))
    targets = torch.cat([b[1] for b in loader])
    return (preds == targets).numpy()


def quantization(cfg: dict, data: str, dm, log) -> dict[str, Any]:
    import lightning.pytorch as pl

    from boundfinder.callbacks import QuantizationAware
    from boundfinder.search.sweep import _train

    dm.setup("fit")
    dm.setup("test")
    runs = {}
    for name, kind, make in (("float CNN", "cnn", None),
                             ("8-bit CNN", "cnn", lambda: QuantizationAware("int8", "uint8", "int8")),
                             ("float CNN (batch norm, hardtanh)", "cnn_bn", None),
                             ("BinaryNet", "cnn_bn", QuantizationAware.binary)):
        correct, t0 = [], time.perf_counter()
        for seed in cfg["quant_seeds"]:
            pl.seed_everything(seed, verbose=False)
            model = model_factory(kind, data)()
            callbacks = [make()] if make else []
            failed = _train(model, dm, epochs=cfg["quant_epochs"], seed=seed, callbacks=callbacks,
                            trainer={"accelerator": "cpu"})
            if failed is not None:
                log(f"quantization: {name} seed {seed} diverged at epoch {failed['epoch']}")
            correct.append(_predict_correct(model, dm, callbacks))
        runs[name] = (np.stack(correct), time.perf_counter() - t0)
        log(f"quantization: {name}: accuracy {runs[name][0].mean():.4f}")
    rows = []
    for name, against in (("8-bit CNN", "float CNN"), ("BinaryNet", "float CNN (batch norm, hardtanh)")):
        rows.append({"model": name, "against": against, **paired_interval(runs[name][0], runs[against][0]),
                     "seconds": round(runs[name][1], 1), "float_seconds": round(runs[against][1], 1)})
    return {"seeds": list(cfg["quant_seeds"]), "epochs": cfg["quant_epochs"], "rows": rows}


def quantization_table(result: dict) -> str:
    lines = [f"quantization-aware training (seeds {result['seeds']}, {result['epochs']} epochs): test accuracy and "
             "its paired drop against the float model of the same architecture and seeds",
             f"{'model':<10} {'accuracy':>8} {'float':>8} {'drop':>8} {'95% interval':>18} {'time vs float':>13}"]
    for r in result["rows"]:
        lines.append(f"{r['model']:<10} {r['accuracy']:8.4f} {r['baseline']:8.4f} {r['drop']:+8.4f} "
                     f"[{r['low']:+.4f}, {r['high']:+.4f}] {r['seconds'] / max(r['float_seconds'], 1e-9):12.1f}x")
    return "\n".join(lines)


def quantization_plot(result: dict, ax) -> None:
    names = [r["model"] for r in result["rows"]]
    drops = np.array([r["drop"] for r in result["rows"]])
    err = np.array([[r["drop"] - r["low"] for r in result["rows"]], [r["high"] - r["drop"] for r in result["rows"]]])
    ax.bar(names, drops, yerr=err, capsize=4, color=["C0", "C1"])
    ax.axhline(TOLERANCE, color="C3", ls="--", lw=1, label=f"tolerance {TOLERANCE}")
    ax.set_ylabel("accuracy drop against float (95% interval)")
    ax.legend(fontsize=8)


# -- 5. profile --------------------------------------------------------------------------------------------------

def profiles(cfg: dict, data: str, dm, log) -> dict[str, Any]:
    from boundfinder.experiment import as_experiment, eval_loader
    from boundfinder.profile import cost_profile, error_profile
    from boundfinder.search.measure import trained

    out: dict[str, Any] = {"error": {}}
    for kind in ("logreg", "cnn"):
        exp = as_experiment(model_factory(kind, data), dm, model_name=kind)
        exp.prepare(train=True, splits=("test",))
        model = trained(exp, (0,), cfg["epochs"])[0]
        for level in ("layer", "op"):
            prof = error_profile(model, eval_loader(exp.data, "test"), formats=cfg["profile_formats"], level=level,
                                 rounding="truncate", items=cfg["profile_items"])
            out["error"][f"{kind} {level}"] = prof
            log(f"profile: {kind} after each {level}: {len(prof.layers)} layers")
    out["cost"] = cost_profile(depths=cfg["cost_depths"], widths=cfg["cost_widths"], repeats=cfg["cost_repeats"],
                               format="e8m7", rounding="truncate")
    log("profile: cost table measured")
    return out


def profile_tables(result: dict) -> str:
    parts = []
    for name, prof in result["error"].items():
        parts.append(f"[{name}]\n{prof.report()}")
    parts.append(result["cost"].report())
    return "\n\n".join(parts)


# -- driver ------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings (about 2 min): the pipeline, not the answer")
    ap.add_argument("--out", default="study-results", help="folder for report.txt, results.json, figures")
    ap.add_argument("--data", choices=("digits", "mnist", "cifar10"), default="digits")
    ap.add_argument("--data-root", default=None, help="folder of the local MNIST or CIFAR-10 files")
    ap.add_argument("--mlflow", nargs="?", const="", default=None, metavar="URI",
                    help="log to MLflow: one parent run, a child run per experiment (default sqlite:///mlflow.db)")
    ap.add_argument("--experiment", default="boundfinder-study", help="MLflow experiment name")
    ap.add_argument("--only", default=None, help="comma-separated experiments to run (default all): truncation, "
                    "switching, switch_search, quantization, profile")
    args = ap.parse_args(argv)
    from boundfinder.errors import BoundfinderError

    try:
        return run(args)
    except BoundfinderError as exc:
        print(f"study: {exc}", file=sys.stderr)
        return 2


EXPERIMENTS = ("truncation", "switching", "switch_search", "quantization", "profile")


def run(args: argparse.Namespace) -> int:
    from boundfinder.errors import BoundfinderError

    only = EXPERIMENTS if args.only is None else tuple(e.strip() for e in args.only.split(",") if e.strip())
    unknown = [e for e in only if e not in EXPERIMENTS]
    if unknown:
        raise BoundfinderError(f"--only: unknown experiment(s) {unknown}; valid: {', '.join(EXPERIMENTS)}.")
    if args.mlflow is not None:
        from boundfinder.reports.mlflow_log import check_tracking_uri

        check_tracking_uri(args.mlflow or None)  # before the minutes of work
    cfg = dict(SETTINGS["quick" if args.quick else "default"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {line}", flush=True)

    dm = datamodule(args.data, args.data_root)
    results: dict[str, Any] = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                               "quick": args.quick, "data": args.data, "started": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                                time.gmtime())}
    text: dict[str, str] = {}
    low_bits = 2
    if "truncation" in only:
        results["truncation"] = truncation(cfg, args.data, dm, log)
        text["truncation"] = truncation_table(results["truncation"])
        cnn = next(r for r in results["truncation"]["runs"]
                   if (r["model"], r["rounding"], r["level"]) == ("cnn", "truncate", "layer"))
        lossy = [b for b, a in zip(cnn["bits"], cnn["accuracy"], strict=True) if cnn["baseline"] - a > TOLERANCE]
        if lossy:  # the widest width at which training throughout loses more than the tolerance: one that matters
            low_bits = max(lossy)
    if "switching" in only:
        results["switching"] = switching(cfg, args.data, dm, low_bits, log)
        text["switching"] = switching_table(results["switching"])
    if "switch_search" in only:
        results["switch_search"] = switch_search(cfg, args.data, dm, low_bits, log)
        text["switch_search"] = results["switch_search"]["report"]
    if "quantization" in only:
        results["quantization"] = quantization(cfg, args.data, dm, log)
        text["quantization"] = quantization_table(results["quantization"])
    prof = None
    if "profile" in only:
        prof = profiles(cfg, args.data, dm, log)
        results["profile"] = {"error": {k: p.summary() for k, p in prof["error"].items()},
                              "cost": prof["cost"].summary()}
        text["profile"] = profile_tables(prof)
    results["seconds"] = round(time.perf_counter() - started, 1)
    figures = write_figures(results, prof, out)
    report = "\n\n".join(f"== {name} ==\n{body}" for name, body in text.items())
    (out / "report.txt").write_text(report + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    print(report)
    print(f"\nstudy: {results['seconds']} s; {out / 'report.txt'}, {out / 'results.json'}, "
          f"{len(figures)} figures in {out}")
    if args.mlflow is not None:
        run_id = log_mlflow(args, results, text, figures)
        print(f"study: logged to MLflow, parent run {run_id}")
    return 0


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    return str(v)


def write_figures(results: dict, prof, out: Path) -> dict[str, Path]:
    from boundfinder.reports.html import figure_png

    draw = {"truncation": lambda ax: truncation_plot(results["truncation"], ax),
            "switching": lambda ax: switching_plot(results["switching"], ax),
            "quantization": lambda ax: quantization_plot(results["quantization"], ax)}
    figures = {}
    for name, fn in draw.items():
        if name in results:
            figures[name] = out / f"{name}.png"
            figures[name].write_bytes(figure_png(fn, figsize=(7.0, 4.5)))
    if prof is not None:
        from boundfinder.reports.profile import cost_plot, error_plot

        for name, p in prof["error"].items():
            key = f"profile {name}"
            figures[key] = out / f"profile_{name.replace(' ', '_')}.png"
            figures[key].write_bytes(figure_png(lambda ax, p=p: error_plot(p, ax), figsize=(7.0, 4.5)))
        figures["profile cost"] = out / "profile_cost.png"
        figures["profile cost"].write_bytes(figure_png(lambda ax: cost_plot(prof["cost"], ax), figsize=(7.0, 4.5)))
    return figures


def log_mlflow(args: argparse.Namespace, results: dict, text: dict[str, str], figures: dict[str, Path]) -> str:
    """One parent run (settings, the whole report) and a child run per experiment (its figures, metrics and
    table)."""
    import mlflow

    from boundfinder.reports.mlflow_log import _experiment, _log_batch, check_tracking_uri

    uri = check_tracking_uri(args.mlflow or None)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = _experiment(client, uri, args.experiment)
    parent = client.create_run(exp_id, run_name="study" + (" (quick)" if args.quick else "")).info.run_id
    _log_batch(client, parent, {"data": args.data, "quick": args.quick, **{k: v for k, v in
                                                                          results["settings"].items()}},
               [("seconds", results["seconds"], 0)], {"boundfinder.kind": "study"})
    client.log_text(parent, "\n\n".join(text.values()), "report.txt")
    client.log_text(parent, json.dumps(results, indent=1, default=_json_default), "results.json")
    for name in text:
        child = client.create_run(exp_id, run_name=name, tags={"mlflow.parentRunId": parent}).info.run_id
        _log_batch(client, child, {"experiment": name}, _metrics(name, results[name]),
                   {"boundfinder.kind": f"study-{name}"})
        client.log_text(child, text[name], f"{name}.txt")
        for key, path in figures.items():
            if key == name or key.startswith(f"{name} "):
                client.log_artifact(child, str(path))
        client.set_terminated(child)
    client.set_terminated(parent)
    return parent


def _metrics(name: str, result: dict) -> list[tuple[str, float, int]]:
    """The numbers of one experiment as MLflow metrics (steps: bits, switch epochs)."""
    m: list[tuple[str, float, int]] = []
    if name == "truncation":
        for r in result["runs"]:
            key = f"{r['model']}/{r['rounding']}/{r['level']}"
            m += [(f"accuracy/{key}", a, b) for b, a in zip(r["bits"], r["accuracy"], strict=True)]
            if r["min_safe_bits"] is not None:
                m.append((f"min_safe_bits/{key}", r["min_safe_bits"], 0))
    elif name == "switching":
        for r in result["rows"]:
            m += [("accuracy", r["accuracy"], r["switch"]), ("drop", r["drop"], r["switch"]),
                  ("drop_high", r["high"], r["switch"])]
            if r["steps_to_target"]["mean"] is not None:
                m.append(("steps_to_target", r["steps_to_target"]["mean"], r["switch"]))
    elif name == "quantization":
        for r in result["rows"]:
            key = r["model"].replace(" ", "_")
            m += [(f"accuracy/{key}", r["accuracy"], 0), (f"drop/{key}", r["drop"], 0),
                  (f"drop_high/{key}", r["high"], 0)]
    elif name == "switch_search":
        chosen = result["summary"]["chosen"]
        if chosen is not None:
            m += [("chosen_cost", chosen["cost"], 0), ("chosen_switch_epoch", chosen["switch"], 0)]
    return m


if __name__ == "__main__":
    sys.exit(main())
