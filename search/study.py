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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from boundfinder.bounds import BoundEstimate, estimate_bound
from boundfinder.errors import BoundfinderError
from boundfinder.experiment import Experiment, Score, as_experiment, has_loader, qualified_name, weights_digest
from boundfinder.formats import parse_format
from boundfinder.policy import ROLES, PrecisionPolicy, Rule, layer_modules
from boundfinder.search.measure import Rounded, Switched, trained
from boundfinder.search.storage import mask_url, open_storage
from boundfinder.search.sweep import INFERENCE_ROLES, _json_safe, _seeds_of, expand_family

__all__ = ["Candidate", "SearchResult", "certify", "precision_search"]

log = logging.getLogger(__name__)

#: Study user attribute holding the search settings; a worker with other settings is refused.
CONFIG_KEY = "boundfinder.search"
#: Study user attribute: which validation items the full-precision models get right (packed, one per seed).
BASELINE_KEY = "boundfinder.val_baseline"
_FULL_WIDTH = 32  # float32: what a parameter outside the searched groups costs
#: Trial parameter of a switching search: the epoch from which training goes on at full precision.
SWITCH_PARAM = "switch_epoch"


def _param_name(group: str) -> str:
    return f"bits[{group}]"


def _pack(correct: np.ndarray) -> str:
    """Per-item booleans as base64 of their packed bits (a few hundred bytes for thousands of items)."""
    return base64.b64encode(np.packbits(correct.astype(bool)).tobytes()).decode("ascii")


