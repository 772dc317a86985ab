"""Sensitivity sweep: accuracy (or a per-item metric) of a model at each bit width of a format family, measured
per test item.

A sweep trains one full-precision model per seed (or, with ``train_under_emulation=True``, one model per seed
and bit width, trained under the precision), then records which test items each configuration classifies
correctly next to which items the full-precision model of the same seed gets right (or, for a continuous score
such as ``nll`` or ``squared_error``, each item's value next to the full-precision model's): the paired
measurements ``boundfinder.bounds.estimate_bound`` turns into a minimum safe precision with a confidence
statement. A full-precision model near chance is flagged first (``SweepResult.baseline_warning``, binary
built-in scores).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from boundfinder.bounds import BoundEstimate, estimate_bound
from boundfinder.emulation import emulate
from boundfinder.errors import BoundfinderError
from boundfinder.experiment import Experiment, Score, as_experiment, evaluate, first_nonfinite
from boundfinder.formats import parse_format
from boundfinder.policy import ROLES, PrecisionPolicy
from boundfinder.search.baseline import baseline_warning

__all__ = ["SweepResult", "expand_family", "precision_sweep"]

INFERENCE_ROLES = ("weight", "bias", "input", "activation")


def expand_family(family: str, bits: Iterable[int]) -> list[str]:
    """Format names of a family for each bit width: ``"e8m{b}"`` with bits 1..3 -> e8m1, e8m2, e8m3.

    ``{b}`` may appear in arithmetic forms too: ``"fixed{b}.{b-4}"``. Every name is parsed, so a width the
    family cannot have fails here with the format's own message.

    >>> expand_family("fixed{b}.{b-4}", [8, 12])
    ['fixed8.4', 'fixed12.8']
    """
    if "{b" not in family:
        raise BoundfinderError(f"a format family needs a '{{b}}' placeholder for the bit width (e.g. 'e5m{{b}}', "
                               f"'int{{b}}', 'fixed{{b}}.{{b-4}}'), but got {family!r}.")
    names = []
    for b in bits:
        def repl(m: re.Match, b=b) -> str:
            expr = m.group(1)
            offset = int(expr[1:].replace(" ", "")) if len(expr) > 1 else 0
            return str(b + offset)

        name = re.sub(r"\{(b(?:\s*[+-]\s*\d+)?)\}", repl, family)
        parse_format(name)
        names.append(name)
    return names


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepResult:
    """Paired per-item measurements of one sweep.

    ``correct[l, s, i]``: item ``i`` right at bit level ``bits[l]`` with seed ``seeds[s]``;
    ``baseline[s, i]``: right at full precision with the same seed. For a continuous score both hold the score's
    float value per item (``metric``, read in the direction ``higher_is_better``).
    """

    family: str
    bits: tuple[int, ...]
    formats: tuple[str, ...]
    level: str
    roles: tuple[str, ...]
    seeds: tuple[int, ...]
    correct: np.ndarray
    baseline: np.ndarray
    #: models trained under a precision whose training loss became NaN or infinite (the fit stopped there and the
    #: model was measured as it was): ``{"format", "seed", "epoch", "batch", "step", "loss"}`` each
    diverged: tuple[dict[str, Any], ...] = ()
    #: the experiment measured (``Experiment.describe()``: model, data, checkpoint, score, trainer settings)
    experiment: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: what the confidence statement covers (``Experiment.claim``)
    claim: str = ""
    #: a paragraph starting "WARNING:" when the full-precision model is near chance on the test items (a bound on
    #: a model that did not learn says nothing about the architecture), else None; see
    #: :func:`boundfinder.search.baseline.baseline_warning`
    baseline_warning: str | None = None
    #: what was measured: "accuracy" for a binary score, else the continuous score's metric (``Score.metric``),
    #: its direction, the units of a tolerance, and whether only a relative tolerance is taken (perplexity)
    metric: str = "accuracy"
    higher_is_better: bool = True
    units: str = ""
    relative_only: bool = False

    @classmethod
    def of_score(cls, score: Score, **fields: Any) -> SweepResult:
        """A result whose metric, direction, units and tolerance kind are the score's."""
        return cls(metric=score.metric, higher_is_better=score.higher_is_better, units=score.units,
                   relative_only=score.relative_only, **fields)

    @property
    def continuous(self) -> bool:
        """True for a continuous score (float per item), False for right/wrong."""
        return self.correct.dtype != np.bool_

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracy per level, averaged over seeds and items (for a continuous score, the metric's mean)."""
        return self.correct.mean(axis=(1, 2))

    @property
    def baseline_accuracy(self) -> float:
        """Full-precision accuracy (for a continuous score, the metric's mean)."""
        return float(self.baseline.mean())

    @property
    def drop(self) -> np.ndarray:
        """Mean drop per level in the metric's direction, in its units: baseline minus level when higher is better
        (accuracy), level minus baseline when lower is better (a loss: the increase)."""
        diff = self.baseline_accuracy - self.accuracy
        return diff if self.higher_is_better else -diff

    @property
    def drop_name(self) -> str:
        return "drop" if self.higher_is_better else "increase"

    def bound(self, *, tolerance: float | None = None, confidence: float = 0.95, relative: bool | None = None,
              method: str = "auto", fit_curve: bool = True) -> BoundEstimate:
        """The minimum safe bits of this family (see ``boundfinder.bounds.estimate_bound``).

        ``tolerance``: binary scores, accuracy points (default 0.01); continuous scores, required, in the metric's
        units (or a fraction of the baseline mean with ``relative``). ``relative`` default: False, True for a
        relative-only metric (perplexity), which refuses ``relative=False``.
        """
        correct = self.correct if len(self.seeds) > 1 else self.correct[:, 0, :]
        baseline = self.baseline if len(self.seeds) > 1 else self.baseline[0]
        if not self.continuous:
            return estimate_bound(np.asarray(self.bits), correct, baseline,
                                  tolerance=0.01 if tolerance is None else tolerance, confidence=confidence,
                                  relative=bool(relative), method=method, fit_curve=fit_curve)
        relative = check_tolerance(self, tolerance, relative)
        return estimate_bound(np.asarray(self.bits), correct, baseline, tolerance=tolerance, confidence=confidence,
                              relative=relative, higher_is_better=self.higher_is_better, metric=self.metric,
                              method=method, fit_curve=fit_curve)

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (no per-item arrays); ``accuracy`` / ``baseline_accuracy`` are the metric's means
        for a continuous score."""
        return {"family": self.family, "bits": list(self.bits), "formats": list(self.formats), "level": self.level,
                "roles": list(self.roles), "seeds": list(self.seeds), "items": int(self.correct.shape[2]),
                "metric": self.metric, "higher_is_better": self.higher_is_better, "continuous": self.continuous,
                "accuracy": [float(a) for a in self.accuracy], "baseline_accuracy": self.baseline_accuracy,
                "drop": [float(d) for d in self.drop],
                "diverged": _json_safe(self.diverged), "experiment": dict(self.experiment), "claim": self.claim,
                "baseline_warning": self.baseline_warning}

    def table(self) -> list[str]:
        """The per-level lines of :meth:`report`: metric and drop (in its direction) per bit width."""
        if not self.continuous:
            lines = [f"full precision accuracy: {self.baseline_accuracy:.4f}", "",
                     f"{'bits':>4}  {'format':<14} {'accuracy':>8} {'drop':>8}"]
            return lines + [f"{b:>4}  {name:<14} {acc:8.4f} {drop:8.4f}"
                            for b, name, acc, drop in zip(self.bits, self.formats, self.accuracy, self.drop,
                                                          strict=True)]
        width = max(10, len(self.metric))
        lines = [f"full precision {self.metric}: {self.baseline_accuracy:.6g} ({self.direction})", "",
                 f"{'bits':>4}  {'format':<14} {self.metric:>{width}} {self.drop_name:>10}"]
        return lines + [f"{b:>4}  {name:<14} {m:>{width}.6g} {drop:>10.4g}"
                        for b, name, m, drop in zip(self.bits, self.formats, self.accuracy, self.drop, strict=True)]

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def report(self) -> str:
        """Plain text: the near-chance warning first (when there is one), then the metric and its drop per bit
        width."""
        lines = [self.baseline_warning, ""] if self.baseline_warning else []
        lines += self.table()
        lines += [f"training under {d['format']} diverged for seed {d['seed']}: loss {d['loss']} at epoch "
                  f"{d['epoch']}, batch {d['batch']}; that fit stopped there and the model was measured as it was"
                  for d in self.diverged]
        if self.claim:
            lines.append(f"claim: {self.claim}")
        return "\n".join(lines)


def _seeded_model(build_model: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """``build_model()`` with every generator seeded first: the initial weights depend on the seed alone (torch
    seeds its default generator differently in every process)."""
    import lightning.pytorch as pl

    pl.seed_everything(seed, verbose=False)
    return build_model()


def _train(model, datamodule, *, epochs: int, seed: int, callbacks: Sequence = (),
           trainer: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Fit ``model`` for ``epochs`` epochs, deterministically, quietly, where ``trainer`` (``accelerator``,
    ``devices``, ``precision``, ...; default ``accelerator="auto"``, one device) puts it.

    Returns None, or where the training loss first became NaN or infinite (``DivergenceGuard.diverged``): the
    fit stops at that batch instead of training NaN weights to the end.

    Ctrl-C while fitting raises ``KeyboardInterrupt`` here, as anywhere else: Lightning turns it into
    ``sys.exit(1)`` and ignores SIGINT from then on, which would skip the caller's handling (a search marks the
    trial failed and keeps the finished ones) and leave the process deaf to the next Ctrl-C.
    """
    import logging
    import signal
    import threading

    import lightning.pytorch as pl

    from boundfinder.callbacks import DivergenceGuard

    guard = DivergenceGuard()
    pl.seed_everything(seed, verbose=False)
    # Lightning's per-fit banners (accelerator, tips) would repeat once per model of the sweep.
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Lightning 2.6's batch flattening builds torch's LeafSpec, which torch 2.13 deprecates: one line of
            # noise per model, nothing the user can act on
            warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
            # a divergence is returned to the caller, which reports it with the configuration and seed
            warnings.filterwarnings("ignore", message=r"DivergenceGuard: ")
            settings = {"accelerator": "auto", "devices": 1, **(trainer or {})}
            if settings["devices"] == "auto":  # one process, one device (Experiment refuses several)
                settings["devices"] = 1
            if settings["accelerator"] != "cpu" and torch.cuda.is_available():
                # deterministic cuBLAS (Trainer(deterministic=True) refuses CUDA matmuls without it)
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            fit = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[*callbacks, guard],
                             # "warn": ops without a deterministic kernel (some CUDA backward passes) warn
                             # instead of stopping the fit; the rest are deterministic
                             deterministic="warn", **settings)
            main_thread = threading.current_thread() is threading.main_thread()
            # None: a handler installed outside Python; Python's own is the best that can be put back
            handler = (signal.getsignal(signal.SIGINT) or signal.default_int_handler) if main_thread else None
            try:
                fit.fit(model, datamodule=datamodule)
            except SystemExit as exc:
                if isinstance(exc.__context__, KeyboardInterrupt):
                    raise KeyboardInterrupt from None
                raise
            finally:
                if main_thread and handler is not None:
                    signal.signal(signal.SIGINT, handler)
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    return guard.diverged


