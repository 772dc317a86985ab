"""Optuna search over per-layer precision: the cheapest configuration whose accuracy drop stays within the
tolerance, certified on test items the search never saw.

1. One full-precision model per seed is trained from its seed alone, so every worker of a distributed search
   trains the same models.
2. Each trial gives every searched layer group a bit width of the format family, rounds the models under that
   policy and records which *validation* items they get right. The objective is the cost (mean bits per
   parameter, parameters outside the searched groups counted at 32), minimised under the constraint
   ``validation drop <= tolerance`` (``trial.set_constraint``). The per-item results are stored in the trial.
   With switch epochs (``switch=``), a trial also picks the epoch at which training goes from the layers'
   formats to full precision (the 2017 study's low -> high switching): each seed's model is trained under the
   configuration and measured at full precision, and the cost is averaged over the training epochs.
3. Confirmation: the feasible trials' Pareto front (cost against validation drop), topped by the widest
   configuration, is measured on the *test* items and tested from the most expensive configuration down, each
   at the full level, stopping at the first that cannot be certified (``estimate_bound`` with the candidates as
   its levels). With probability >= ``confidence`` every configuration declared safe is truly safe; the chosen
   one is the cheapest declared safe. The search's own selection (its winner's curse) only ordered the
   candidates; it never touched the items the confidence statement rests on.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import logging
import math
import numbers
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from boundfinder.bounds import BoundEstimate, estimate_bound
from boundfinder.bounds.estimate import _seeds_note
from boundfinder.errors import BoundfinderError
from boundfinder.experiment import Experiment, Score, as_experiment, has_loader, qualified_name, weights_digest
from boundfinder.formats import parse_format
from boundfinder.policy import ROLES, PrecisionPolicy, Rule, layer_modules
from boundfinder.search.baseline import baseline_warning
from boundfinder.search.candidates import search_path, sensitivity_path, uniform_configurations
from boundfinder.search.measure import Rounded, Switched, trained
from boundfinder.search.storage import mask_url, open_storage
from boundfinder.search.sweep import INFERENCE_ROLES, _json_safe, _seeds_of, check_tolerance, expand_family

__all__ = ["Candidate", "SearchResult", "certify", "precision_search"]

log = logging.getLogger(__name__)

#: Study user attribute holding the search settings; a worker with other settings is refused.
CONFIG_KEY = "boundfinder.search"
#: Study user attribute: which validation items the full-precision models get right (packed, one per seed).
BASELINE_KEY = "boundfinder.val_baseline"
_FULL_WIDTH = 32  # float32: what a parameter outside the searched groups costs
#: Trial parameter of a switching search: the epoch from which training goes on at full precision.
SWITCH_PARAM = "switch_epoch"
#: How a search proposes configurations: ``path+tpe`` (default), ``path``, ``tpe`` (see :func:`precision_search`).
STRATEGIES = ("path+tpe", "path", "tpe")
#: What a certification covers: the trained models themselves, or models trained afresh from seeds.
CLAIMS = ("model", "training")
#: per-role search: the roles each of a group's two widths covers
ROLE_KINDS = {"weights": ("weight", "bias"), "activations": ("input", "activation")}


def _param_name(group: str) -> str:
    return f"bits[{group}]"


def _pack(correct: np.ndarray) -> str:
    """Per-item booleans as base64 of their packed bits (a few hundred bytes for thousands of items); continuous
    scores as base64 of their little-endian float64 bytes."""
    if correct.dtype != bool:
        return base64.b64encode(np.asarray(correct, dtype="<f8").tobytes()).decode("ascii")
    return base64.b64encode(np.packbits(correct).tobytes()).decode("ascii")


def _unpack(text: str, n: int, continuous: bool = False) -> np.ndarray:
    if continuous:
        return np.frombuffer(base64.b64decode(text), dtype="<f8")[:n].astype(float)
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


def _drop(baseline: np.ndarray, measured: np.ndarray, score: Score, relative: bool) -> float:
    """The mean drop of ``measured`` against ``baseline`` (same shape), in the score's direction; a fraction of
    the baseline mean with ``relative``."""
    drop = float(baseline.mean() - measured.mean())
    if not score.higher_is_better:
        drop = -drop
    return drop / float(baseline.mean()) if relative else drop


def _width(fmt) -> float:
    """Storage bits per element of a format (a block format's shared scale included)."""
    return float(getattr(fmt, "bits_per_element", fmt.bits))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
    """One configuration of the search: a bit width per layer group, its cost and validation drop."""

    bits: dict[str, int]
    formats: dict[str, str]
    cost: float
    val_drop: float
    trial: int | None
    #: switching search: training runs under ``formats`` before this epoch and at full precision from it on
    #: (0: full precision throughout); None: the formats are applied to the trained model
    switch: int | None = None
    epochs: int | None = None  #: switching search: the training's length
    #: switching search: seeds whose model's training loss became NaN or infinite in the validation measurement
    #: (the fit stopped there; the model was measured as it was)
    diverged_seeds: tuple[int, ...] = ()
    #: how the configuration entered the study: ``widest``, ``uniform``, ``sensitivity`` (a group alone),
    #: ``path`` (the sensitivity-ordered path), ``sampler`` (proposed by TPE)
    origin: str = "sampler"

    @property
    def uniform(self) -> bool:
        """Every group (and role) at the same width: a configuration the uniform sweep measures."""
        return len(set(self.bits.values())) <= 1

    def describe(self) -> str:
        layers = " ".join(f"{g}={f}" if isinstance(f, str) else
                          f"{g}=" + "/".join(f"{r[0]}:{v}" for r, v in f.items()) for g, f in self.formats.items())
        if self.switch is None:
            return layers
        if self.switch == 0:
            return "fp32 training throughout"
        if self.switch == self.epochs:
            return f"{layers} training throughout"
        return f"{layers} before epoch {self.switch}, fp32 from it on"

    def summary(self) -> dict[str, Any]:
        return {"bits": dict(self.bits), "formats": dict(self.formats), "switch": self.switch, "cost": self.cost,
                "val_drop": self.val_drop if math.isfinite(self.val_drop) else None, "trial": self.trial,
                "diverged_seeds": list(self.diverged_seeds), "origin": self.origin, "uniform": self.uniform}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchResult:
    """What a search found and what its confirmation on the test items certified.

    ``candidates`` are ordered from the cheapest to the most expensive; ``confirmation.levels[k]`` holds the test
    measurement of ``candidates[k]`` (its ``bits`` field is the rank ``k``). ``chosen`` is the cheapest candidate
    declared safe, or None (``confirmation.reason`` says why).
    """

    study_name: str
    storage: str
    family: str
    groups: tuple[str, ...]
    parameters: dict[str, int]
    n_complete: int
    n_failed: int
    n_configurations: int
    candidates: tuple[Candidate, ...]
    confirmation: BoundEstimate | None
    chosen: Candidate | None
    reason: str
    confirm_seeds: tuple[int, ...] = ()
    #: switching search: the switch epochs searched over, and the training length; () for a rounding search
    switch_points: tuple[int, ...] = ()
    epochs: int | None = None
    #: every configuration the study measured, cheapest first (``n_configurations`` of them)
    configurations: tuple[Candidate, ...] = ()
    #: switching search: per candidate, the confirm seeds whose training loss became NaN or infinite in the
    #: certification (those models were measured as they stopped)
    confirm_diverged: tuple[tuple[int, ...], ...] = ()
    #: the experiment searched (``Experiment.describe()``: model, data, checkpoint, score, trainer settings)
    experiment: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: what the certification's confidence statement covers (``Experiment.claim``)
    claim: str = ""
    #: the multiple-testing procedure of the certification (``search/certify.py``)
    procedure: str = "fixed_cost"
    #: how configurations were proposed (:data:`STRATEGIES`)
    strategy: str = "tpe"
    #: ``"model"``: the trained models themselves were certified; ``"training"``: models trained afresh
    claim_kind: str = "training"
    #: what a configuration's cost measures (:data:`~boundfinder.search.cost.COSTS`), and its value in float32
    cost_kind: str = "bits"
    full_cost: float = float(_FULL_WIDTH)
    per_role: bool = False
    #: a warning when the full-precision models are near chance (None otherwise)
    baseline_warning: str | None = None
    #: the certification's per-item measurements: ``test_correct[k]`` of ``candidates[k]``, (S, N) each, and the
    #: full-precision models' ``test_baseline`` (S, N); None when not certified (not in ``summary()``)
    test_correct: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    test_baseline: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    #: what was measured per item: "accuracy" (right/wrong) or a continuous score's metric, its direction, and
    #: whether drops and the tolerance are fractions of the baseline mean
    metric: str = "accuracy"
    higher_is_better: bool = True
    relative: bool = False
    continuous: bool = False

    @property
    def drop_name(self) -> str:
        """What a drop is: ``drop`` (accuracy, or a metric where higher is better) or ``increase`` (a loss);
        ``rel.`` in front of a relative one."""
        return ("rel. " if self.relative else "") + ("drop" if self.higher_is_better else "increase")

    @property
    def cost_label(self) -> str:
        """What a candidate's cost measures."""
        label = {"bits": "mean bits per parameter", "bops": "bit-operations per item",
                 "memory": "bytes per item (weights and activations)"}[self.cost_kind]
        return f"{label} over training" if self.switch_points else label

    def summary(self) -> dict[str, Any]:
        """JSON-safe description."""
        levels = self.confirmation.levels if self.confirmation is not None else ()
        rows = []
        for k, cand in enumerate(self.candidates):
            row = cand.summary()
            if k < len(levels):
                lv = levels[k].summary()
                row |= {"test_drop": lv["drop"], "test_upper": lv["upper"], "declared_safe": lv["declared_safe"]}
            if k < len(self.confirm_diverged):
                row["test_diverged_seeds"] = list(self.confirm_diverged[k])
            rows.append(row)
        return {
            "study_name": self.study_name, "storage": self.storage, "family": self.family,
            "groups": list(self.groups), "parameters": dict(self.parameters), "n_complete": self.n_complete,
            "n_failed": self.n_failed, "n_configurations": self.n_configurations, "candidates": rows,
            "configurations": [c.summary() for c in self.configurations],
            "confirm_seeds": list(self.confirm_seeds), "switch_points": list(self.switch_points),
            "epochs": self.epochs, "cost_label": self.cost_label,
            "confirmation": None if self.confirmation is None else self.confirmation.summary(),
            "chosen": None if self.chosen is None else self.chosen.summary(), "reason": self.reason,
            "experiment": dict(self.experiment), "claim": self.claim, "procedure": self.procedure,
            "strategy": self.strategy, "claim_kind": self.claim_kind, "cost_kind": self.cost_kind,
            "full_cost": self.full_cost, "per_role": self.per_role, "baseline_warning": self.baseline_warning,
            "metric": self.metric, "higher_is_better": self.higher_is_better, "relative": self.relative,
            "continuous": self.continuous,
        }

    def report(self) -> str:
        """A plain-text table of the candidates and the verdict."""
        conf = self.confirmation
        lines = [self.baseline_warning, ""] if self.baseline_warning else []
        lines.append(f"study {self.study_name!r} in {self.storage}: {self.n_configurations} configurations measured "
                     f"({self.n_complete} trials complete, {self.n_failed} failed; strategy {self.strategy}); "
                     f"{len(self.groups)} layer groups{', weights and activations apart' if self.per_role else ''}, "
                     f"family {self.family}, cost: {self.cost_label}")
        if self.switch_points:
            lines.append(f"training: {self.epochs} epochs, each configuration's formats before its switch epoch "
                         f"(one of {list(self.switch_points)}), fp32 from it on; cost: {self.cost_label}")
        if conf is not None:
            if self.confirm_seeds:
                tested = (f"{conf.n_items} test items x {conf.n_seeds} fresh seed{'s' if conf.n_seeds != 1 else ''} "
                          f"{list(self.confirm_seeds)}")
            elif self.experiment.get("trained"):
                tested = f"{conf.n_items} test items of the given trained model"
            else:
                tested = (f"{conf.n_items} test items with the search's {conf.n_seeds} trained model"
                          + ("s" if conf.n_seeds != 1 else ""))
            how = ("from the most expensive down" if self.procedure == "fixed_cost"
                   else f"by the {self.procedure} procedure")
            method = (conf.method if self.claim_kind != "model" or conf.n_seeds == 1
                      else "the models fixed, the items random: t and score tests")
            which = "the validation Pareto front" if self.switch_points else \
                "the uniform configurations and the validation Pareto front"
            if self.continuous:
                method = ("the models fixed, the items random: " if self.claim_kind == "model" and conf.n_seeds > 1
                          else "") + "studentized bounds"
                metric = (f"{self.metric} ({'higher' if self.higher_is_better else 'lower'} is better), full "
                          f"precision {conf.baseline_accuracy:.6g}, ")
            else:
                metric = ""
            lines.append(f"candidates: {which}, tested on {tested} {how} ({method}, {conf.confidence:.0%} "
                         f"confidence, {metric}tolerance {conf.tolerance:g}"
                         + (f" {self.drop_name}" if self.continuous else "") + ")")
            head = {"bits": "bits/param", "bops": "BOPs", "memory": "bytes"}[self.cost_kind]
            word = self.drop_name.split()[-1] if self.continuous else "drop"
            width = max(9, len(word) + 5)
            lines.append(f"{head:>10} {'val ' + word:>{width}} {'test ' + word:>{width}} {'upper':>8}  {'safe':<4}  "
                         f"{'origin':<11} configuration")
            num = ".4g" if self.continuous else ".4f"
            test_diverged = self.confirm_diverged or ((),) * len(self.candidates)
            for cand, lv, failed in reversed(list(zip(self.candidates, conf.levels, test_diverged, strict=True))):
                seeds = sorted({*cand.diverged_seeds, *failed})
                mark = f"  [training diverged: seeds {seeds}]" if seeds else ""
                cost = f"{cand.cost:10.3f}" if self.cost_kind == "bits" else f"{cand.cost:10.4g}"
                lines.append(f"{cost} {cand.val_drop:{width}{num}} {lv.drop:{width}{num}} {lv.upper:8{num}}  "
                             f"{'yes' if lv.declared_safe else 'no':<4}  {cand.origin:<11} {cand.describe()}{mark}")
        if self.chosen is not None:
            ratio = self.full_cost / self.chosen.cost
            what = {"bits": "bits", "bops": "bit-operations", "memory": "bytes"}[self.cost_kind]
            value = f"{self.chosen.cost:.3f}" if self.cost_kind == "bits" else f"{self.chosen.cost:.4g}"
            lines.append(f"chosen: {self.chosen.describe()}  ({value} {self.cost_label}"
                         + (f", {ratio:.2f}x fewer {what} than float32)" if ratio > 1 else ")"))
        lines.append(f"reason: {self.reason}")
        if self.claim and conf is not None:
            lines.append(f"claim: {self.claim}")
        return "\n".join(lines)


def _bit_choices(bits: Sequence[int]) -> tuple[int, int, int] | None:
    """(low, high, step) when ``bits`` is an evenly spaced range, else None (then a categorical choice)."""
    if len(bits) < 2:
        return None
    step = bits[1] - bits[0]
    if step > 0 and all(b - a == step for a, b in itertools.pairwise(bits)):
        return bits[0], bits[-1], step
    return None


def _groups_of(model: torch.nn.Module, layers: Sequence[str] | None) -> dict[str, list[str]]:
    """Search group (a layer-name pattern) -> the layers it selects. Default: each layer owning parameters."""
    modules = layer_modules(model)
    if layers is None:
        # Each layer owning parameters, named so that the name selects it as a pattern does: wildcard characters
        # in a name are escaped, and a layer inside another that owns parameters (nn.MultiheadAttention's
        # out_proj) belongs to the outer one's group, since the outer name selects it too.
        owners = [name for name, m in modules.items() if next(iter(m.parameters(recurse=False)), None) is not None]

        def inside(name: str, outer: str) -> bool:
            return bool(outer) and name.startswith(outer + ".")

        groups = {re.sub(r"([*?\[])", r"[\1]", o): [n for n in owners if n == o or inside(n, o)]
                  for o in owners if not any(inside(o, p) for p in owners)}
        if not groups:
            raise BoundfinderError(f"{type(model).__name__} has no layer with parameters to search over.")
        return groups
    groups: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for pattern in layers:
        if not isinstance(pattern, str) or not pattern:
            raise BoundfinderError(f"layer patterns must be non-empty strings, but got {pattern!r}.")
        # resolve() names the modules that exist when the pattern matches none
        PrecisionPolicy.from_spec({pattern: "fp32"}).resolve(model)
        rule = Rule(pattern=pattern, formats={"weight": "fp32"})
        selected = [name for name, m in modules.items() if rule.selects(name, m)]
        for name in selected:
            if name in owner:
                raise BoundfinderError(f"layer {name!r} is selected by both patterns {owner[name]!r} and "
                                       f"{pattern!r}; search groups must be disjoint.")
            owner[name] = pattern
        groups[pattern] = selected
    return groups


def _storage_label(storage: Any) -> str:
    if storage is None or isinstance(storage, str):
        return mask_url(storage)
    return type(storage).__name__


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Space:
    """The search space: a bit width per dimension (a layer group, or with ``per_role`` a group's weights and its
    activations), and a switch epoch in a switching search; and what a configuration costs."""

    groups: tuple[str, ...]
    dims: tuple[str, ...]  # the groups, or "<group> weights" / "<group> activations" with per_role
    bits: tuple[int, ...]
    names: dict[int, str]  # bit width -> format name
    switch: tuple[int, ...]  # () for a rounding search
    epochs: int
    parameters: dict[str, int]
    outside: int  # parameters outside the searched groups, counted at full width
    widths: dict[int, float]  # bit width -> storage bits per element
    per_role: bool = False
    cost_kind: str = "bits"
    layers: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # group -> its layers
    cost_model: Any = None  # a CostModel (bops, memory)

    @property
    def widest(self) -> tuple[dict[str, int], int | None]:
        """The most expensive configuration: the top of the certification chain."""
        return dict.fromkeys(self.dims, self.bits[-1]), (min(self.switch) if self.switch else None)

    def params(self, choice: dict[str, int], switch: int | None) -> dict[str, int]:
        out = {_param_name(d): choice[d] for d in self.dims}
        return out if switch is None else out | {SWITCH_PARAM: switch}

    def parse(self, params: dict[str, Any]) -> tuple[dict[str, int], int | None] | None:
        """A trial's configuration, or None when its parameters are not of this space."""
        choice = {d: int(params[_param_name(d)]) for d in self.dims if _param_name(d) in params}
        if len(choice) != len(self.dims) or (SWITCH_PARAM in params) != bool(self.switch):
            return None
        return choice, (int(params[SWITCH_PARAM]) if self.switch else None)

    def key(self, choice: dict[str, int], switch: int | None) -> tuple:
        """Configurations that train and measure alike share a key: with switch epoch 0 the formats never act."""
        if switch == 0:
            choice = self.widest[0]
        return (*(choice[d] for d in self.dims), switch)

    def group_bits(self, choice: dict[str, int], group: str) -> tuple[int, int]:
        """(weight width, activation width) of a group."""
        if self.per_role:
            return choice[f"{group} weights"], choice[f"{group} activations"]
        return choice[group], choice[group]

    def formats(self, choice: dict[str, int]) -> dict[str, Any]:
        """``{group: format}``, or with ``per_role`` ``{group: {"weights": format, "activations": format}}``."""
        if not self.per_role:
            return {g: self.names[choice[g]] for g in self.groups}
        return {g: {kind: self.names[choice[f"{g} {kind}"]] for kind in ROLE_KINDS} for g in self.groups}

    def _static_cost(self, choice: dict[str, int] | None) -> float:
        """The cost of formats applied to the trained model (``None``: everything at 32 bits)."""
        if self.cost_kind == "bits":
            if choice is None:
                return _FULL_WIDTH
            total = sum(self.parameters.values()) + self.outside
            return (sum(self.parameters[g] * self.widths[self.group_bits(choice, g)[0]] for g in self.groups)
                    + self.outside * _FULL_WIDTH) / (total or 1)
        widths = {}
        if choice is not None:
            for g in self.groups:
                w, a = self.group_bits(choice, g)
                widths |= dict.fromkeys(self.layers[g], (self.widths[w], self.widths[a]))
        return self.cost_model.cost(self.cost_kind, widths)

    def cost(self, choice: dict[str, int], switch: int | None) -> float:
        """The configuration's cost (:data:`~boundfinder.search.cost.COSTS`: mean bits per parameter by default); in
        a switching search averaged over the training epochs (fp32 after the switch)."""
        low = self._static_cost(choice)
        if switch is None:
            return low
        return (switch * low + (self.epochs - switch) * self._static_cost(None)) / self.epochs

    def size(self) -> int:
        per_switch = len(self.bits) ** len(self.dims)
        if not self.switch:
            return per_switch
        return per_switch * len([p for p in self.switch if p]) + (0 in self.switch)

    def candidate(self, choice: dict[str, int], switch: int | None, val_drop: float,
                  trial: int | None, origin: str = "sampler") -> Candidate:
        if switch == 0:
            choice = self.widest[0]
        return Candidate(bits=dict(choice), formats=self.formats(choice),
                         cost=self.cost(choice, switch), val_drop=val_drop, trial=trial, switch=switch,
                         epochs=None if switch is None else self.epochs, origin=origin)


def _role_formats(formats: dict[str, Any], roles: Sequence[str]) -> dict[str, Any]:
    """A candidate's formats as a policy spec: per-role widths become ``{role: format}`` for the searched roles."""
    out = {}
    for g, f in formats.items():
        if isinstance(f, str):
            out[g] = f
        else:
            out[g] = {r: f[kind] for kind, members in ROLE_KINDS.items() for r in members if r in roles}
    return out


def _switch_points(switch: Iterable[int] | None, epochs: int) -> tuple[int, ...]:
    if switch is None:
        return ()
    if isinstance(switch, (str, bytes)):
        raise BoundfinderError(f"switch epochs must be ints, but got {switch!r}.")
    switch = list(switch)
    bad = [p for p in switch if isinstance(p, bool) or not isinstance(p, numbers.Integral)]
    if bad:
        raise BoundfinderError(f"switch epochs must be ints, but got {bad[0]!r} in switch={switch!r}.")
    points = tuple(sorted({int(p) for p in switch}))
    if len(points) < 2 or points[0] < 0 or points[-1] > epochs:
        raise BoundfinderError(f"a switching search needs at least 2 distinct switch epochs in [0, epochs={epochs}] "
                               f"(0: fp32 training throughout, {epochs}: the formats throughout), but got "
                               f"switch={list(points)}.")
    return points


def precision_search(
    model: Experiment | Callable[[], torch.nn.Module] | torch.nn.Module,
    datamodule=None,
    family: str = "e8m{b}",
    bits: Iterable[int] = range(0, 11),
    *,
    layers: Sequence[str] | None = None,
    roles: Iterable[str] | None = None,
    level: str = "layer",
    rounding: str = "nearest",
    switch: Iterable[int] | None = None,
    seeds: Iterable[int] | None = None,
    epochs: int = 20,
    tolerance: float | None = None,
    confidence: float = 0.95,
    n_trials: int = 40,
    timeout: float | None = None,
    storage: Any = None,
    study_name: str | None = None,
    sampler_seed: int | None = None,
    heartbeat_interval: float = 30.0,
    grace_period: float | None = None,
    model_name: str | None = None,
    confirm: bool = True,
    confirm_seeds: Iterable[int] | None = None,
    score: Score | str | Callable | None = None,
    trainer: dict[str, Any] | None = None,
    procedure: str | None = None,
    strategy: str | None = None,
    claim: str | None = None,
    cost: str = "bits",
    per_role: bool = False,
    relative: bool | None = None,
) -> SearchResult:
    """Search per-layer bit widths of ``family`` with Optuna, then certify the result on the test items.

    ``model``: an :class:`~boundfinder.experiment.Experiment`, or a factory returning a fresh LightningModule
    (trained from each of ``seeds``, default ``(0,)``), or a trained module, searched as it is (the certification
    is then about that one model; ``seeds``, ``confirm_seeds`` and ``switch`` need training and are refused).
    ``datamodule``: any LightningDataModule with validation and test loaders (validation items guide the search,
    test items certify it; an item is its position in the unshuffled loader). ``score``: which items are right,
    ``score(model, batch) -> tensor[batch]`` (default top-1 of class logits); ``trainer``: ``accelerator`` /
    ``devices`` / ``precision`` for ``lightning.Trainer``. ``layers``: one search group per pattern (default: one per
    layer owning parameters). ``n_trials``: distinct configurations the *study* should have measured, counting
    those of every worker sharing ``storage`` (a proposal measured before is reused and not counted).
    ``storage``: a URL or journal path (see :mod:`boundfinder.search.storage`), an Optuna storage object, or
    None (in memory). Running this again with the same storage and ``study_name`` continues the study; a worker
    whose settings differ from the study's is refused with the differences listed. ``sampler_seed`` makes
    one worker's proposals reproducible; give each worker of a distributed search its own.

    ``switch``: None (default) rounds the trained full-precision models under each configuration (``roles``
    default: weights, biases, inputs, activations). Switch epochs (e.g. ``range(0, epochs + 1, 2)``) make it a
    search over low -> high precision training: each trial also picks a switch epoch ``p``, and a model per seed
    is trained under the configuration's formats for epochs ``[0, p)`` and at full precision from ``p`` on
    (``roles`` default: every role the ``level`` rounds, gradients included), then measured at full precision.
    Its cost is the mean bits per parameter averaged over the epochs. Each trial trains a model per seed.

    ``strategy``: how configurations are proposed (docs/search.md): ``"path+tpe"`` (default for a rounding
    search) measures every uniform configuration, each group alone at each narrower width and the
    sensitivity-ordered greedy path (binary-searched on validation), then TPE; ``"path"`` without TPE; ``"tpe"``
    the sampler alone (the only one, and the default, of a switching search). With a path strategy ``n_trials``
    counts configurations beyond the ``groups x (widths - 1)`` of each group alone.
    ``cost``: ``"bits"`` (mean bits per parameter), ``"bops"`` (weight bits x activation bits x MACs per item) or
    ``"memory"`` (weights and layer outputs, bytes per item). ``per_role``: each group's weights (weight, bias)
    and activations (input, activation) get widths of their own.

    ``score`` may be continuous (a per-item loss or error, ``Score(kind="continuous")`` or a built-in such as
    ``"nll"`` / ``"squared_error"``): drops are then paired mean differences in the metric's direction,
    ``tolerance`` is required in its units (or a fraction of the baseline mean with ``relative``; perplexity is
    relative only), and the certification uses the continuous (studentized) bounds. ``tolerance`` for a binary
    score: accuracy points, default 0.01.

    ``confirm``: certify the result on the test items (a worker that only adds trials passes False).
    ``claim``: what the certification covers. ``"model"`` (default for a rounding search, the only one for a
    trained model): the search's own trained models, measured on the test items (selection used validation items
    only); with several seeds the drop averaged over those models. ``"training"`` (default for a switching
    search): models trained afresh from ``confirm_seeds`` (default: as many as ``seeds``, numbered after the
    largest); models that took part in choosing the candidates would carry their own robustness to the chosen
    configurations into a claim about new ones.
    ``procedure``: how the candidates are certified (:func:`certify`): ``"graph"`` by default (the uniform chain
    and the mixed chain), ``"fixed_cost"`` (the fixed sequence) for a switching search.

    Returns a :class:`SearchResult`; ``n_trials=0`` only confirms what the storage already holds.
    """
    import optuna

    from boundfinder.search.certify import PROCEDURES

    if procedure is not None and procedure not in PROCEDURES:
        raise BoundfinderError(f"procedure must be one of {', '.join(PROCEDURES)}, got {procedure!r}.")
    exp = as_experiment(model, datamodule, score=score, trainer=trainer, model_name=model_name)
    if exp.score.continuous:
        relative = check_tolerance(exp.score, tolerance, relative)
    else:
        if relative:
            raise BoundfinderError(
                "a relative tolerance (relative=True, --relative) is for a continuous score's metric in a search; "
                f"score {exp.score.name!r} is right/wrong per item: give the tolerance in accuracy points "
                "(e.g. 0.01).")
        relative = False
        tolerance = 0.01 if tolerance is None else tolerance
    bits = sorted({int(b) for b in bits})
    if len(bits) < 2:
        raise BoundfinderError(f"a search needs at least 2 distinct bit widths, but got bits={bits}.")
    names = dict(zip(bits, expand_family(family, bits), strict=True))
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise BoundfinderError(f"`epochs >= 1` must hold (an int), but got epochs={epochs!r}.")
    epochs = int(epochs)
    switch_points = _switch_points(switch, epochs)
    # the graph's uniform chain is the uniform sweep's, which a switching search has no counterpart of
    procedure = procedure or ("fixed_cost" if switch_points else "graph")
    if switch_points and exp.trained:
        raise BoundfinderError(exp.needs_training("a switching search (switch=, --switch)"))
    roles = tuple(roles) if roles is not None else (ROLES if switch_points else INFERENCE_ROLES)
    for r in roles:
        if r not in ROLES:
            raise BoundfinderError(f"unknown role {r!r}; valid roles are {ROLES}.")
    strategy, claim = _strategy_claim(exp, strategy, claim, switch_points)
    from boundfinder.search.cost import COSTS

    if cost not in COSTS:
        raise BoundfinderError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}.")
    if per_role:
        if switch_points:
            raise BoundfinderError("per-role widths (per_role=True, --per-role) are searched by rounding trained "
                                   "models; a switching search gives each group one width for every role.")
        missing = [kind for kind, members in ROLE_KINDS.items() if not set(members) & set(roles)]
        if missing:
            raise BoundfinderError(f"per-role widths need roles of both kinds (weights: weight, bias; activations: "
                                   f"input, activation), but roles={list(roles)} has no {missing[0]}.")
    if not (exp.score.continuous or 0 < tolerance < 1) or not 0.5 <= confidence < 1:
        raise BoundfinderError(f"`0 < tolerance < 1` and `0.5 <= confidence < 1` must hold, but got "
                               f"tolerance={tolerance!r}, confidence={confidence!r}.")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 0:
        raise BoundfinderError(f"`n_trials >= 0` must hold (an int), but got n_trials={n_trials!r}.")
    seeds = _seeds_of(exp, seeds, "a search")
    if exp.trained or claim == "model":
        if confirm_seeds is not None:
            raise BoundfinderError(
                exp.needs_training(f"confirm_seeds={list(confirm_seeds)}") if exp.trained else
                f"confirm_seeds={list(confirm_seeds)} trains fresh models for the certification, which the claim "
                "'model' does not: it certifies the search's own trained models on test items. Use "
                "claim='training' (--claim training) for models trained afresh.")
        confirm_seeds = ()
    else:
        confirm_seeds = (tuple(max(seeds) + 1 + i for i in range(len(seeds))) if confirm_seeds is None
                         else tuple(int(s) for s in confirm_seeds))
    if not has_loader(exp.data, "val"):
        raise BoundfinderError(
            f"a search needs validation items: it chooses configurations on them and certifies the choice on test "
            f"items it never saw (choosing and certifying on the same items would overstate the confidence), but "
            f"{exp.data_name} has no val_dataloader(). Add one (a held-out part of the training data), or measure "
            "on the test items alone with `boundfinder sweep` or `boundfinder sensitivity`.")
    if confirm and claim == "training" and (not confirm_seeds or set(confirm_seeds) & set(seeds)):
        raise BoundfinderError(f"the certification needs seeds of its own, disjoint from the search's, but got "
                               f"seeds={seeds}, confirm_seeds={confirm_seeds}.")

    # Everything a bad argument can reject is checked before the minutes of training.
    probe = exp.probe()
    groups = _groups_of(probe, layers)
    PrecisionPolicy.from_spec(dict.fromkeys(groups, names[bits[-1]]), rounding=rounding, roles=roles).resolve(probe)
    if level == "op":
        # the op level takes one activation/gradient format for the whole model: a configuration giving the groups
        # different widths is refused here, not in the middle of the study
        from boundfinder.emulation import emulate

        mixed = {g: names[bits[i % len(bits)]] for i, g in enumerate(groups)}
        with emulate(probe, PrecisionPolicy.from_spec(mixed, rounding=rounding, roles=roles), level="op"):
            pass
    modules = layer_modules(probe)
    counts = {name: sum(p.numel() for p in m.parameters(recurse=False)) for name, m in modules.items()}
    parameters = {g: sum(counts[n] for n in members) for g, members in groups.items()}
    total = sum(p.numel() for p in probe.parameters())
    dims = tuple(f"{g} {kind}" for g in groups for kind in ROLE_KINDS) if per_role else tuple(groups)

    loaders = exp.prepare(train=not exp.trained, splits=("val", "test"))
    cost_model = None
    if cost != "bits":
        from boundfinder.experiment import eval_loader
        from boundfinder.search.cost import CostModel, layer_profile

        batch = next(iter(eval_loader(exp.data, "val")))
        size = len(exp.score(probe, batch))  # the score checks the batch; its length is the batch's items
        cost_model = CostModel(layer_profile(probe, run=lambda m: exp.score(m, batch), batch_size=size))
    space = _Space(groups=tuple(groups), dims=dims, bits=tuple(bits), names=names, switch=switch_points,
                   epochs=epochs, parameters=parameters, outside=total - sum(parameters.values()),
                   widths={b: _width(parse_format(n)) for b, n in names.items()}, per_role=per_role,
                   cost_kind=cost, layers={g: tuple(m) for g, m in groups.items()}, cost_model=cost_model)

    described = exp.describe()
    # what a worker must share to join: the model (class, how it was built, its weights when trained), the data
    # (what its loaders yield), the score, and the search settings
    config = {
        "version": 2, "model": exp.model_name, "model_class": qualified_name(type(probe)),
        "source": json.loads(json.dumps(dict(exp.source), default=str)),
        "checkpoint": weights_digest(exp.model) if exp.trained else None, "parameters": parameters,
        "family": family, "bits": bits, "roles": list(roles), "level": level, "rounding": rounding,
        "seeds": list(seeds), "epochs": None if exp.trained else epochs, "tolerance": float(tolerance),
        "data": described["data_class"], "score": exp.score.name,
        "val_items": f"{loaders['val'].n_items}:{loaders['val'].digest}",
        "test_items": f"{loaders['test'].n_items}:{loaders['test'].digest}",
    }
    if switch_points:
        config["switch"] = list(switch_points)  # absent in a rounding search: its studies keep their settings
    if per_role:
        config["per_role"] = True  # (absent by default, as "switch": earlier studies keep their settings)
    if cost != "bits":
        config["cost"] = cost
    if relative:
        config["relative"] = True
    study_name = study_name or "-".join([config["model"], family.replace("{", "").replace("}", ""), level, rounding]
                                        + (["switch"] if switch_points else []) + (["roles"] if per_role else [])
                                        + ([cost] if cost != "bits" else []))
    opened = storage if storage is None or not isinstance(storage, str) else open_storage(
        storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    study = optuna.create_study(storage=opened, study_name=study_name, direction="minimize", sampler=sampler,
                                load_if_exists=True)
    mine = json.loads(json.dumps(config))
    if study.user_attrs.get(CONFIG_KEY) is None:
        study.set_user_attr(CONFIG_KEY, config)
    # read back: of two workers creating the study at once with different settings, the one overwritten stops
    stored = study.user_attrs.get(CONFIG_KEY)
    if stored != mine:
        keys = [*mine, *(k for k in stored if k not in mine)]
        diff = ", ".join(f"{k}: study {stored.get(k)!r}, this run {mine.get(k)!r}" for k in keys
                         if stored.get(k) != mine.get(k))
        raise BoundfinderError(f"study {study_name!r} in {_storage_label(storage)} "
                               f"was created with other settings ({diff}); use the same settings to join it, or "
                               "another study name.")
    widest_key = space.key(*space.widest)
    live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)

    def is_widest(params: dict[str, Any]) -> bool:
        parsed = space.parse(params or {})
        return parsed is not None and space.key(*parsed) == widest_key

    if n_trials and not any(is_widest(t.params) or is_widest(t.system_attrs.get("fixed_params"))
                            for t in study.get_trials(deepcopy=False, states=live)):
        # the top of the certification chain: measured first
        study.enqueue_trial(space.params(*space.widest), user_attrs={"origin": "widest"})

    models = trained(exp, seeds, epochs)
    val = _measurer(space, exp, models, seeds, "val", level, rounding, roles)
    if relative and not val.baseline.mean() > 0:
        raise BoundfinderError(
            f"a relative tolerance needs a full-precision mean {exp.score.metric} > 0 on the validation items, but "
            f"it is {val.baseline.mean():.6g}; give an absolute tolerance in the metric's units.")
    packed = [_pack(b) for b in val.baseline]
    if study.user_attrs.get(BASELINE_KEY) is None:
        study.set_user_attr(BASELINE_KEY, packed)
    elif study.user_attrs[BASELINE_KEY] != packed:
        log.warning("this worker's full-precision models classify the validation items differently from those of "
                    "the study's first worker (training is not reproducible across these workers); each trial's "
                    "drop is measured against the models of the worker that ran it")
    worker = f"{socket.gethostname()}:{os.getpid()}"
    spaced = _bit_choices(bits)
    switch_spaced = _bit_choices(switch_points)

    def objective(trial: optuna.Trial) -> float:
        choice = {}
        for d in space.dims:
            if spaced is not None:
                choice[d] = trial.suggest_int(_param_name(d), spaced[0], spaced[1], step=spaced[2])
            else:
                choice[d] = trial.suggest_categorical(_param_name(d), bits)
        point = None
        if switch_points:
            point = (trial.suggest_int(SWITCH_PARAM, *switch_spaced[:2], step=switch_spaced[2])
                     if switch_spaced is not None else trial.suggest_categorical(SWITCH_PARAM, switch_points))
        key = space.key(choice, point)
        same = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if "val_drop" in t.user_attrs and (c := space.parse(t.params)) is not None and space.key(*c) == key]
        if same:  # a configuration measured before (by any worker) is reused, not measured again
            attrs = same[0].user_attrs
            drop = attrs["val_drop"]
            for k in ("val_drop", "val_correct", "formats", "diverged"):
                if k in attrs:
                    trial.set_user_attr(k, attrs[k])
            trial.set_user_attr("reused_from", same[0].number)
        else:
            formats = space.formats(choice)
            correct = val(_role_formats(formats, roles), point)
            drop = _drop(val.baseline, correct, exp.score, relative)
            trial.set_user_attr("val_drop", drop)
            trial.set_user_attr("val_correct", [_pack(c) for c in correct])
            trial.set_user_attr("formats", formats)
            if val.diverged:
                trial.set_user_attr("diverged", _json_safe(val.diverged))
                log.warning("trial %d (%s): the training loss became NaN or infinite for seed(s) %s; those fits "
                            "stopped there and their models were measured as they were",
                            trial.number, space.candidate(choice, point, math.nan, None).describe(),
                            [d["seed"] for d in val.diverged])
        trial.set_user_attr("worker", worker)
        trial.set_constraint("val_drop", drop - tolerance)
        return space.cost(choice, point)

    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def measure(configs: Sequence[dict[str, int]], origin: str) -> dict[tuple, Candidate]:
        """Measure these configurations (as queued trials, so that every worker sees them), unless measured."""
        point = space.widest[1]
        for _ in range(3):  # another worker may take a queued trial: what is still missing is queued again
            done = _measured(study, space)
            todo = list({space.key(c, point): c for c in configs if space.key(c, point) not in done}.values())
            if not todo or left() == 0.0:
                break
            for c in todo:
                study.enqueue_trial(space.params(c, point), user_attrs={"origin": origin}, skip_if_exists=True)
            study.optimize(objective, n_trials=len(todo), timeout=left(), gc_after_trial=False)
        return _measured(study, space)

    alone_count = len(space.dims) * (len(bits) - 1)
    target = min(n_trials + (alone_count if strategy != "tpe" else 0), space.size())
    if n_trials and strategy != "tpe":
        # the uniform configurations are always candidates (the uniform sweep's levels), then the sensitivity path
        measure(uniform_configurations(space.dims, bits[::-1]), "uniform")
        _path_phase(space, measure, tolerance)

    def enough(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if len(_measured(study, space)) >= target:
            study_.stop()

    missing = target - len(_measured(study, space))
    if missing > 0 and strategy != "path" and left() != 0.0:
        # Proposals measured before are reused at no cost, but the sampler may keep making them in a small
        # space: a worker starts at most a few times as many trials as configurations are missing.
        study.optimize(objective, n_trials=4 * missing + 8, timeout=left(), callbacks=[enough],
                       gc_after_trial=False)
    measured = _measured(study, space)
    if not confirm:
        return dataclasses.replace(
            _result(study, study_name, storage, family, space, measured, [], None, None,
                    "not certified (confirm=False)", confirm_seeds, exp, relative), strategy=strategy,
            claim_kind=claim)
    if claim == "model":  # the search's own models, on the test items they were not chosen with
        test = Rounded(exp, models, "test", level, rounding, roles)
    else:
        confirm_models = trained(exp, confirm_seeds, epochs)
        test = _measurer(space, exp, confirm_models, confirm_seeds, "test", level, rounding, roles)
    front = _candidates(measured, space, tolerance)
    rows, failed = [], []
    for c in front:
        rows.append(test(_role_formats(c.formats, roles), c.switch))
        failed.append(tuple(d["seed"] for d in test.diverged))
        if test.diverged:
            log.warning("certifying %s: the training loss became NaN or infinite for confirm seed(s) %s; those "
                        "models were measured as they were", c.describe(), list(failed[-1]))
    est, chosen = certify(front, np.stack(rows), test.baseline, tolerance=tolerance, confidence=confidence,
                          procedure=procedure, fixed_models=claim == "model", metric=exp.score.metric,
                          higher_is_better=exp.score.higher_is_better, relative=relative)
    result = _result(study, study_name, storage, family, space, measured, front, est, chosen, est.reason,
                     confirm_seeds, exp, relative)
    return dataclasses.replace(result, confirm_diverged=tuple(failed) if any(failed) else (), procedure=procedure,
                               strategy=strategy, claim_kind=claim, claim=_claim_text(exp, claim, seeds, confirm_seeds),
                               baseline_warning=None if exp.score.continuous else baseline_warning(
                                   exp, "test", test.baseline, seeds=confirm_seeds or seeds),
                               test_correct=np.stack(rows), test_baseline=test.baseline)


def _path_phase(space: _Space, measure: Callable, tolerance: float) -> None:
    """The sensitivity-guided candidates (AIMET's AMP order): each dimension alone at each narrower width, the
    others at the widest; then the greedy path that lowers, step by step, the dimension saving the most cost per
    unit of validation drop, binary-searched for its last point within the tolerance on validation items."""
    widest = space.widest[0]
    top = space.bits[-1]
    alone_configs = {(d, b): {**widest, d: b} for d in space.dims for b in space.bits[:-1]}
    measured = measure([widest, *alone_configs.values()], "sensitivity")
    point = space.widest[1]
    drops: dict[str, dict[int, float]] = {}
    for d in space.dims:
        drops[d] = {top: measured[space.key(widest, point)].val_drop}
        for b in space.bits[:-1]:
            got = measured.get(space.key(alone_configs[d, b], point))
            if got is not None:  # (a timeout may leave some unmeasured: the path skips them)
                drops[d][b] = got.val_drop
    path = sensitivity_path(drops, lambda c: space.cost(c, None))

    def feasible(config: dict[str, int]) -> bool:
        got = measure([config], "path").get(space.key(config, point))
        return got is not None and got.val_drop <= tolerance

    search_path(path, feasible)


def _strategy_claim(exp: Experiment, strategy: str | None, claim: str | None,
                    switch_points: tuple[int, ...]) -> tuple[str, str]:
    """The search's strategy and claim, their defaults and what excludes what."""
    if strategy is None:
        strategy = "tpe" if switch_points else "path+tpe"
    if strategy not in STRATEGIES:
        raise BoundfinderError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}.")
    if switch_points and strategy != "tpe":
        raise BoundfinderError(f"strategy {strategy!r} measures each layer group alone by rounding trained models; a "
                               "switching search trains a model per configuration: use strategy 'tpe'.")
    if claim is None:
        claim = "training" if switch_points else "model"
    if claim not in CLAIMS:
        raise BoundfinderError(f"claim must be one of {', '.join(CLAIMS)}, got {claim!r}.")
    if claim == "model" and switch_points:
        raise BoundfinderError("a switching search certifies a training recipe (models trained under each "
                               "candidate): its claim is 'training' (--claim training), not 'model'.")
    if claim == "training" and exp.trained:
        raise BoundfinderError(exp.needs_training("claim 'training' (models trained afresh from seeds)"))
    return strategy, claim


