"""Per-layer, per-role sensitivity: the minimum safe bits of each (layer, role) alone, with simultaneous
confidence.

For each layer owning parameters (or each given layer pattern) and each role, only that role of that layer is
rounded to each bit width of the family while everything else stays at full precision; the paired per-item
measurements against the full-precision model of the same seed give one :class:`BoundEstimate` per (layer, role).
The models are trained once per seed and reused for every cell.

With K cells, K bounds each at 95% may hold *together* with probability as low as 1 - K * 5%. With
``simultaneous=True`` (default) each bound is computed at confidence ``1 - (1 - confidence) / K`` (Bonferroni), so
with probability >= ``confidence`` every bound of the table holds at once: the statement a user reading the whole
table relies on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from boundfinder.bounds import BoundEstimate
from boundfinder.bounds.estimate import METHODS
from boundfinder.emulation import LEVEL_ROLES
from boundfinder.errors import BoundfinderError
from boundfinder.experiment import Experiment, Score, as_experiment, first_nonfinite
from boundfinder.formats import ROUNDING_MODES
from boundfinder.policy import ROLES
from boundfinder.search.baseline import baseline_warning
from boundfinder.search.measure import Rounded, trained
from boundfinder.search.study import _groups_of
from boundfinder.search.sweep import INFERENCE_ROLES, SweepResult, _seeds_of, check_tolerance, expand_family

__all__ = ["Sensitivity", "SensitivityResult", "precision_sensitivity", "sensitivity_table"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sensitivity:
    """One cell: the sweep of one role of one layer group, and its bound."""

    layer: str
    role: str
    sweep: SweepResult
    bound: BoundEstimate

    def summary(self) -> dict[str, Any]:
        return {"layer": self.layer, "role": self.role, "accuracy": [float(a) for a in self.sweep.accuracy],
                "drop": [float(d) for d in self.sweep.drop], "bound": self.bound.summary()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SensitivityResult:
    """Every cell of a sensitivity analysis; ``cells`` in layer order, then role order."""

    family: str
    bits: tuple[int, ...]
    level: str
    seeds: tuple[int, ...]
    confidence: float  # for the whole table when ``simultaneous``, else for each bound
    simultaneous: bool
    per_bound_confidence: float
    tolerance: float
    baseline_accuracy: float  # the metric's mean for a continuous score
    cells: tuple[Sensitivity, ...]
    #: what was measured ("accuracy", or a continuous score's metric), its direction, and whether the tolerance is
    #: relative to the baseline mean
    metric: str = "accuracy"
    higher_is_better: bool = True
    relative: bool = False
    #: the experiment measured (``Experiment.describe()``) and what the confidence statement covers
    experiment: dict[str, Any] = dataclasses.field(default_factory=dict)
    claim: str = ""
    #: a paragraph starting "WARNING:" when the full-precision model is near chance on the test items, else None
    #: (:func:`boundfinder.search.baseline.baseline_warning`)
    baseline_warning: str | None = None

    def cell(self, layer: str, role: str) -> Sensitivity:
        for c in self.cells:
            if c.layer == layer and c.role == role:
                return c
        raise KeyError((layer, role))

    @property
    def continuous(self) -> bool:
        return bool(self.cells) and self.cells[0].sweep.continuous

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (``baseline_accuracy`` is the metric's mean for a continuous score)."""
        return {"family": self.family, "bits": list(self.bits), "level": self.level, "seeds": list(self.seeds),
                "confidence": self.confidence, "simultaneous": self.simultaneous,
                "per_bound_confidence": self.per_bound_confidence, "tolerance": self.tolerance,
                "relative": self.relative, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "continuous": self.continuous,
                "baseline_accuracy": self.baseline_accuracy, "cells": [c.summary() for c in self.cells],
                "experiment": dict(self.experiment), "claim": self.claim, "baseline_warning": self.baseline_warning}

    def report(self) -> str:
        """A plain-text table: minimum safe bits per layer and role, with confidence intervals."""
        k = len(self.cells)
        statement = (f"all {k} bounds hold together with probability >= {_pct(self.confidence)} (each at "
                     f"{self.per_bound_confidence:.4g}, Bonferroni)" if self.simultaneous else
                     f"each bound at {_pct(self.confidence)} on its own (not simultaneous: with {k} bounds, some "
                     "may be wrong together)")
        models = f"seeds {list(self.seeds)}" if self.seeds else "the given trained model"
        lines = [self.baseline_warning, ""] if self.baseline_warning else []
        if self.continuous:
            base = f"{self.metric} {self.baseline_accuracy:.6g}, {self.direction}"
            tol = (f"tolerance {self.tolerance:g} ({'relative' if self.relative else 'absolute'} {self.metric} "
                   f"{'drop' if self.higher_is_better else 'increase'})")
        else:
            base = f"accuracy {self.baseline_accuracy:.4f}"
            tol = f"tolerance {self.tolerance:g}" + (" (relative)" if self.relative else "")
        lines += [f"sensitivity of each layer and role to {self.family}, bits {list(self.bits)}, {self.level} "
                  f"level, {models}; everything else at full precision ({base}); {tol}",
                  statement,
                  f"{'layer':<24} {'role':<12} {'min safe bits':>13}  {'CI':<10} {'status':<12} format"]
        for c in self.cells:
            b = c.bound
            bits = "-" if b.bits is None else str(b.bits)
            lo, hi = b.ci
            ci = f"[{'-' if lo is None else lo}, {'above' if hi is None else hi}]"
            fmt = "" if b.bits is None else c.sweep.formats[c.sweep.bits.index(b.bits)]
            lines.append(f"{c.layer:<24} {c.role:<12} {bits:>13}  {ci:<10} {b.status:<12} {fmt}")
        if self.claim:
            lines.append(f"claim: {self.claim}")
        return "\n".join(lines)