def _json_safe(records) -> list[dict[str, Any]]:
    """Divergence records with a non-finite loss written as text ("nan", "inf"): summaries and storages keep strict
    JSON."""
    return [{k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
            for d in records]


def _full_precision_diverged(seed: int, diverged: dict[str, Any]) -> BoundfinderError:
    return BoundfinderError(
        f"the full-precision model of seed {seed} diverged (training loss {diverged['loss']} at epoch "
        f"{diverged['epoch']}, batch {diverged['batch']}): there is no baseline to measure precision against. "
        "Lower the learning rate or fix the model, then run again.")


def precision_sweep(
    model: Experiment | Callable[[], torch.nn.Module] | torch.nn.Module,
    datamodule=None,
    family: str = "e8m{b}",
    bits: Iterable[int] = range(0, 11),
    *,
    level: str = "layer",
    rounding: str = "nearest",
    roles: Iterable[str] = INFERENCE_ROLES,
    layers: str | None = None,
    seeds: Iterable[int] | None = None,
    epochs: int = 20,
    train_under_emulation: bool = False,
    score: Score | str | Callable | None = None,
    trainer: dict[str, Any] | None = None,
) -> SweepResult:
    """Measure, per test item, which items each bit width of ``family`` gets right.

    ``model``: an :class:`~boundfinder.experiment.Experiment`, or a factory returning a fresh LightningModule
    (trained from each of ``seeds``, default ``(0,)``), or a trained module, evaluated as it is (one model: the
    claim is about it alone; ``seeds`` and ``train_under_emulation`` need training and are refused).
    ``datamodule``: any LightningDataModule; the test items are the positions in its (unshuffled) test loader.
    ``score``: which items are right, ``score(model, batch) -> tensor[batch]`` (default top-1 of class logits).
    ``trainer``: ``accelerator`` / ``devices`` / ``precision`` for ``lightning.Trainer``. ``layers`` restricts the
    precision to modules matching a name pattern (e.g. ``"features.*"``); ``roles`` picks the tensor roles. With
    ``train_under_emulation`` each model is trained under the precision (the Lightning ``PrecisionEmulation``
    callback), otherwise the full-precision model of each seed is evaluated under it.
    """
    exp = as_experiment(model, datamodule, score=score, trainer=trainer)
    bits = [int(b) for b in bits]
    if len(set(bits)) != len(bits) or len(bits) < 2:
        raise BoundfinderError(f"a sweep needs at least 2 distinct bit widths, but got bits={bits}.")
    continuous = exp.score.continuous
    roles = tuple(roles)
    for r in roles:
        if r not in ROLES:
            raise BoundfinderError(f"unknown role {r!r}; valid roles are {ROLES}.")
    seeds = _seeds_of(exp, seeds, "a sweep")
    if exp.trained and train_under_emulation:
        raise BoundfinderError(exp.needs_training("training under the precision (train_under_emulation, --train)"))
    names = expand_family(family, bits)
    n = exp.prepare(train=not exp.trained)["test"].n_items
    runs = max(len(seeds), 1)
    kind = float if continuous else bool
    correct = np.zeros((len(bits), runs, n), dtype=kind)
    baseline = np.zeros((runs, n), dtype=kind)
    diverged = []
    device = exp.device
    for s in range(runs):
        if exp.trained:
            model = exp.model
        else:
            seed = seeds[s]
            model = exp.build(seed)
            if (failed := _train(model, exp.data, epochs=epochs, seed=seed, trainer=dict(exp.trainer))) is not None:
                raise _full_precision_diverged(seed, failed)
            exp.verify_items(f"training the model of seed {seed}")
        seed_text = f"the trained model{'' if exp.checkpoint is None else ' from ' + exp.checkpoint}" \
            if exp.trained else f"seed {seeds[s]}"
        baseline[s] = _measure(model, exp, device)
        if continuous:
            first_nonfinite(baseline[s], exp.score, f"at full precision with {seed_text}")
        for level_idx, name in enumerate(names):
            spec = name if layers is None else {layers: name}
            policy = PrecisionPolicy.from_spec(spec, rounding=rounding, roles=roles)
            if train_under_emulation:
                from boundfinder.callbacks import PrecisionEmulation

                trained = exp.build(seed)
                failed = _train(trained, exp.data, epochs=epochs, seed=seed, trainer=dict(exp.trainer),
                                callbacks=[PrecisionEmulation(policy, level=level, rounding=rounding)])
                if failed is not None:
                    diverged.append({"format": name, "seed": seed, **failed})
            else:
                trained = model
            correct[level_idx, s] = _measure_under(trained, policy, level, exp, device)
            if continuous:
                first_nonfinite(correct[level_idx, s], exp.score,
                                f"at {name} ({bits[level_idx]} bits, level {level_idx}) with {seed_text}")
    return SweepResult.of_score(
        exp.score, family=family, bits=tuple(bits), formats=tuple(names), level=level, roles=roles, seeds=seeds,
        correct=correct, baseline=baseline, diverged=tuple(diverged), experiment=exp.describe(),
        claim=exp.claim(seeds),
        baseline_warning=None if continuous else baseline_warning(exp, "test", baseline, seeds=seeds))


def check_tolerance(what: Any, tolerance: float | None, relative: bool | None) -> bool:
    """The ``relative`` flag a continuous score's bound is computed with, after checking the tolerance: required,
    finite and > 0; relative by default for a relative-only metric (perplexity), which refuses an absolute one.
    ``what``: a :class:`Score` or a :class:`SweepResult` (``metric``, ``units``, ``relative_only``, direction)."""
    metric, units = what.metric, what.units
    if what.relative_only:
        if relative is False:
            raise BoundfinderError(
                f"the tolerance of {metric} is relative (a fraction of the baseline {metric}, e.g. 0.02 = 2%), "
                f"but relative=False was given: an absolute {metric} difference means different things at "
                f"different {metric}s. Leave relative out (or give --relative), or score by 'nll' for an absolute "
                "tolerance in nats.")
        relative = True
    relative = bool(relative)
    if tolerance is None or isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
            math.isfinite(tolerance) and tolerance > 0):
        if relative:
            how = f"a fraction of the baseline {metric} (e.g. 0.02 = 2%)"
        else:
            how = f"{metric}'s units" + (f", {units}" if units else "") + (
                ", the largest acceptable mean " + ("drop" if what.higher_is_better else "increase") + " per item")
        raise BoundfinderError(f"{metric} is a continuous score ({what.direction}): a tolerance > 0 is required, in "
                               f"{how}; there is no default (accuracy's 0.01 means nothing in another metric's "
                               f"units), but got tolerance={tolerance!r}. Give --tolerance (Python: tolerance=)"
                               + ("" if relative else ", or --relative with a fraction of the baseline mean") + ".")
    return relative