def _measurer(space: _Space, exp: Experiment, models, seeds, split: str, level, rounding, roles):
    """How a configuration is measured on one split: rounding the trained models, or training with a switch."""
    if space.switch:
        return Switched(exp, seeds, space.epochs, models, split, level, rounding, roles)
    return Rounded(exp, models, split, level, rounding, roles)


def _measured(study, space: _Space) -> dict[tuple, Candidate]:
    """Every configuration a complete trial measured, keyed by ``space.key``."""
    import optuna

    seen: dict[tuple, Candidate] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        parsed = space.parse(t.params)
        if "val_drop" not in t.user_attrs or parsed is None:
            continue  # a trial of another search space (cannot happen once the settings check passed)
        key = space.key(*parsed)
        if key not in seen:
            seen[key] = dataclasses.replace(
                space.candidate(*parsed, val_drop=float(t.user_attrs["val_drop"]), trial=t.number,
                                origin=str(t.user_attrs.get("origin", "sampler"))),
                diverged_seeds=tuple(int(d["seed"]) for d in t.user_attrs.get("diverged", ())))
    return seen


def _candidates(measured: dict[tuple, Candidate], space: _Space, tolerance: float) -> list[Candidate]:
    """What the certification tests, cheapest first: every uniform configuration measured (the uniform sweep's
    levels, feasible on validation or not) and the validation Pareto front, topped by the widest configuration."""
    front = {space.key(c.bits, c.switch): c for c in _front(measured, tolerance)}
    if not space.switch:
        uniform = {k: c for k, c in measured.items() if c.uniform}
        # A mixed configuration dearer than a uniform one that validation puts well inside the tolerance (at most
        # half of it) would hardly be chosen over it, but tested first it could stop the chain of the cheaper
        # mixed ones (validation evidence only: the test items play no part in this choice).
        confident = [c.cost for c in uniform.values() if c.val_drop <= tolerance / 2]
        if confident:
            front = {k: c for k, c in front.items() if c.cost < min(confident)}
        front |= uniform
    choice, point = space.widest
    top = space.key(choice, point)
    if top not in front:
        front[top] = measured.get(top) or space.candidate(choice, point, math.nan, None, origin="widest")
    return sorted(front.values(), key=lambda c: (c.cost, c.val_drop if c.val_drop == c.val_drop else -1.0))