def _unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


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

    def describe(self) -> str:
        layers = " ".join(f"{g}={f}" for g, f in self.formats.items())
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
                "diverged_seeds": list(self.diverged_seeds)}


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

    @property
    def cost_label(self) -> str:
        """What a candidate's cost measures."""
        return ("mean bits per parameter over training" if self.switch_points else "mean bits per parameter")

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
        }

    def report(self) -> str:
        """A plain-text table of the candidates and the verdict."""
        conf = self.confirmation
        lines = [f"study {self.study_name!r} in {self.storage}: {self.n_configurations} configurations measured "
                 f"({self.n_complete} trials complete, {self.n_failed} failed); {len(self.groups)} layer groups, "
                 f"family {self.family}"]
        if self.switch_points:
            lines.append(f"training: {self.epochs} epochs, each configuration's formats before its switch epoch "
                         f"(one of {list(self.switch_points)}), fp32 from it on; cost: {self.cost_label}")
        if conf is not None:
            tested = (f"{conf.n_items} test items x {conf.n_seeds} fresh seed{'s' if conf.n_seeds != 1 else ''} "
                      f"{list(self.confirm_seeds)}" if self.confirm_seeds else
                      f"{conf.n_items} test items of the given trained model")
            how = ("from the most expensive down" if self.procedure == "fixed_cost"
                   else f"by the {self.procedure} procedure")
            lines.append(f"candidates: the validation Pareto front, tested on {tested} {how} "
                         f"({conf.method}, "
                         f"{conf.confidence:.0%} confidence, tolerance {conf.tolerance:g})")
            lines.append(f"{'bits/param':>10} {'val drop':>9} {'test drop':>9} {'upper':>8}  {'safe':<4}  "
                         "configuration")
            test_diverged = self.confirm_diverged or ((),) * len(self.candidates)
            for cand, lv, failed in reversed(list(zip(self.candidates, conf.levels, test_diverged, strict=True))):
                seeds = sorted({*cand.diverged_seeds, *failed})
                mark = f"  [training diverged: seeds {seeds}]" if seeds else ""
                lines.append(f"{cand.cost:10.3f} {cand.val_drop:9.4f} {lv.drop:9.4f} {lv.upper:8.4f}  "
                             f"{'yes' if lv.declared_safe else 'no':<4}  {cand.describe()}{mark}")
        if self.chosen is not None:
            ratio = _FULL_WIDTH / self.chosen.cost
            lines.append(f"chosen: {self.chosen.describe()}  ({self.chosen.cost:.3f} {self.cost_label}"
                         + (f", {ratio:.2f}x fewer bits than float32)" if ratio > 1 else ")"))
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
    """The search space: a bit width per layer group, and a switch epoch in a switching search."""

    groups: tuple[str, ...]
    bits: tuple[int, ...]
    names: dict[int, str]  # bit width -> format name
    switch: tuple[int, ...]  # () for a rounding search
    epochs: int
    parameters: dict[str, int]
    outside: int  # parameters outside the searched groups, counted at full width
    widths: dict[int, float]  # bit width -> storage bits per element

    @property
    def widest(self) -> tuple[dict[str, int], int | None]:
        """The most expensive configuration: the top of the certification chain."""
        return dict.fromkeys(self.groups, self.bits[-1]), (min(self.switch) if self.switch else None)

    def params(self, choice: dict[str, int], switch: int | None) -> dict[str, int]:
        out = {_param_name(g): choice[g] for g in self.groups}
        return out if switch is None else out | {SWITCH_PARAM: switch}

    def parse(self, params: dict[str, Any]) -> tuple[dict[str, int], int | None] | None:
        """A trial's configuration, or None when its parameters are not of this space."""
        choice = {g: int(params[_param_name(g)]) for g in self.groups if _param_name(g) in params}
        if len(choice) != len(self.groups) or (SWITCH_PARAM in params) != bool(self.switch):
            return None
        return choice, (int(params[SWITCH_PARAM]) if self.switch else None)

    def key(self, choice: dict[str, int], switch: int | None) -> tuple:
        """Configurations that train and measure alike share a key: with switch epoch 0 the formats never act."""
        if switch == 0:
            choice = self.widest[0]
        return (*(choice[g] for g in self.groups), switch)

    def cost(self, choice: dict[str, int], switch: int | None) -> float:
        """Mean bits per parameter; in a switching search averaged over the training epochs (fp32 after the
        switch)."""
        total = sum(self.parameters.values()) + self.outside
        low = (sum(self.parameters[g] * self.widths[b] for g, b in choice.items())
               + self.outside * _FULL_WIDTH) / (total or 1)
        if switch is None:
            return low
        return (switch * low + (self.epochs - switch) * _FULL_WIDTH) / self.epochs

    def size(self) -> int:
        per_switch = len(self.bits) ** len(self.groups)
        if not self.switch:
            return per_switch
        return per_switch * len([p for p in self.switch if p]) + (0 in self.switch)

    def candidate(self, choice: dict[str, int], switch: int | None, val_drop: float,
                  trial: int | None) -> Candidate:
        if switch == 0:
            choice = self.widest[0]
        return Candidate(bits=dict(choice), formats={g: self.names[b] for g, b in choice.items()},
                         cost=self.cost(choice, switch), val_drop=val_drop, trial=trial, switch=switch,
                         epochs=None if switch is None else self.epochs)


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
    tolerance: float = 0.01,
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
    procedure: str = "fixed_cost",
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

    ``confirm``: certify the result on the test items (a worker that only adds trials passes False).
    ``procedure``: how the candidates are certified (:func:`certify`; ``"fixed_cost"``, the fixed sequence, by
    default; ``"fallback_widest"`` has more power where a marginal candidate sits among cheaper safe ones).
    ``confirm_seeds``: the seeds of the models trained afresh for the certification (default: as many as
    ``seeds``, numbered after the largest). Models that took part in choosing the candidates would carry
    their own robustness to the chosen configurations into the test measurement; fresh ones do not.

    Returns a :class:`SearchResult`; ``n_trials=0`` only confirms what the storage already holds.
    """
    import optuna

    from boundfinder.search.certify import PROCEDURES

    if procedure not in PROCEDURES:
        raise BoundfinderError(f"procedure must be one of {', '.join(PROCEDURES)}, got {procedure!r}.")
    exp = as_experiment(model, datamodule, score=score, trainer=trainer, model_name=model_name)
    bits = sorted({int(b) for b in bits})
    if len(bits) < 2:
        raise BoundfinderError(f"a search needs at least 2 distinct bit widths, but got bits={bits}.")
    names = dict(zip(bits, expand_family(family, bits), strict=True))
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise BoundfinderError(f"`epochs >= 1` must hold (an int), but got epochs={epochs!r}.")
    epochs = int(epochs)
    switch_points = _switch_points(switch, epochs)
    if switch_points and exp.trained:
        raise BoundfinderError(exp.needs_training("a switching search (switch=, --switch)"))
    roles = tuple(roles) if roles is not None else (ROLES if switch_points else INFERENCE_ROLES)
    for r in roles:
        if r not in ROLES:
            raise BoundfinderError(f"unknown role {r!r}; valid roles are {ROLES}.")
    if not 0 < tolerance < 1 or not 0.5 <= confidence < 1:
        raise BoundfinderError(f"`0 < tolerance < 1` and `0.5 <= confidence < 1` must hold, but got "
                               f"tolerance={tolerance!r}, confidence={confidence!r}.")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 0:
        raise BoundfinderError(f"`n_trials >= 0` must hold (an int), but got n_trials={n_trials!r}.")
    seeds = _seeds_of(exp, seeds, "a search")
    if exp.trained:
        if confirm_seeds is not None:
            raise BoundfinderError(exp.needs_training(f"confirm_seeds={list(confirm_seeds)}"))
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
    if confirm and not exp.trained and (not confirm_seeds or set(confirm_seeds) & set(seeds)):
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
    space = _Space(groups=tuple(groups), bits=tuple(bits), names=names, switch=switch_points, epochs=epochs,
                   parameters=parameters, outside=total - sum(parameters.values()),
                   widths={b: _width(parse_format(n)) for b, n in names.items()})

    loaders = exp.prepare(train=not exp.trained, splits=("val", "test"))
    described = exp.describe()
    # what a worker must share to join: the model (class, how it was built, its weights when trained), the data
    # (what its loaders yield), the score, and the search settings
    config = {
        "version": 2, "model": exp.model_name, "model_class": qualified_name(type(probe)),
        "source": json.loads(json.dumps(dict(exp.source), default=str)),
        "checkpoint": weights_digest(exp.model) if exp.trained else None, "parameters": parameters,
        "family": family, "bits": bits, "roles": list(roles), "level": level, "rounding": rounding,
        "seeds": list(seeds), "epochs": None if exp.trained else epochs, "tolerance": tolerance,
        "data": described["data_class"], "score": exp.score.name,
        "val_items": f"{loaders['val'].n_items}:{loaders['val'].digest}",
        "test_items": f"{loaders['test'].n_items}:{loaders['test'].digest}",
    }
    if switch_points:
        config["switch"] = list(switch_points)  # absent in a rounding search: its studies keep their settings
    study_name = study_name or "-".join([config["model"], family.replace("{", "").replace("}", ""), level, rounding]
                                        + (["switch"] if switch_points else []))
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
        study.enqueue_trial(space.params(*space.widest))  # the top of the certification chain: measured first

    models = trained(exp, seeds, epochs)
    val = _measurer(space, exp, models, seeds, "val", level, rounding, roles)
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
        for g in space.groups:
            if spaced is not None:
                choice[g] = trial.suggest_int(_param_name(g), spaced[0], spaced[1], step=spaced[2])
            else:
                choice[g] = trial.suggest_categorical(_param_name(g), bits)
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
            formats = {g: names[b] for g, b in choice.items()}
            correct = val(formats, point)
            drop = float(val.baseline.mean() - correct.mean())
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

    target = min(n_trials, space.size())

    def enough(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if len(_measured(study, space)) >= target:
            study_.stop()

    missing = target - len(_measured(study, space))
    if missing > 0:
        # Proposals measured before are reused at no cost, but the sampler may keep making them in a small
        # space: a worker starts at most a few times as many trials as configurations are missing.
        study.optimize(objective, n_trials=4 * missing + 8, timeout=timeout, callbacks=[enough],
                       gc_after_trial=False)
    measured = _measured(study, space)
    if not confirm:
        return _result(study, study_name, storage, family, space, measured, [], None, None,
                       "not certified (confirm=False)", confirm_seeds, exp)
    confirm_models = trained(exp, confirm_seeds, epochs)
    test = _measurer(space, exp, confirm_models, confirm_seeds, "test", level, rounding, roles)
    front = _front(measured, tolerance)
    choice, point = space.widest
    if not front or space.key(front[-1].bits, front[-1].switch) != space.key(choice, point):
        front.append(measured.get(space.key(choice, point)) or space.candidate(choice, point, math.nan, None))
    rows, failed = [], []
    for c in front:
        rows.append(test(c.formats, c.switch))
        failed.append(tuple(d["seed"] for d in test.diverged))
        if test.diverged:
            log.warning("certifying %s: the training loss became NaN or infinite for confirm seed(s) %s; those "
                        "models were measured as they were", c.describe(), list(failed[-1]))
    est, chosen = certify(front, np.stack(rows), test.baseline, tolerance=tolerance, confidence=confidence,
                          procedure=procedure)
    result = _result(study, study_name, storage, family, space, measured, front, est, chosen, est.reason,
                     confirm_seeds, exp)
    return dataclasses.replace(result, confirm_diverged=tuple(failed) if any(failed) else (), procedure=procedure)


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
                space.candidate(*parsed, val_drop=float(t.user_attrs["val_drop"]), trial=t.number),
                diverged_seeds=tuple(int(d["seed"]) for d in t.user_attrs.get("diverged", ())))
    return seen


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
            confirm_seeds, exp: Experiment) -> SearchResult:
    import optuna

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return SearchResult(study_name=study_name, storage=_storage_label(storage), family=family, groups=space.groups,
                        parameters=space.parameters, n_complete=states.count(optuna.trial.TrialState.COMPLETE),
                        n_failed=states.count(optuna.trial.TrialState.FAIL),
                        n_configurations=len(measured), candidates=tuple(candidates),
                        confirmation=confirmation, chosen=chosen, reason=reason, confirm_seeds=tuple(confirm_seeds),
                        switch_points=space.switch, epochs=space.epochs if space.switch else None,
                        configurations=tuple(sorted(measured.values(), key=lambda c: (c.cost, c.val_drop))),
                        experiment=exp.describe(), claim=exp.claim(confirm_seeds))


def certify(candidates: Sequence[Candidate], correct: np.ndarray, baseline: np.ndarray, *, tolerance: float,
            confidence: float, procedure: str = "fixed_cost") -> tuple[BoundEstimate, Candidate | None]:
    """Certify ``candidates`` (cheapest first) on test items with a multiple-testing ``procedure``.

    ``correct[k]``: per-item results of ``candidates[k]`` on items (and models) the candidates were *not* chosen
    with, shape (S, N) or (N,); ``baseline``: the full-precision models on the same items. ``procedure``: one of
    :data:`boundfinder.search.certify.PROCEDURES`; ``"fixed_cost"`` is the fixed sequence from the most expensive
    down (the default), the others test each candidate at its share of the level (see
    ``search/certify.py``); every one keeps the family-wise error <= 1 - confidence. Returns the estimate (its
    levels are the candidates' ranks with their test drops and bounds, ``declared_safe`` as the procedure decided;
    its reason speaks of candidates) and the cheapest candidate declared safe, or None.
    """
    from boundfinder.search.certify import PROCEDURES, declared_safe, drop_p_values

    if procedure not in PROCEDURES:
        raise BoundfinderError(f"procedure must be one of {', '.join(PROCEDURES)}, got {procedure!r}.")
    correct = np.asarray(correct)
    ranks = np.arange(len(candidates))
    measured = correct
    if len(candidates) == 1:
        # A fixed sequence of one configuration is that configuration's own test; estimate_bound wants two
        # levels, and the same measurement twice leaves its bound and decision unchanged (level 0 is kept).
        correct, ranks = np.concatenate([correct, correct]), np.arange(2)
    est = estimate_bound(ranks, correct, baseline, tolerance=tolerance, confidence=confidence, fit_curve=False)
    levels = est.levels[:len(candidates)]
    what = "and so is every more expensive candidate"
    if procedure != "fixed_cost":
        p = drop_p_values(measured, baseline, tolerance)
        val = [c.val_drop if c.val_drop == c.val_drop else -np.inf for c in candidates]  # NaN: never measured
        safe = declared_safe(procedure, p, [c.cost for c in candidates], val, 1.0 - confidence)
        levels = tuple(dataclasses.replace(lv, declared_safe=bool(ok)) for lv, ok in zip(levels, safe, strict=True))
        first = int(np.argmax(safe)) if safe.any() else None
        # the fixed sequence's status would contradict this procedure's decision where the two differ
        status = "ok" if first is not None else ("undetermined" if est.status == "undetermined" else "above_range")
        est = dataclasses.replace(est, bits=first, status=status)
        what = f"by the {procedure} procedure (test p-value {p[first]:.3g})" if first is not None else ""
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
        if procedure != "fixed_cost":
            reason = (f"no candidate is certified by the {procedure} procedure at {confidence:.0%} confidence; "
                      "more test items or seeds are needed, or search wider bit widths")
    # the estimate's own reason speaks of bit levels; here its levels are candidate ranks
    return dataclasses.replace(est, levels=levels, reason=reason), chosen