def _seeds_of(exp: Experiment, seeds: Iterable[int] | None, what: str) -> tuple[int, ...]:
    """The training seeds: ``()`` for a trained model (given seeds are refused: it has no training randomness)."""
    if exp.trained:
        if seeds is not None:
            raise BoundfinderError(exp.needs_training(f"seeds={list(seeds)} (training randomness)"))
        return ()
    seeds = (0,) if seeds is None else tuple(int(s) for s in seeds)
    if not seeds:
        raise BoundfinderError(f"{what} needs at least one training seed, but got seeds=().")
    return seeds


def _measure(model: torch.nn.Module, exp: Experiment, device: torch.device, split: str = "test") -> np.ndarray:
    from boundfinder.experiment import eval_loader

    return evaluate(model, eval_loader(exp.data, split), exp.score, device)


def _measure_under(model: torch.nn.Module, policy: PrecisionPolicy, level: str, exp: Experiment,
                   device: torch.device, split: str = "test") -> np.ndarray:
    """Per-item results of ``model`` on the ``split`` items with ``policy`` emulated at ``level``."""
    if next(model.parameters(), torch.empty(0)).device != device:
        model.to(device)  # emulation runs where the model is
    if level == "batch":
        # parameter-server precision: the parameters themselves are rounded, on a copy of the model
        model = copy.deepcopy(model)
        emulation = emulate(model, policy, level="batch")
        emulation.round_parameters_now()
        emulation.remove()
        return _measure(model, exp, device, split)
    with emulate(model, policy, level=level):
        return _measure(model, exp, device, split)
