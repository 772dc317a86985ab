"""``boundfinder profile``: where rounding error accumulates in a model, and what emulation costs.

    boundfinder profile                                  # built-in mlp (trained, seed 0): error table + cost table
    boundfinder profile --model lenet --formats e8m3,e5m2 --level op --no-cost
    boundfinder profile --model examples/resnet/resnet.py:ResidualCNN --data digits --epochs 10 --html p.html
    boundfinder profile --config config.yaml --ckpt last.ckpt --no-cost   # your trained model, as it is
    boundfinder profile --no-error --depths 1,2,4,8 --widths 32,128,512 --kinds mlp

The model comes from the same options as ``sweep`` (``--model``/``--data``/``--config``/``--ckpt``, through
:func:`boundfinder.experiment.load_experiment`); a model without ``--ckpt`` is built and trained from ``--seed``
for ``--epochs`` (0: profile the initial weights). :func:`add_parser` registers the command on the ``boundfinder``
parser (``boundfinder.cli.build_parser``).
"""

from __future__ import annotations

import argparse

from boundfinder.errors import BoundfinderError
from boundfinder.formats import ROUNDING_MODES

__all__ = ["add_parser", "run"]


def _names(text: str, what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise BoundfinderError(f"{what} takes a comma-separated list, but got {text!r}.")
    return names


def _ints(text: str, flag: str) -> list[int]:
    from boundfinder.cli import _int_list

    values = _int_list(text)
    if not values:
        raise BoundfinderError(f"{flag} needs at least one value (e.g. {flag} 1,2,4), but got {text!r}.")
    return values


def _model(args: argparse.Namespace):
    """The experiment and the model to profile: the trained one of --ckpt, else built from --seed and trained for
    --epochs (the config's max_epochs, else 15; 0 keeps the initial weights). Returns (experiment, model, line)."""
    from boundfinder.cli import _devices, _json_object
    from boundfinder.experiment import config_epochs, load_experiment, resolve_score

    score = None if args.score is None else resolve_score(args.score)
    exp = load_experiment(model=args.model, data=args.data, model_args=_json_object(args.model_args, "--model-args"),
                          data_args=_json_object(args.data_args, "--data-args"), config=args.config, ckpt=args.ckpt,
                          model_argv=getattr(args, "model_argv", []), data_argv=getattr(args, "data_argv", []),
                          score=score, trainer={"accelerator": args.accelerator, "devices": _devices(args.devices),
                                                "precision": args.precision})
    if exp.trained:
        if args.epochs is not None:
            raise BoundfinderError(exp.needs_training(f"--epochs {args.epochs}"))
        _setup(exp, train=False)
        return exp, exp.model, f"the trained model{' from ' + exp.checkpoint if exp.checkpoint else ''}, as it is"
    epochs = args.epochs if args.epochs is not None else (config_epochs(args.config) or 15)
    if epochs < 0:
        raise BoundfinderError(f"--epochs must be >= 0 (0: the initial weights, untrained), but got {epochs}.")
    _setup(exp, train=epochs > 0)
    if epochs == 0:
        return exp, exp.build(args.seed), f"seed {args.seed}, untrained (initial weights)"
    from boundfinder.search.measure import trained

    return exp, trained(exp, [args.seed], epochs)[0], f"seed {args.seed}, trained {epochs} epochs"


def _setup(exp, *, train: bool) -> None:
    """The DataModule's data prepared and set up (no score check: the profile only runs the model)."""
    data = exp.data
    if callable(getattr(data, "prepare_data", None)):
        data.prepare_data()
    if callable(getattr(data, "setup", None)):
        if train:
            data.setup("fit")
        data.setup("test")


def run(args: argparse.Namespace) -> int:
    """The command: error profile and/or cost table, printed, then written / logged as asked."""
    from boundfinder import profile as prof
    from boundfinder.cli import _check_mlflow, _mlflow_run, _publish

    if not args.error and not args.cost:
        raise BoundfinderError("--no-error and --no-cost leave nothing to do; keep at least one of them.")
    formats = prof._check_formats(_names(args.formats, "--formats"))
    roles = tuple(_names(args.roles, "--roles"))
    cost_format = args.cost_format or formats[0]
    cost_kw = {}
    if args.cost:
        # checked before any training: a typo here should not cost a fit
        cost_kw = {"kinds": _names(args.kinds, "--kinds"), "depths": _ints(args.depths, "--depths"),
                   "widths": _ints(args.widths, "--widths"), "format": cost_format, "rounding": args.rounding,
                   "batch_size": args.batch_size, "repeats": args.repeats, "steps": args.steps,
                   "threads": args.threads or None}
        bad = [k for k in cost_kw["kinds"] if k not in prof.COST_KINDS]
        if bad:
            raise BoundfinderError(f"--kinds takes {', '.join(prof.COST_KINDS)}, but got {args.kinds!r}.")
        prof._positive_ints(cost_kw["depths"], "depths", "1,2,4")
        prof._positive_ints(cost_kw["widths"], "widths", "32,128")
    if args.items < 1:
        raise BoundfinderError(f"--items must be >= 1, but got {args.items}.")
    _check_mlflow(args)
    title = "profile"
    with _mlflow_run(args, "profile", title):
        error = cost = None
        if args.error:
            from boundfinder.experiment import eval_loader

            exp, model, how = _model(args)
            forward = exp.score if args.score is not None else None
            print(f"model {exp.model_name} on {exp.data_name} ({how}), first {args.items} test items")
            error = prof.error_profile(model, eval_loader(exp.data, "test"), formats=formats, level=args.level,
                                       rounding=args.rounding, roles=roles, items=args.items, forward=forward,
                                       contribution=args.alone, experiment=exp.describe())
            print(error.report())
            title = f"profile {exp.model_name}, {args.level} level"
        if args.cost:
            if error is not None:
                print()
            cost = prof.cost_profile(**cost_kw)
            print(cost.report())
        summary = {"error_profile": None if error is None else error.summary(),
                   "cost": None if cost is None else cost.summary()}

        def html() -> str:
            from boundfinder.reports.profile import profile_html

            return profile_html(error, cost, title=title)

        def log() -> str:
            from boundfinder.reports.profile import log_profile

            return log_profile(error, cost, tracking_uri=args.mlflow, experiment=args.experiment, run_name=title,
                               run_id=args.run_id)

        _publish(args, "profile", summary, html, log)
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``profile`` on the ``boundfinder`` command's subparsers (``sub``: ``add_subparsers()``'s result)."""
    from boundfinder.cli import _report_args
    from boundfinder.profile import DEFAULT_FORMATS

    p = sub.add_parser("profile", help="where rounding error accumulates layer by layer (against float64, several "
                       "formats) and what each emulation level costs (MLPs/CNNs of growing size)",
                       description="Error table: each layer's output error against a float64 run of the same "
                       "weights on the same test items, per format, with every layer rounded and with that layer "
                       "alone. Cost table: training-step and evaluation time at each level as a ratio of plain "
                       "float32, measured side by side.")
    g = p.add_argument_group("the model profiled (default: the built-in mlp on the embedded digits data)")
    g.add_argument("--model", default=None, metavar="NAME", help="a built-in model (mlp, lenet, logreg; default mlp) "
                   "or your own: package.module:Name or path/to/file.py:Name of a module class or a function "
                   "returning one")
    g.add_argument("--model-args", default=None, metavar="JSON", help="the model's keyword arguments as a JSON object")
    g.add_argument("--data", default=None, metavar="NAME", help="built-in data (digits, the default) or your "
                   "LightningDataModule: package.module:Name or path/to/file.py:Name; the items are its test loader's")
    g.add_argument("--data-args", default=None, metavar="JSON", help="the DataModule's keyword arguments as JSON")
    g.add_argument("--config", default=None, metavar="FILE.yaml", help="a LightningCLI config: its model:, data: "
                   "and trainer: sections")
    g.add_argument("--ckpt", default=None, metavar="PATH", help="a trained model's checkpoint: profile that model as "
                   "it is (no training)")
    g.add_argument("--score", default=None, metavar="FN", help="how a batch runs the model: by default model(x) "
                   "of (x, y, ...) or dict batches; a built-in score name or package.module:fn calls "
                   "score(model, batch) instead")
    g.add_argument("--seed", type=int, default=0, help="the seed the model is built and trained from (default 0)")
    g.add_argument("--epochs", type=int, default=None, help="training epochs before profiling (default: the "
                   "config's trainer.max_epochs, else 15; 0: the initial weights)")
    g.add_argument("--accelerator", default=None, help="Lightning accelerator for training and the profile")
    g.add_argument("--devices", default=None, help="Lightning devices (default 1)")
    g.add_argument("--precision", default=None, help="Lightning training precision")
    e = p.add_argument_group("error table")
    e.add_argument("--error", action=argparse.BooleanOptionalAction, default=True, help="profile the error layer "
                   "by layer (default on)")
    e.add_argument("--formats", default=",".join(DEFAULT_FORMATS), help="formats profiled side by side, "
                   f"comma-separated (default {','.join(DEFAULT_FORMATS)}); see boundfinder formats")
    e.add_argument("--level", choices=["layer", "op", "batch"], default="layer", help="emulation level (batch: the "
                   "parameters rounded and nothing else)")
    e.add_argument("--rounding", choices=ROUNDING_MODES, default="nearest")
    e.add_argument("--roles", default="weight,bias,input,activation", help="tensor roles rounded (default "
                   "weight,bias,input,activation)")
    e.add_argument("--items", type=int, default=256, help="test items profiled, the first ones of the test loader "
                   "(default 256)")
    e.add_argument("--alone", action=argparse.BooleanOptionalAction, default=True, help="also run each layer "
                   "rounded alone (one forward per layer and format; default on)")
    c = p.add_argument_group("cost table")
    c.add_argument("--cost", action=argparse.BooleanOptionalAction, default=True, help="time each level against "
                   "plain float32 (default on)")
    c.add_argument("--kinds", default="mlp,cnn", help="model families: mlp (depth hidden layers of width units), cnn "
                   "(the built-in LeNet with width // 2 and width channels); default mlp,cnn")
    c.add_argument("--depths", default="1,2,4", help="MLP depths (hidden layers; default 1,2,4)")
    c.add_argument("--widths", default="32,128", help="MLP widths and CNN channels (default 32,128)")
    c.add_argument("--cost-format", default=None, help="the format timed (default: the first of --formats)")
    c.add_argument("--batch-size", type=int, default=128, help="batch of the timed steps (default 128)")
    c.add_argument("--repeats", type=int, default=10, help="interleaved rounds; ratios are their median (default 10)")
    c.add_argument("--steps", type=int, default=10, help="timed calls per configuration per round (default 10)")
    c.add_argument("--threads", type=int, default=1, help="torch CPU threads while timing (default 1, the steadiest "
                   "on a shared machine; 0: leave torch's setting)")
    p.add_argument("--json", help="write both tables' summary to this JSON file")
    _report_args(p)
    p.set_defaults(func=run)
    return p