def precision_sensitivity(
    model: Experiment | Callable[[], torch.nn.Module] | torch.nn.Module,
    datamodule=None,
    family: str = "e8m{b}",
    bits: Iterable[int] = range(0, 11),
    *,
    layers: Sequence[str] | None = None,
    roles: Iterable[str] | None = None,
    level: str = "layer",
    rounding: str = "nearest",
    seeds: Iterable[int] | None = None,
    epochs: int = 20,
    tolerance: float | None = None,
    confidence: float = 0.95,
    simultaneous: bool = True,
    method: str = "auto",
    score: Score | str | Callable | None = None,
    trainer: dict[str, Any] | None = None,
    relative: bool | None = None,
) -> SensitivityResult:
    """Minimum safe bits of ``family`` for each role of each layer group alone, measured on the test items.

    ``model``, ``datamodule``, ``score``, ``trainer``: the experiment, as for
    :func:`~boundfinder.search.sweep.precision_sweep` (a factory trained from each of ``seeds``, default ``(0,)``,
    or a trained module measured as it is).

    ``layers``: one group per pattern (default: each layer owning parameters); ``roles``: the roles to take
    one at a time, among those that act when a trained model predicts (weights, biases, inputs, activations) and
    that the ``level`` rounds (default: all of those). Gradient and optimizer-state roles never act at prediction
    and are refused: their cell would read "safe at any width". ``simultaneous``: Bonferroni over the cells, so
    that ``confidence`` covers the whole table (see the module docstring).

    ``tolerance``: for a binary score, accuracy points (default 0.01); for a continuous score (``loss``, ``nll``,
    ``squared_error``, ...), required, in the metric's units, or a fraction of the baseline mean with
    ``relative`` (perplexity: relative only). Checked before any training.
    """
    bits = [int(b) for b in bits]
    if len(set(bits)) != len(bits) or len(bits) < 2:
        raise BoundfinderError(f"a sensitivity analysis needs at least 2 distinct bit widths, but got bits={bits}.")
    names = expand_family(family, bits)
    if level not in LEVEL_ROLES:
        raise BoundfinderError(f"unknown level {level!r}; valid levels are {tuple(LEVEL_ROLES)}.")
    if level == "op":
        raise BoundfinderError("the 'op' level rounds every operation of the model with one format, so it cannot "
                               "round one layer alone; use level 'layer' (or 'batch' for stored parameters).")
    acting = tuple(r for r in INFERENCE_ROLES if r in LEVEL_ROLES[level])
    roles = acting if roles is None else tuple(roles)
    if not roles:
        raise BoundfinderError(f"name at least one role; at the {level!r} level the roles are {acting}.")
    for r in roles:
        if r not in ROLES:
            raise BoundfinderError(f"unknown role {r!r}; valid roles are {ROLES}.")
    idle = [r for r in roles if r not in acting]
    if idle:
        raise BoundfinderError(f"the role(s) {idle} do not act when a trained model predicts at the {level!r} level "
                               f"(gradients and optimizer state only act in training); the roles are {acting}.")
    if len(set(roles)) != len(roles):
        raise BoundfinderError(f"each role once, please: got roles={list(roles)}.")
    if rounding not in ROUNDING_MODES:
        raise BoundfinderError(f"unknown rounding {rounding!r}; valid modes are {ROUNDING_MODES}.")
    exp = as_experiment(model, datamodule, score=score, trainer=trainer)
    continuous = exp.score.continuous
    if continuous:
        relative = check_tolerance(exp.score, tolerance, relative)
    else:
        tolerance = 0.01 if tolerance is None else tolerance
        relative = bool(relative)
    if not 0.5 <= confidence < 1 or not (continuous or 0 < tolerance < 1):
        raise BoundfinderError(f"`0 < tolerance < 1` (accuracy points) and `0.5 <= confidence < 1` must hold, but "
                               f"got tolerance={tolerance!r}, confidence={confidence!r}.")
    seeds = _seeds_of(exp, seeds, "a sensitivity analysis")
    runs = max(len(seeds), 1)
    if continuous and method not in ("auto", "studentized", "t", "bootstrap"):
        raise BoundfinderError(f"method {method!r} does not fit the continuous score {exp.score.name!r}: the "
                               "methods for per-item metrics are 'auto', 'studentized', 't' and 'bootstrap'.")
    if method not in METHODS or (method == "studentized" and not continuous) or (not continuous and (
            (method in ("score", "exact") and runs > 1) or (method in ("t", "bootstrap") and runs < 2))):
        models = f"{runs} seed(s)" if seeds else "one trained model"
        raise BoundfinderError(f"method {method!r} does not fit {models}: 'score' and 'exact' take one "
                               f"seed, 't' and 'bootstrap' two or more ('studentized': continuous scores); the "
                               f"methods are {METHODS}.")
    groups = list(_groups_of(exp.probe(), layers))

    exp.prepare(train=not exp.trained)
    test = Rounded(exp, trained(exp, seeds, epochs), "test", level, rounding, roles)
    names_of_seeds = [f"seed {s}" for s in seeds] or ["the trained model"]
    if continuous:
        for s, row in enumerate(test.baseline):
            first_nonfinite(row, exp.score, f"at full precision with {names_of_seeds[s]}")
    sweeps = []
    for group in groups:
        for role in roles:
            # a role dict names its role itself: only this role of this group is rounded
            correct = np.stack([test({group: {role: name}}) for name in names])
            if continuous:
                for j, name in enumerate(names):
                    for s, row in enumerate(correct[j]):
                        first_nonfinite(row, exp.score, f"with the {role} of {group} at {name} ({bits[j]} bits), "
                                                        f"{names_of_seeds[s]}")
            sweeps.append((group, role, SweepResult.of_score(
                exp.score, family=family, bits=tuple(bits), formats=tuple(names), level=level, roles=(role,),
                seeds=seeds, correct=correct, baseline=test.baseline)))
    table = sensitivity_table(sweeps, tolerance=tolerance, confidence=confidence, simultaneous=simultaneous,
                              method=method, relative=relative)
    return dataclasses.replace(table, experiment=exp.describe(), claim=exp.claim(seeds),
                               baseline_warning=None if continuous else baseline_warning(exp, "test", test.baseline,
                                                                                         seeds=seeds))