def _claim_text(exp: Experiment, claim: str, seeds, confirm_seeds) -> str:
    """What the certification's confidence statement covers."""
    if claim == "training" or exp.trained:
        return exp.claim(confirm_seeds)
    return (f"the {len(seeds)} trained {exp.model_name} model{'s' if len(seeds) != 1 else ''} of seeds "
            f"{list(seeds)} themselves{' (the drop averaged over them)' if len(seeds) != 1 else ''}, over the "
            "distribution the test items were drawn from (not models trained afresh: --claim training)")


def _front(measured: dict[tuple, Candidate], tolerance: float) -> list[Candidate]:
    """The feasible configurations' Pareto front on (cost, validation drop), cheapest first."""
    front: list[Candidate] = []
    best = math.inf
    for cand in sorted(measured.values(), key=lambda c: (c.cost, c.val_drop)):
        if cand.val_drop <= tolerance and cand.val_drop < best:
            front.append(cand)
            best = cand.val_drop
    return front


def _result(study, study_name, storage, family, space: _Space, measured, candidates, confirmation, chosen, reason,
            confirm_seeds, exp: Experiment, relative: bool = False) -> SearchResult:
    import optuna

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return SearchResult(study_name=study_name, storage=_storage_label(storage), family=family, groups=space.groups,
                        parameters=space.parameters, n_complete=states.count(optuna.trial.TrialState.COMPLETE),
                        n_failed=states.count(optuna.trial.TrialState.FAIL),
                        n_configurations=len(measured), candidates=tuple(candidates),
                        confirmation=confirmation, chosen=chosen, reason=reason, confirm_seeds=tuple(confirm_seeds),
                        switch_points=space.switch, epochs=space.epochs if space.switch else None,
                        configurations=tuple(sorted(measured.values(), key=lambda c: (c.cost, c.val_drop))),
                        experiment=exp.describe(), claim=exp.claim(confirm_seeds), cost_kind=space.cost_kind,
                        full_cost=space._static_cost(None), per_role=space.per_role, metric=exp.score.metric,
                        higher_is_better=exp.score.higher_is_better, relative=relative,
                        continuous=exp.score.continuous)


