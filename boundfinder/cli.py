"""The ``boundfinder`` command line.

    boundfinder formats                 # every named format with its bits, range and precision
    boundfinder formats --json
    boundfinder quantize e4m3fn 0.1 300 1e6 --rounding truncate
    boundfinder sweep --plot sweep.png     # minimum safe bits of one format family, with a confidence interval
    boundfinder sensitivity                # minimum safe bits of each layer and role alone, simultaneous CIs
    boundfinder search --trials 40         # per-layer bit widths with Optuna, certified on held-out items
    boundfinder search --switch 0-15       # ... and the epoch of a low -> high precision switch in training
    boundfinder search --config config.yaml                      # your LightningCLI model and DataModule
    boundfinder sensitivity --config config.yaml --ckpt last.ckpt   # a trained model, as it is
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable

from boundfinder.errors import BoundfinderError
from boundfinder.formats import (
    ROUNDING_MODES,
    BinaryFormat,
    BlockFormat,
    DynamicFixedPointFormat,
    FixedPointFormat,
    FloatFormat,
    Format,
    IntFormat,
    format_names,
    parse_format,
)


def describe(fmt: Format) -> dict:
    """One row of ``boundfinder formats``: JSON-safe facts about a format."""
    row: dict = {"name": str(fmt), "family": type(fmt).__name__, "bits": fmt.bits}
    if isinstance(fmt, FloatFormat):
        row |= {"max": fmt.max_finite, "min_normal": fmt.min_normal, "min_subnormal": fmt.min_subnormal,
                "rel_precision": 2.0 ** -(fmt.man_bits + 1), "inf": fmt.has_inf, "nan": fmt.has_nan,
                "overflow": fmt.overflow}
    elif isinstance(fmt, FixedPointFormat):
        row |= {"max": fmt.max_finite, "min_subnormal": fmt.quantum, "overflow": "saturate"}
    elif isinstance(fmt, DynamicFixedPointFormat):
        row |= {"note": f"scale per tensor, overflow rate <= {fmt.overflow_rate:g}"}
    elif isinstance(fmt, IntFormat):
        kind = "symmetric" if fmt.symmetric else "affine"
        where = "per tensor" if fmt.axis is None else f"per channel (axis {fmt.axis})"
        row |= {"codes": f"[{fmt.qmin}, {fmt.qmax}]", "note": f"{kind}, min/max calibrated {where}"}
    elif isinstance(fmt, BinaryFormat):
        row |= {"note": "sign(x) in {-1, +1}" + (" x mean|x|" if fmt.scale == "mean" else "")}
    elif isinstance(fmt, BlockFormat):
        row |= {"max": fmt.element.max_finite, "bits_per_element": fmt.bits_per_element,
                "note": f"block of {fmt.block_size}, shared e8m0 scale, element {fmt.element}"}
    return row


def _num(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.6g}"
    return str(v)


def _cmd_formats(args: argparse.Namespace) -> int:
    rows = [describe(parse_format(n)) for n in (args.names or format_names())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<12} {'family':<24} {'bits':>4}  {'max':>10} {'min normal':>11} {'min subnormal':>13}  notes")
    for r in rows:
        notes = r.get("note", "")
        if r["family"] == "FloatFormat":
            notes = f"overflow -> {r['overflow']}" + ("" if r["inf"] else ", no inf") + ("" if r["nan"] else ", no NaN")
        print(f"{r['name']:<12} {r['family']:<24} {r['bits']:>4}  {_num(r.get('max', '')):>10} "
              f"{_num(r.get('min_normal', '')):>11} {_num(r.get('min_subnormal', '')):>13}  {notes}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from boundfinder.quantize import quantize

    x = torch.tensor(args.values, dtype=torch.float32)
    y = quantize(x, args.format, args.rounding)
    for a, b in zip(x.tolist(), y.tolist(), strict=True):
        print(f"{a!r:>24} -> {b!r}")
    return 0


def _int_list(text: str) -> list[int]:
    """``"0-4,8"`` -> [0, 1, 2, 3, 4, 8]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                out += list(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise BoundfinderError(f"expected integers and ranges such as '0-10' or '2,4,8', but got {text!r}.") from None
    return out


def _json_object(text: str | None, flag: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BoundfinderError(f"{flag} takes a JSON object such as '{{\"hidden\": [64], \"lr\": 0.05}}', but got "
                               f"{text!r} ({exc.msg}).") from None
    if not isinstance(value, dict):
        raise BoundfinderError(f"{flag} takes a JSON object (keyword arguments), but got {text!r}.")
    return value


def _devices(text: str | None):
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def _experiment(args: argparse.Namespace):
    """The user's experiment from --model/--data/--config/--ckpt/--score and the Trainer options; fills in
    ``args.epochs`` (``--epochs``, else the config's ``trainer.max_epochs``, else 15) and ``args.seeds``."""
    from boundfinder.experiment import config_epochs, load_experiment

    exp = load_experiment(model=args.model, data=args.data, model_args=_json_object(args.model_args, "--model-args"),
                          data_args=_json_object(args.data_args, "--data-args"), config=args.config, ckpt=args.ckpt,
                          model_argv=args.model_argv, data_argv=args.data_argv,
                          score=_score(args), trainer={"accelerator": args.accelerator,
                                                     "devices": _devices(args.devices), "precision": args.precision})
    if args.epochs is None:
        args.epochs = config_epochs(args.config) or 15
    if args.seeds is None and not exp.trained:
        args.seeds = "0,1,2"
    return exp


def _score(args: argparse.Namespace):
    """The score of --score with its direction (--higher-is-better / --lower-is-better), None for the default."""
    from boundfinder.experiment import resolve_score

    direction = getattr(args, "higher_is_better", None)
    return None if args.score is None and direction is None else resolve_score(args.score, higher_is_better=direction)


def _check_tolerance(args: argparse.Namespace, exp) -> None:
    """Before any training: a continuous score needs --tolerance in its units (there is no default); --relative is
    for continuous scores or accuracy alike."""
    from boundfinder.search.sweep import check_tolerance

    if not exp.score.continuous:
        if args.tolerance is None:
            args.tolerance = 0.01
        return
    try:
        args.relative = check_tolerance(exp.score, args.tolerance, args.relative)
    except BoundfinderError as exc:
        flag = f"--score {exp.score.name}"
        raise BoundfinderError(f"{flag}: {exc}") from None


def _seeds(args: argparse.Namespace) -> list[int] | None:
    return None if args.seeds is None else _int_list(args.seeds)


def _models_line(exp, n_items: int, seeds) -> str:
    """``model mlp on digits (449 test items, seeds [0, 1, 2])``: the head line of every report."""
    if exp.trained:
        where = f" from {exp.checkpoint}" if exp.checkpoint else ""
        return f"model {exp.model_name} on {exp.data_name} ({n_items} test items, the trained model{where}, as it is)"
    return f"model {exp.model_name} on {exp.data_name} ({n_items} test items, seeds {list(seeds)})"


def _experiment_params(exp) -> dict:
    """What MLflow records of the experiment beyond the result's own description: the Trainer settings and the
    data's class."""
    d = exp.describe()
    return {"data_class": d["data_class"], **{f"trainer.{k}": v for k, v in d["trainer"].items()}}


@contextlib.contextmanager
def _mlflow_run(args: argparse.Namespace, kind: str, title: str):
    """With --mlflow, a run opened before the work (so that it spans the training) and closed as FAILED or
    KILLED if the work stops; ``args.run_id`` is the run ``_publish`` fills."""
    args.run_id = None
    if args.mlflow is None:
        yield
        return
    from boundfinder.reports.mlflow_log import end_run, start_run

    args.run_id = start_run(tracking_uri=args.mlflow, experiment=args.experiment, run_name=title, kind=kind)
    try:
        yield
    except KeyboardInterrupt:
        end_run(args.run_id, tracking_uri=args.mlflow, status="KILLED", reason="interrupted")
        raise
    except BaseException as exc:
        end_run(args.run_id, tracking_uri=args.mlflow, status="FAILED", reason=str(exc) or type(exc).__name__)
        raise


def _check_mlflow(args: argparse.Namespace) -> None:
    """Before any work: MLflow is installed and its store opens (a server answers); args.mlflow becomes the URI."""
    if getattr(args, "no_confirm", False) and (args.mlflow is not None or args.html):
        raise BoundfinderError("--no-confirm only adds trials; --mlflow and --html report a certified search. "
                               "Use them on the run that confirms.")
    for option in ("json", "html"):
        # an output that cannot be written would fail only after the work (and leave an MLflow run open)
        path = getattr(args, option, None)
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder is not None and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            raise BoundfinderError(f"--{option} {path!r} cannot be written: the folder {folder} does not exist or is "
                                   "not writable. Give a path in an existing, writable folder.")
    if args.mlflow is None:
        return
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise BoundfinderError("--mlflow needs MLflow: pip install 'boundfinder[mlflow]'.")
    from boundfinder.reports.mlflow_log import check_tracking_uri

    args.mlflow = check_tracking_uri(args.mlflow or None, open_store=True)


def _publish(args: argparse.Namespace, kind: str, summary: dict, html: Callable[[], str],
             log: Callable[[], str]) -> None:
    """Write the JSON and HTML files asked for, then log to MLflow; if logging fails, the summary is kept."""
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(html())
    if args.mlflow is None:
        return
    try:
        run_id = log()
    except BoundfinderError as exc:
        kept = args.json
        if not kept:
            kept = f"boundfinder-{kind}-{time.strftime('%Y%m%dT%H%M%S')}.json"
            with open(kept, "w") as f:
                json.dump(summary, f, indent=2)
        raise BoundfinderError(f"{exc}; the results are saved in {kept}") from exc
    print(f"logged to MLflow at {args.mlflow}: run {run_id} in experiment {args.experiment!r}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from boundfinder.search.sweep import precision_sweep

    _check_mlflow(args)
    exp = _experiment(args)
    _check_tolerance(args, exp)
    title = f"{exp.model_name} on {exp.data_name}: {args.family}, {args.level} level" + (
        f", {exp.score.metric}" if exp.score.continuous else "")
    with _mlflow_run(args, "sweep", title):
        result = precision_sweep(exp, None, args.family, _int_list(args.bits), level=args.level,
                                 rounding=args.rounding, roles=[r for r in args.roles.split(",") if r],
                                 layers=args.layers, seeds=_seeds(args), epochs=args.epochs,
                                 train_under_emulation=args.train)
        bound = result.bound(tolerance=args.tolerance, confidence=args.confidence, relative=args.relative)
    if result.baseline_warning:
        print(result.baseline_warning + "\n")
    print(f"{_models_line(exp, result.correct.shape[2], result.seeds)}, "
          f"level {args.level}, roles {','.join(result.roles)}, rounding {args.rounding}")
    table = result.table()
    print("\n".join([table[0] + "\n", *table[2:]]))
    for d in result.diverged:
        print(f"training under {d['format']} diverged for seed {d['seed']}: loss {d['loss']} at epoch {d['epoch']}, "
              f"batch {d['batch']}; that fit stopped there and the model was measured as it was")
    print()
    print(bound.report())
    if exp.trained:
        print(f"claim: {result.claim}")

    def html() -> str:
        from boundfinder.reports.html import sweep_html

        return sweep_html(result, bound, title=title)

    def log() -> str:
        from boundfinder.reports.mlflow_log import log_sweep

        return log_sweep(result, bound, tracking_uri=args.mlflow, experiment=args.experiment, run_name=title,
                         run_id=args.run_id,
                         params={**_experiment_params(exp), "rounding": args.rounding,
                                 "epochs": "none (trained model)" if exp.trained else args.epochs,
                                 "train_under_emulation": args.train, "layers": args.layers})

    _publish(args, "sweep", {"sweep": result.summary(), "bound": bound.summary()}, html, log)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        bound.plot(ax)
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from boundfinder.search.sensitivity import precision_sensitivity

    _check_mlflow(args)
    exp = _experiment(args)
    _check_tolerance(args, exp)
    layers = [p.strip() for p in args.layers.split(",") if p.strip()] if args.layers else None
    title = f"{exp.model_name} on {exp.data_name}: sensitivity to {args.family}, {args.level} level" + (
        f", {exp.score.metric}" if exp.score.continuous else "")
    with _mlflow_run(args, "sensitivity", title):
        result = precision_sensitivity(
            exp, None, args.family, _int_list(args.bits),
            layers=layers, roles=None if args.roles is None else [r for r in args.roles.split(",") if r],
            level=args.level, rounding=args.rounding, seeds=_seeds(args), epochs=args.epochs,
            tolerance=args.tolerance, confidence=args.confidence, simultaneous=not args.per_bound,
            relative=args.relative)
    n_items = result.cells[0].sweep.correct.shape[2]
    print(_models_line(exp, n_items, result.seeds) if exp.trained else
          f"model {exp.model_name} on {exp.data_name} ({n_items} test items)")
    print(result.report())

    def html() -> str:
        from boundfinder.reports.html import sensitivity_html

        return sensitivity_html(result, title=title)

    def log() -> str:
        from boundfinder.reports.mlflow_log import log_sensitivity

        return log_sensitivity(result, tracking_uri=args.mlflow, experiment=args.experiment, run_name=title,
                               run_id=args.run_id,
                               params={**_experiment_params(exp), "rounding": args.rounding,
                                       "epochs": "none (trained model)" if exp.trained else args.epochs,
                                       "roles": ",".join(dict.fromkeys(c.role for c in result.cells)),
                                       "layers": args.layers or "every layer with parameters"})

    _publish(args, "sensitivity", result.summary(), html, log)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    try:
        import optuna
    except ImportError:
        raise BoundfinderError("`boundfinder search` needs Optuna: pip install 'boundfinder[search]'.") from None
    from boundfinder.search.study import precision_search
    from boundfinder.search.sweep import INFERENCE_ROLES

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_mlflow(args)
    exp = _experiment(args)
    _check_tolerance(args, exp)
    layers = [p.strip() for p in args.layers.split(",") if p.strip()] if args.layers else None
    try:
        with _mlflow_run(args, "search", f"search {exp.model_name} {args.family}, {args.level} level"):
            result = precision_search(
                exp, None, args.family, _int_list(args.bits),
                layers=layers, roles=None if args.roles is None else [r for r in args.roles.split(",") if r],
                level=args.level, rounding=args.rounding,
                switch=None if args.switch is None else _int_list(args.switch), seeds=_seeds(args),
                epochs=args.epochs, tolerance=args.tolerance, confidence=args.confidence, n_trials=args.trials,
                timeout=args.timeout, storage=args.storage or None, study_name=args.study, sampler_seed=args.seed,
                heartbeat_interval=args.heartbeat, confirm=not args.no_confirm, procedure=args.procedure,
                strategy=args.strategy, claim=args.claim, cost=args.cost, per_role=args.per_role,
                relative=args.relative)
    except KeyboardInterrupt:
        where = args.storage or "memory (lost)"
        print(f"boundfinder: interrupted; every finished trial is in {where}: run the same command to go on.",
              file=sys.stderr)
        return 130
    print(result.report())
    title = f"search {result.study_name}"

    def html() -> str:
        from boundfinder.reports.html import search_html

        return search_html(result, title=title)

    def log() -> str:
        from boundfinder.reports.mlflow_log import log_search

        roles = args.roles or ("every role of the level" if args.switch else ",".join(INFERENCE_ROLES))
        return log_search(result, tracking_uri=args.mlflow, experiment=args.experiment, run_name=title,
                          run_id=args.run_id,
                          params={**_experiment_params(exp), "level": args.level, "rounding": args.rounding,
                                  "roles": roles, "seeds": args.seeds or "none (trained model)",
                                  "epochs": "none (trained model)" if exp.trained else args.epochs,
                                  "bits": args.bits})

    _publish(args, "search", result.summary(), html, log)
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--html", help="write a self-contained HTML report (charts embedded) to this file")
    p.add_argument("--mlflow", nargs="?", const="", default=None, metavar="URI",
                   help="log the run to MLflow: a tracking server such as http://127.0.0.1:5000 or a database URI; "
                   "without a URI, $MLFLOW_TRACKING_URI or the local sqlite:///mlflow.db (checked before any work)")
    p.add_argument("--experiment", default="boundfinder", help="MLflow experiment name (default boundfinder)")


def _model_args(p: argparse.ArgumentParser, *, bits_help: str) -> None:
    """What every training command shares: the model, the format family and its widths, level, rounding, seeds,
    epochs."""
    g = p.add_argument_group("your experiment (default: the built-in mlp on the embedded digits data)")
    g.add_argument("--model", default=None, metavar="NAME", help="a built-in model (mlp, lenet, logreg; default "
                   "mlp) or your own: package.module:Name or path/to/file.py:Name of a LightningModule class or a "
                   "function returning one")
    g.add_argument("--model-args", default=None, metavar="JSON", help="the model's keyword arguments as a JSON "
                   "object, e.g. '{\"d_model\": 32}' (override the config's); or LightningCLI's dotted form, "
                   "--model.d_model 32 (applied last)")
    g.add_argument("--data", default=None, metavar="NAME", help="built-in data (digits, the default) or your "
                   "LightningDataModule: package.module:Name or path/to/file.py:Name (class or function)")
    g.add_argument("--data-args", default=None, metavar="JSON", help="the DataModule's keyword arguments as JSON, "
                   "or --data.NAME VALUE")
    g.add_argument("--config", default=None, metavar="FILE.yaml", help="a LightningCLI config: its model: and "
                   "data: sections (class_path + init_args) and trainer: settings (accelerator, devices, "
                   "precision; max_epochs when --epochs is not given)")
    g.add_argument("--ckpt", default=None, metavar="PATH", help="a trained model's checkpoint: evaluate that model "
                   "as it is, no training (the confidence statement is then about this one model); needs the "
                   "model's class from --model or --config")
    g.add_argument("--score", default=None, metavar="FN", help="what is measured per item: top1 (default, class "
                   "logits [batch, classes]) or top5, right or wrong; a per-item metric, lower is better: loss "
                   "(cross-entropy for integer targets, squared error for float targets), nll (mean token negative "
                   "log-likelihood per sequence, logits [batch, time, vocab]), perplexity (its exp; relative "
                   "tolerance), squared_error, abs_error (regressors); or package.module:fn / file.py:fn, a function "
                   "score(model, batch) -> tensor[batch] of bools, or of floats with --lower-is-better / "
                   "--higher-is-better")
    direction = g.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher_is_better", action="store_const", const=True,
                           default=None, help="your --score function returns a per-item metric where higher is "
                           "better (an accuracy-like score): continuous")
    direction.add_argument("--lower-is-better", dest="higher_is_better", action="store_const", const=False,
                           help="your --score function returns a per-item metric where lower is better (a loss, "
                           "an error): continuous")
    g.add_argument("--accelerator", default=None, help="Lightning accelerator for training and evaluation (cpu, "
                   "gpu, auto; default: the config's, else auto, cpu for the built-in models)")
    g.add_argument("--devices", default=None, help="Lightning devices (default 1)")
    g.add_argument("--precision", default=None, help="Lightning training precision (32, bf16-mixed, 16-mixed, ...)")
    p.add_argument("--family", default="e8m{b}", help="format family with a {b} placeholder (default: e8m{b}, "
                   "float32's exponent with b fraction bits, as the 2017 study)")
    p.add_argument("--bits", default="0-10", help=bits_help)
    p.add_argument("--level", choices=["layer", "op", "batch"], default="layer")
    p.add_argument("--rounding", choices=ROUNDING_MODES, default="nearest")
    p.add_argument("--seeds", default=None, help="training seeds (default 0,1,2; none with --ckpt)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's "
                   "trainer.max_epochs, else 15)")


def _bound_args(p: argparse.ArgumentParser, *, confidence_help: str | None = None, continuous: bool = False) -> None:
    """``continuous``: the command takes continuous scores: --tolerance has no default there (the command fills in
    0.01 for accuracy) and --relative is offered."""
    if not continuous:
        p.add_argument("--tolerance", type=float, default=0.01, help="largest acceptable accuracy drop (default "
                       "0.01)")
    else:
        p.add_argument("--tolerance", type=float, default=None, help="largest acceptable drop: accuracy points for "
                       "top1/top5 (default 0.01); for a per-item metric (--score loss, nll, squared_error, ...) "
                       "required, in the metric's units (nats for nll, squared target units for squared_error), "
                       "the largest acceptable mean increase of a loss; with --relative a fraction of the baseline "
                       "mean")
        p.add_argument("--relative", action="store_const", const=True, default=None, help="read --tolerance as a "
                       "fraction of the full-precision mean (accuracy or metric; always so for perplexity)")
    p.add_argument("--confidence", type=float, default=0.95, help=confidence_help)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="boundfinder", description="Emulate reduced precision in PyTorch models "
                                 "and estimate the minimum safe precision.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("formats", help="list the named number formats with their range and bits")
    p.add_argument("names", nargs="*", help="formats to describe (default: every named format)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_formats)
    p = sub.add_parser("quantize", help="round numbers to a format and print them")
    p.add_argument("format")
    p.add_argument("values", nargs="+", type=float)
    p.add_argument("--rounding", default="nearest", choices=ROUNDING_MODES)
    p.set_defaults(func=_cmd_quantize)
    p = sub.add_parser("sweep", help="train models from seeds (the built-in mlp on the embedded digits data, or "
                       "your own; or measure a trained --ckpt), sweep a format family's bit width, and estimate the "
                       "minimum safe bits with a confidence interval")
    _model_args(p, bits_help="bit widths, e.g. 0-10 or 2,4,8 (default 0-10)")
    p.add_argument("--roles", default="weight,bias,input,activation", help="tensor roles to round")
    p.add_argument("--layers", default=None, help="module-name pattern to restrict the precision to")
    p.add_argument("--train", action="store_true", help="train under the precision instead of evaluating "
                   "full-precision models under it")
    _bound_args(p, continuous=True)
    p.add_argument("--json", help="write the sweep and bound summary to this JSON file")
    p.add_argument("--plot", help="write the accuracy-vs-bits plot (the metric for a continuous score) to this PNG "
                   "file")
    _report_args(p)
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser("sensitivity", help="minimum safe bits of each layer and role alone (everything else at "
                       "full precision), with confidence intervals that hold for the whole table")
    _model_args(p, bits_help="bit widths, e.g. 0-10 or 2,4,8 (default 0-10)")
    p.add_argument("--layers", default=None, help="comma-separated layer-name patterns, one row group each "
                   "(default: every layer with parameters)")
    p.add_argument("--roles", default=None, help="roles, each taken alone (default: weight,bias,input,activation, "
                   "those of them the level rounds)")
    _bound_args(p, confidence_help="for the whole table (Bonferroni over its cells), or for each bound with "
                "--per-bound", continuous=True)
    p.add_argument("--per-bound", action="store_true", help="each bound at --confidence on its own instead of the "
                   "whole table")
    p.add_argument("--json", help="write the summary to this JSON file")
    _report_args(p)
    p.set_defaults(func=_cmd_sensitivity)
    p = sub.add_parser("search", help="search per-layer bit widths with Optuna on validation items (the built-in "
                       "mlp on digits, or your model and DataModule), then "
                       "certify the cheapest safe configuration on held-out test items; workers sharing --storage "
                       "and --study split the trials")
    _model_args(p, bits_help="bit widths each layer may take (default 0-10)")
    p.add_argument("--layers", default=None, help="comma-separated layer-name patterns, one search group each "
                   "(default: every layer with parameters)")
    p.add_argument("--roles", default=None, help="tensor roles to round (default: weight,bias,input,activation; "
                   "with --switch every role the level rounds, gradients included)")
    p.add_argument("--switch", default=None, metavar="EPOCHS", help="search low -> high precision training too: "
                   "switch epochs such as 0-15 or 0,5,10,15; each trial trains under its bit widths before its "
                   "switch epoch and in fp32 from it on, and the model is measured in fp32")
    p.add_argument("--trials", type=int, default=40, help="distinct configurations the study should have measured "
                   "besides each layer group alone at each width (the sensitivity measurements of the default "
                   "strategy), counting every worker's (default 40)")
    from boundfinder.search.cost import COSTS
    from boundfinder.search.study import CLAIMS, STRATEGIES

    p.add_argument("--strategy", default=None, choices=STRATEGIES, help="how configurations are proposed: path+tpe "
                   "(default: the uniform configurations, each group alone at each width, the greedy path lowering "
                   "groups in order of cost saved per validation drop, then Optuna's TPE), path (without TPE), tpe "
                   "(the uniform configurations, then TPE; the only one with --switch)")
    p.add_argument("--claim", default=None, choices=CLAIMS, help="what the certification covers: model (default; "
                   "the trained models themselves, each one, certified on test items with those models) or "
                   "training (models trained afresh from seeds disjoint from --seeds: the recipe; the default with "
                   "--switch)")
    p.add_argument("--cost", default="bits", choices=COSTS, help="what a configuration costs: bits (mean bits per "
                   "parameter, default), bops (weight bits x activation bits x multiply-accumulates per item), "
                   "memory (weights and every layer's outputs, bytes per item)")
    p.add_argument("--per-role", action="store_true", help="search each group's weights (weight, bias) and "
                   "activations (input, activation) at separate widths")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--storage", default="sqlite:///boundfinder-search.db", help="Optuna storage: a database URL "
                   "(sqlite:///file.db, postgresql://user:pw@host/db) or a journal file (.log); '' keeps the study "
                   "in memory (default sqlite:///boundfinder-search.db)")
    p.add_argument("--study", default=None, help="study name (default: model-family-level-rounding, with "
                   "-switch for a switching search)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed of this worker (give each worker its own)")
    p.add_argument("--heartbeat", type=float, default=30.0, help="seconds between a running trial's heartbeats; a "
                   "trial silent for twice as long is failed and retried (database storages)")
    _bound_args(p, continuous=True)
    p.add_argument("--no-confirm", action="store_true", help="only add trials to the study (a worker); do not "
                   "certify on the test items")
    from boundfinder.search.certify import PROCEDURES

    p.add_argument("--procedure", default=None, choices=PROCEDURES, help="how the candidates are "
                   "certified on the test items, each keeping the family-wise error <= 1 - confidence: graph "
                   "(default: the uniform configurations as the sweep's fixed sequence, the others as a second "
                   "chain; docs/search.md), fixed_cost (one fixed sequence from the most expensive down; the "
                   "default with --switch), "
                   "fallback_widest, fixed_validation, fallback, holm, holm_top")
    p.add_argument("--json", help="write the result summary to this JSON file")
    _report_args(p)
    p.set_defaults(func=_cmd_search)
    from boundfinder.profile_cli import add_parser as _profile_parser

    _profile_parser(sub)
    return ap


def _dotted(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> argparse.Namespace:
    """LightningCLI's dotted arguments (``--model.d_model 64``, ``--data.batch_size=32``) of the training commands
    go to ``args.model_argv`` / ``args.data_argv`` (jsonargparse checks them against the class); anything else
    unrecognised is argparse's usual error."""
    args.model_argv, args.data_argv = [], []
    i = 0
    while i < len(extra):
        token = extra[i]
        key = token.split(".", 1)[0] if token.startswith(("--model.", "--data.")) else None
        if key is None or args.command not in ("sweep", "sensitivity", "search", "profile"):
            parser.error(f"unrecognized arguments: {' '.join(extra[i:])}")
        target = args.model_argv if key == "--model" else args.data_argv
        if "=" in token or i + 1 == len(extra):
            target.append(token)
            i += 1
        else:
            target += [token, extra[i + 1]]
            i += 2
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args = _dotted(parser, args, extra)
    try:
        return args.func(args)
    except BoundfinderError as exc:
        print(f"boundfinder: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