def sensitivity_table(sweeps: Sequence[tuple[str, str, SweepResult]], *, tolerance: float | None = None,
                      confidence: float = 0.95, simultaneous: bool = True, method: str = "auto",
                      fit_curve: bool = True, relative: bool | None = None) -> SensitivityResult:
    """The bounds of measured cells ``(layer, role, sweep)``: each at ``1 - (1 - confidence) / K`` when
    ``simultaneous`` (Bonferroni over the K cells), else at ``confidence``. The sweeps share family, bits, level,
    seeds and baseline. ``fit_curve``: also fit each cell's accuracy-vs-bits curve (for its summary and plot;
    the bounds do not use it). ``tolerance`` / ``relative``: as :meth:`SweepResult.bound` takes them (a continuous
    score needs a tolerance)."""
    if not sweeps:
        raise BoundfinderError("a sensitivity table needs at least one (layer, role) cell.")
    first = sweeps[0][2]
    for layer, role, sweep in sweeps:
        if (sweep.family, sweep.bits, sweep.level, sweep.seeds) != (first.family, first.bits, first.level,
                                                                     first.seeds) or not np.array_equal(
                sweep.baseline, first.baseline):
            raise BoundfinderError(f"the cells of a sensitivity table share family, bits, level, seeds and baseline; "
                                   f"cell ({layer!r}, {role!r}) differs from the first.")
    per_bound = 1 - (1 - confidence) / len(sweeps) if simultaneous else confidence
    cells = tuple(Sensitivity(layer=layer, role=role, sweep=sweep,
                              bound=sweep.bound(tolerance=tolerance, confidence=per_bound, method=method,
                                                fit_curve=fit_curve, relative=relative))
                  for layer, role, sweep in sweeps)
    return SensitivityResult(family=first.family, bits=first.bits, level=first.level, seeds=first.seeds,
                             confidence=confidence, simultaneous=simultaneous, per_bound_confidence=per_bound,
                             tolerance=cells[0].bound.tolerance, baseline_accuracy=first.baseline_accuracy,
                             cells=cells, metric=first.metric, higher_is_better=first.higher_is_better,
                             relative=cells[0].bound.relative)


def _pct(p: float) -> str:
    """0.95 -> '95%', 0.995 -> '99.5%'."""
    return f"{p * 100:.4g}%"