def certify(candidates: Sequence[Candidate], correct: np.ndarray, baseline: np.ndarray, *, tolerance: float,
            confidence: float, procedure: str = "graph", fixed_models: bool = False, metric: str | None = None,
            higher_is_better: bool = True, relative: bool = False) -> tuple[BoundEstimate, Candidate | None]:
    """Certify ``candidates`` (cheapest first) on test items with a multiple-testing ``procedure``.

    ``correct[k]``: per-item results of ``candidates[k]`` on items (and models) the candidates were *not* chosen
    with, shape (S, N) or (N,); ``baseline``: the full-precision models on the same items. ``procedure``: one of
    :data:`boundfinder.search.certify.PROCEDURES`; ``"graph"`` (the default) tests the uniform candidates as the
    uniform sweep's fixed sequence and the others as a second chain, ``"fixed_cost"`` is the fixed sequence from
    the most expensive down (see ``search/certify.py``); every one keeps the family-wise error <= 1 - confidence.
    ``fixed_models``: the S models are the claim (``claim="model"``), not a sample of trainings: the drop
    averaged over those models, with the items as the random unit (``search/certify.py``'s ``model_p_values``
    and ``model_bounds``); otherwise several seeds are a sample of trainings (the crossed seeds x items bound).
    Continuous per-item scores (floats: a loss, an error; ``metric`` names it, ``higher_is_better`` its
    direction, ``relative`` a tolerance that is a fraction of the baseline mean) are certified on the drop in the
    metric's direction with the ``studentized`` bounds of :func:`~boundfinder.bounds.estimate_bound` and the
    p-values inverting them (``search/certify.py``'s ``continuous_p_values``); with ``fixed_models`` each item's
    scores are averaged over the models first (the items the random unit).
    Returns the estimate (its levels are the candidates' ranks with their test
    drops and bounds, ``declared_safe`` as the procedure decided; its reason speaks of candidates) and the
    cheapest candidate declared safe, or None.
    """
    from boundfinder.search.certify import PROCEDURES, declared_safe, drop_p_values, model_bounds, model_p_values

    if procedure not in PROCEDURES:
        raise BoundfinderError(f"procedure must be one of {', '.join(PROCEDURES)}, got {procedure!r}.")
    correct = np.asarray(correct)
    baseline = np.asarray(baseline)
    if correct.dtype != bool:
        return _certify_continuous(candidates, correct, baseline, tolerance=tolerance, confidence=confidence,
                                   procedure=procedure, fixed_models=fixed_models, metric=metric or "score",
                                   higher_is_better=higher_is_better, relative=relative)
    measured = correct
    many = fixed_models and correct.ndim == 3 and correct.shape[1] > 1
    if correct.ndim == 3 and correct.shape[1] == 1:
        correct, baseline = correct[:, 0], baseline.reshape(-1)
    pad = len(candidates) == 1
    # A fixed sequence of one configuration is that configuration's own test; estimate_bound wants two levels,
    # and the same measurement twice leaves its bound and decision unchanged (level 0 is kept).
    ranks = np.arange(2 if pad else len(candidates))

    def bound(rows: np.ndarray, base: np.ndarray) -> BoundEstimate:
        rows = np.concatenate([rows, rows]) if pad else rows
        return estimate_bound(ranks, rows, base, tolerance=tolerance, confidence=confidence, fit_curve=False)

    if many:
        # the models are fixed and the items random: bounds on the drop averaged over the models
        # (search/certify.py's model_bounds); each model's own bound gives the noise floor
        ests = [bound(correct[:, s], baseline[s]) for s in range(correct.shape[1])]
        est = ests[0]
        lower, upper = model_bounds(measured, baseline, 1.0 - confidence)
        levels = tuple(dataclasses.replace(
            lv, accuracy=float(np.mean([e.levels[k].accuracy for e in ests])),
            drop=float(np.mean([e.levels[k].drop for e in ests])), lower=float(lower[k]), upper=float(upper[k]),
            noise_floor=float(np.mean([e.levels[k].noise_floor for e in ests])))
            for k, lv in enumerate(est.levels[:len(candidates)]))
        est = dataclasses.replace(est, n_seeds=correct.shape[1], baseline_accuracy=float(baseline.mean()),
                                  min_detectable_drop=min(lv.noise_floor for lv in levels))
    else:
        est = bound(correct, baseline)
        levels = est.levels[:len(candidates)]
    what = "and so is every more expensive candidate"
    if procedure != "fixed_cost" or many:
        p = model_p_values(measured, baseline, tolerance) if many else drop_p_values(measured, baseline, tolerance)
        val = [c.val_drop if c.val_drop == c.val_drop else -np.inf for c in candidates]  # NaN: never measured
        safe = declared_safe(procedure, p, [c.cost for c in candidates], val, 1.0 - confidence,
                             uniform=[c.uniform for c in candidates])
        levels = tuple(dataclasses.replace(lv, declared_safe=bool(ok)) for lv, ok in zip(levels, safe, strict=True))
        first = int(np.argmax(safe)) if safe.any() else None
        # the fixed sequence's status would contradict this procedure's decision where the two differ
        status = "ok" if first is not None else ("undetermined" if est.status == "undetermined" else "above_range")
        est = dataclasses.replace(est, bits=first, status=status, ci=(None, None) if many else est.ci)
        if first is not None:
            what = (f"by the {procedure} procedure (test p-value {p[first]:.3g}"
                    + (f", the drop averaged over the {correct.shape[1]} models)" if many else ")"))
        else:
            what = ""
    chosen = candidates[est.bits] if est.bits is not None else None
    if chosen is not None:
        reason = (f"{chosen.describe()} is the cheapest configuration declared safe: test drop "
                  f"{levels[est.bits].drop:.4g}, upper bound {levels[est.bits].upper:.4g} <= tolerance "
                  f"{tolerance:g} at {confidence:.0%} confidence, {what}")
    else:
        top = levels[len(candidates) - 1]
        reason = (f"not even the most expensive candidate ({candidates[-1].describe()}) is certified on the test "
                  f"items: drop {top.drop:.4g}, upper bound {top.upper:.4g} > tolerance {tolerance:g}; "
                  + ("more test items or seeds are needed" if est.status == "undetermined"
                     else "search wider bit widths"))
        if procedure != "fixed_cost" and levels[len(candidates) - 1].upper <= tolerance:
            reason = (f"no candidate is certified by the {procedure} procedure at {confidence:.0%} confidence; "
                      "more test items or seeds are needed, or search wider bit widths")
    if not many and est.n_seeds > 1 and chosen is not None:
        reason += _seeds_note(0, est.n_seeds)
    # the estimate's own reason speaks of bit levels; here its levels are candidate ranks
    return dataclasses.replace(est, levels=levels, reason=reason), chosen


def _certify_continuous(candidates: Sequence[Candidate], scores: np.ndarray, baseline: np.ndarray, *,
                        tolerance: float, confidence: float, procedure: str, fixed_models: bool, metric: str,
                        higher_is_better: bool, relative: bool) -> tuple[BoundEstimate, Candidate | None]:
    """:func:`certify` for continuous per-item scores: every procedure runs on the p-values of
    ``continuous_p_values``, which invert the bounds shown (the fixed sequence's decision included)."""
    from boundfinder.search.certify import continuous_p_values, declared_safe

    scores = scores.astype(float)
    if scores.ndim == 2:
        scores = scores[:, None, :]
    baseline = baseline.astype(float).reshape(scores.shape[1:])
    s = scores.shape[1]
    many = fixed_models and s > 1
    # the models fixed: each item's mean over them is one paired observation (S = 1 in the estimate's terms)
    rows, base = (scores.mean(axis=1), baseline.mean(axis=0)) if many else (scores, baseline)
    if rows.ndim == 3 and rows.shape[1] == 1:
        rows, base = rows[:, 0], base[0]
    pad = len(candidates) == 1
    ranks = np.arange(2 if pad else len(candidates))
    est = estimate_bound(ranks, np.concatenate([rows, rows]) if pad else rows, base, tolerance=tolerance,
                         relative=relative, higher_is_better=higher_is_better, metric=metric,
                         confidence=confidence, fit_curve=False)
    p = continuous_p_values(scores, baseline, tolerance, higher_is_better=higher_is_better, relative=relative,
                            fixed_models=fixed_models)
    val = [c.val_drop if c.val_drop == c.val_drop else -np.inf for c in candidates]  # NaN: never measured
    safe = declared_safe(procedure, p, [c.cost for c in candidates], val, 1.0 - confidence,
                         uniform=[c.uniform for c in candidates])
    levels = tuple(dataclasses.replace(lv, declared_safe=bool(ok))
                   for lv, ok in zip(est.levels[:len(candidates)], safe, strict=True))
    first = int(np.argmax(safe)) if safe.any() else None
    status = "ok" if first is not None else ("undetermined" if est.status == "undetermined" else "above_range")
    est = dataclasses.replace(est, bits=first, status=status, n_seeds=s, ci=(None, None),
                              min_detectable_drop=min(lv.noise_floor for lv in levels))
    what = (("relative " if relative else "") + f"{metric} {'drop' if higher_is_better else 'increase'}")
    chosen = candidates[first] if first is not None else None
    if chosen is not None:
        lv = levels[first]
        reason = (f"{chosen.describe()} is the cheapest configuration declared safe: test {what} {lv.drop:.4g}, "
                  f"upper bound {lv.upper:.4g} <= tolerance {tolerance:g} at {confidence:.0%} confidence, by the "
                  f"{procedure} procedure (test p-value {p[first]:.3g}"
                  + (f", the {what} averaged over the {s} models)" if many else ")"))
        if not many:
            reason += _seeds_note(0, s)
    else:
        top = levels[-1]
        reason = (f"not even the most expensive candidate ({candidates[-1].describe()}) is certified on the test "
                  f"items: {what} {top.drop:.4g}, upper bound {top.upper:.4g} > tolerance {tolerance:g}; "
                  + ("more test items or seeds are needed" if est.status == "undetermined"
                     else "search wider bit widths"))
        if top.upper <= tolerance:
            reason = (f"no candidate is certified by the {procedure} procedure at {confidence:.0%} confidence; "
                      "more test items or seeds are needed, or search wider bit widths")
    return dataclasses.replace(est, levels=levels, reason=reason), chosen
