"""Where rounding error accumulates in a model, and what emulation costs: the 2017 study's "accumulation error?"
and "# of layers/neurons vs runtime".

* :func:`error_profile`: for each layer, in the order the forward runs them, the relative error of its output
  ``||y_emulated - y_float64|| / ||y_float64||`` per item, against a float64 run of the same weights on the same
  items; for several formats at once, at one emulation level. Per layer and format also the layer's own share
  (*alone*: only that layer rounded, every other layer at float32), and a ``float32`` row (no format: float32 against
  float64), the floor every format is read against.
* :func:`cost_profile`: training-step time (forward, loss, backward, optimizer step) and evaluation time (forward
  without gradients) at each level as a ratio of plain float32 measured side by side in the same rounds, for
  built-in MLPs of growing depth and width (and the LeNet-style CNN of growing channels).

Both return result objects with ``summary()`` (JSON-safe) and ``report()`` (text). ``boundfinder profile`` is the
command line (``boundfinder/profile_cli.py``); ``boundfinder.reports.profile`` draws and logs them.

>>> import torch, torch.nn as nn
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
>>> prof = error_profile(model, [torch.randn(32, 8)], formats=["e8m3"])
>>> prof.layers
('0', '1', '2')
>>> bool(prof.median("e8m3")[0] < 2.0 ** -4) and bool(prof.median("float32").max() < 1e-6)
True
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from boundfinder.emulation import LEVELS, emulate
from boundfinder.errors import BoundfinderError
from boundfinder.experiment import _batch_size, split_batch
from boundfinder.formats import Format, parse_format
from boundfinder.policy import PrecisionPolicy, layer_modules

__all__ = ["COST_KINDS", "DEFAULT_FORMATS", "INFERENCE_ROLES", "CostRow", "CostTable", "ErrorProfile",
           "LayerError", "cost_profile", "error_profile"]

#: the formats profiled when none are given: the 16-bit floats, then the two OCP 8-bit floats
DEFAULT_FORMATS = ("bf16", "fp16", "e4m3fn", "e5m2")
#: the roles an inference profile rounds (as ``boundfinder sweep``): weights, biases, layer inputs and outputs
INFERENCE_ROLES = ("weight", "bias", "input", "activation")
#: the reference row's name: float32 with no format applied (not "fp32": that is a format one may profile too,
#: and must equal this row bit for bit)
REFERENCE = "float32"
#: model families of the cost table: built-in MLPs (depth hidden layers of width units) and the LeNet-style CNN
#: (two conv blocks of width // 2 and width channels, a hidden layer of width units)
COST_KINDS = ("mlp", "cnn")
#: what the output row of a model whose root module is not itself a layer is called
OUTPUT = "(output)"
_QUANTILE = 0.9


def _check_formats(formats: Iterable[str | Format]) -> tuple[str, ...]:
    if isinstance(formats, (str, Format)):
        formats = [formats]
    names, parsed = [], []
    for f in formats:
        parsed.append(parse_format(f) if isinstance(f, str) else f)  # an unknown name: FormatError lists the valid
        names.append(f.strip() if isinstance(f, str) else str(f))  # as given: e8m7 stays e8m7, not bf16
    if REFERENCE in names:
        raise BoundfinderError(f"{REFERENCE!r} is the reference row's name (no format); give the format as 'fp32' "
                               "or 'e8m23'.")
    if not names:
        raise BoundfinderError("an error profile needs at least one format, but got formats=[] (e.g. "
                               f"{list(DEFAULT_FORMATS)}).")
    if len(set(parsed)) != len(parsed):
        raise BoundfinderError(f"formats must be distinct, but got {names} (the same format under two names?).")
    return tuple(names)


def _check_level(level: str) -> str:
    if level not in LEVELS:
        raise BoundfinderError(f"level must be one of {LEVELS}, but got level={level!r}.")
    return level


# -- error profile ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerError:
    """One layer's relative output error under one format (``float32``: no format), over items.

    ``errors``: ``||y - y_f64|| / ||y_f64||`` per item (per batch where the layer's outputs do not lead with the
    batch dimension: ``per == "batch"``) with every layer rounded; ``alone``: the same with only this layer
    rounded (None for ``float32`` and for the model's output row, which has no layer of its own). Infinite where the
    emulated output holds NaN or infinity where the float64 one does not.
    """

    index: int
    layer: str
    module: str
    format: str
    per: str
    errors: np.ndarray
    alone: np.ndarray | None = None

    @property
    def median(self) -> float:
        return float(np.median(self.errors))

    @property
    def p90(self) -> float:
        return _quantile(self.errors)

    @property
    def mean(self) -> float:
        return float(np.mean(self.errors))

    @property
    def max(self) -> float:
        return float(np.max(self.errors))

    @property
    def alone_median(self) -> float | None:
        return None if self.alone is None else float(np.median(self.alone))

    @property
    def alone_p90(self) -> float | None:
        return None if self.alone is None else _quantile(self.alone)

    def summary(self) -> dict[str, Any]:
        """JSON-safe: non-finite values as the strings ``"inf"`` / ``"nan"``."""
        return {"index": self.index, "layer": self.layer, "module": self.module, "format": self.format,
                "per": self.per, "n": int(self.errors.size), "median": _safe(self.median), "p90": _safe(self.p90),
                "mean": _safe(self.mean), "max": _safe(self.max), "alone_median": _safe(self.alone_median),
                "alone_p90": _safe(self.alone_p90)}


def _quantile(values: np.ndarray) -> float:
    """The 90th percentile; infinite where it interpolates towards an infinite error (numpy gives NaN there)."""
    with np.errstate(invalid="ignore"):
        q = float(np.quantile(values, _QUANTILE))
    return math.inf if math.isnan(q) and not np.isnan(values).any() else q


def _safe(v: float | None) -> float | str | None:
    return v if v is None or math.isfinite(v) else str(v)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ErrorProfile:
    """Relative error of every layer's output, in execution order, under each format; see :func:`error_profile`.

    ``layers``: the layer labels in the order the forward ran them (a module called twice appears twice, its
    second call as ``name#2``); ``rows[format]``: one :class:`LayerError` per layer, ``rows["float32"]`` the
    reference (no format).
    """

    formats: tuple[str, ...]
    level: str
    rounding: str
    roles: tuple[str, ...]
    layers: tuple[str, ...]
    modules: tuple[str, ...]
    rows: Mapping[str, tuple[LayerError, ...]]
    n_items: int
    experiment: dict[str, Any] = dataclasses.field(default_factory=dict)

    def median(self, fmt: str, *, alone: bool = False) -> np.ndarray:
        """Median error per layer, in execution order (``alone``: only that layer rounded; NaN where none)."""
        return self._stat(fmt, "alone_median" if alone else "median")

    def p90(self, fmt: str, *, alone: bool = False) -> np.ndarray:
        return self._stat(fmt, "alone_p90" if alone else "p90")

    def _stat(self, fmt: str, name: str) -> np.ndarray:
        if fmt not in self.rows:
            raise BoundfinderError(f"this profile has formats {list(self.rows)}, not {fmt!r}.")
        return np.array([np.nan if (v := getattr(r, name)) is None else v for r in self.rows[fmt]])

    def summary(self) -> dict[str, Any]:
        return {"kind": "error_profile", "formats": list(self.formats), "reference": REFERENCE,
                "level": self.level, "rounding": self.rounding, "roles": list(self.roles), "n_items": self.n_items,
                "layers": list(self.layers), "modules": list(self.modules), "experiment": dict(self.experiment),
                "rows": [r.summary() for fmt in self.rows for r in self.rows[fmt]]}

    def table(self) -> list[str]:
        """One line per layer: the float32 median, then per format the median, 90th percentile and alone median."""
        width = max([len("layer"), *(len(n) for n in self.layers)])
        mwidth = max([len("type"), *(len(m) for m in self.modules)])
        head = f"{'#':>3}  {'layer':<{width}}  {'type':<{mwidth}}  {'float32':>8}"
        sub = f"{'':>3}  {'':<{width}}  {'':<{mwidth}}  {'median':>8}"
        for fmt in self.formats:
            head += f"  | {fmt:<26}"
            sub += f"  | {'median':>8} {'p90':>8} {'alone':>8}"
        lines = [head, sub]
        for i, (name, module) in enumerate(zip(self.layers, self.modules, strict=True)):
            line = f"{i:>3}  {name:<{width}}  {module:<{mwidth}}  {_e(self.rows[REFERENCE][i].median)}"
            for fmt in self.formats:
                r = self.rows[fmt][i]
                line += f"  | {_e(r.median)} {_e(r.p90)} {_e(r.alone_median)}"
            lines.append(line)
        return lines

    def report(self) -> str:
        per_batch = [n for n, r in zip(self.layers, self.rows[REFERENCE], strict=True) if r.per == "batch"]
        lines = [f"relative error of each layer's output against float64 (same weights, same {self.n_items} "
                 f"items), level {self.level}, roles {','.join(self.roles)}, rounding {self.rounding}; median over "
                 "items; alone: only that layer rounded, the rest float32", *self.table()]
        if per_batch:
            lines.append(f"per batch, not per item (outputs not led by the batch dimension): {per_batch}")
        return "\n".join(lines)


def _e(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"{'–':>8}"
    return f"{v:>8.1e}" if math.isfinite(v) else f"{'inf':>8}"


class _Recorder:
    """Forward hooks that copy each layer's floating-point outputs, keyed ``(name, call number)`` in the order the
    forward runs them. Installed after an emulation, so they see its rounded outputs (hooks run in order)."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.calls: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._counts: dict[str, int] = {}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            k = self._counts[name] = self._counts.get(name, 0) + 1
            # clone: an in-place op later in the forward (ReLU(inplace=True)) would change a saved view; clone
            # and detach compute nothing, so the op level's rounding mode leaves them alone
            self.calls[(name, k)] = [t.detach().clone() for t in tree_flatten(output)[0]
                                     if isinstance(t, torch.Tensor) and t.is_floating_point()]

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(x)`` for a bare tensor, ``(x, y, ...)`` or a dict batch (``split_batch``'s keys)."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and len(batch) == 1:
        return model(batch[0])
    return model(split_batch(batch)[0])


def _map_float(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(batch, torch.Tensor):
        return fn(batch) if batch.is_floating_point() else batch
    if isinstance(batch, Mapping):
        return {k: _map_float(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_map_float(v, fn) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_map_float(v, fn) for v in batch)
    return batch


def _take(batch: Any, n: int, k: int) -> Any:
    """The first ``k`` of the ``n`` items of a batch (tensors leading with ``n``)."""
    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v[:k] if v.ndim and v.shape[0] == n else v
        if isinstance(v, Mapping):
            return {key: cut(x) for key, x in v.items()}
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            return type(v)(*(cut(x) for x in v))
        if isinstance(v, (tuple, list)):
            return type(v)(cut(x) for x in v)
        return v

    return cut(batch)


def _relative(outs: list[torch.Tensor], refs: list[torch.Tensor], n: int, where: str) -> tuple[np.ndarray, bool]:
    """Per item ``||out - ref|| / ||ref||`` over every output tensor of a layer (float64); the whole batch as one
    value where a tensor does not lead with the ``n`` items. Returns (errors, per item?)."""
    if len(outs) != len(refs) or any(a.shape != b.shape for a, b in zip(outs, refs, strict=False)):
        raise BoundfinderError(f"{where}: the emulated run gave outputs of shapes {[tuple(t.shape) for t in outs]}, "
                               f"the float64 run {[tuple(t.shape) for t in refs]}; the profile compares the same "
                               "layer call in both runs (a forward whose control flow depends on the values?).")
    per_item = n > 0 and all(t.ndim and t.shape[0] == n for t in refs)
    rows = n if per_item else 1
    diff2 = torch.zeros(rows, dtype=torch.float64)
    ref2 = torch.zeros(rows, dtype=torch.float64)
    for out, ref in zip(outs, refs, strict=True):
        out, ref = out.to("cpu", torch.float64), ref.to("cpu", torch.float64)
        # equal values (infinities of a mask too) differ by nothing; NaN or infinity where float64 differs: inf
        d = torch.where(out == ref, torch.zeros((), dtype=torch.float64), out - ref).nan_to_num(nan=math.inf)
        r = torch.where(ref.isfinite(), ref, torch.zeros((), dtype=torch.float64))
        diff2 += d.reshape(rows, -1).square().sum(1)
        ref2 += r.reshape(rows, -1).square().sum(1)
    err = torch.where(ref2 > 0, diff2.sqrt() / ref2.sqrt(),
                      torch.where(diff2 > 0, math.inf, 0.0).to(torch.float64))
    return err.numpy(), per_item


def error_profile(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    formats: Iterable[str | Format] = DEFAULT_FORMATS,
    level: str = "layer",
    rounding: str = "nearest",
    roles: Iterable[str] = INFERENCE_ROLES,
    items: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    contribution: bool = True,
    experiment: Mapping[str, Any] | None = None,
) -> ErrorProfile:
    """Relative error of every layer's output, layer by layer in execution order, under each of ``formats``.

    ``model`` is copied twice and left as it is: a float64 copy gives the reference, a float32 copy runs plain
    (the ``float32`` row) and under each format at ``level`` (``"layer"``, ``"op"``; ``"batch"``: the parameters
    rounded and nothing else, the parameter-server setting). Both run in evaluation mode without gradients on the
    same items: the first ``items`` (default all) of ``batches``, as a loader yields them. ``forward(model, batch)``
    runs the model on a batch (default ``model(x)`` of a tensor, ``(x, y, ...)`` or dict batch; an experiment's
    score works too). The layers are :func:`boundfinder.policy.layer_modules` (the modules emulation rounds at)
    plus the model's output, as each forward call reaches them. With ``contribution``, each layer is also run
    rounded alone (every other layer float32): its *alone* error, at the same layer's output.
    """
    formats = _check_formats(formats)
    level = _check_level(level)
    roles = tuple(roles)
    policies = {f: PrecisionPolicy.from_spec(f, rounding=rounding, roles=roles) for f in formats}  # checks both
    if items is not None and (isinstance(items, bool) or not isinstance(items, int) or items < 1):
        raise BoundfinderError(f"items must be a positive int or None (every item), but got items={items!r}.")
    if not isinstance(model, nn.Module):
        raise BoundfinderError(f"error_profile needs an nn.Module, but got {type(model).__name__}.")
    forward = forward or _default_forward
    work = copy.deepcopy(model).float().eval()
    ref_model = copy.deepcopy(model).double().eval()
    layers = layer_modules(work)
    root_is_layer = "" in layers
    names = dict(layers) if root_is_layer else {**layers, "": work}
    ref_names = {n: ref_model.get_submodule(n) for n in names}

    def run(net: nn.Module, modules: Mapping[str, nn.Module], batch: Any) -> dict[tuple[str, int], list]:
        rec = _Recorder(modules)
        try:
            with torch.no_grad():
                forward(net, batch)
        finally:
            rec.remove()
        return rec.calls

    keys: dict[tuple[str, int], str] = {}  # key -> module type, in execution order
    errs: dict[tuple[str, str, int], list[np.ndarray]] = {}  # (config, name, call) -> per batch
    alone: dict[tuple[str, str, int], list[np.ndarray]] = {}
    per_batch: set[tuple[str, int]] = set()
    seen, drop_output = 0, False
    for batch in batches:
        n = _batch_size(batch) or 0
        if items is not None:
            if seen >= items:
                break
            if n and seen + n > items:
                batch, n = _take(batch, n, items - seen), items - seen
        seen += max(n, 1)
        ref = run(ref_model, ref_names, _map_float(batch, lambda t: t.to(torch.float64)))
        batch = _map_float(batch, lambda t: t.to(torch.float32))
        root = ("", 1)
        if not keys and not root_is_layer and root in ref and len(ref) > 1:
            last = list(ref)[-2]  # the root's hook runs last
            if len(ref[root]) == len(ref[last]) and all(
                    a.shape == b.shape and torch.equal(a, b) for a, b in zip(ref[root], ref[last], strict=True)):
                drop_output = True  # the model returns its last layer's output: no row of its own
        if drop_output:
            ref.pop(root, None)
        for key in ref:
            keys.setdefault(key, type(names[key[0]]).__name__)

        def record(store: dict, config: str, outs: Mapping[tuple[str, int], list], only: str | None,
                   ref=ref, n=n) -> None:
            for key, refs in ref.items():
                if only is not None and key[0] != only:
                    continue
                if key not in outs:
                    raise BoundfinderError(f"layer {_label(*key)} ran in the float64 run but not in the {config} "
                                           "run; the profile compares the same layer calls in both.")
                e, item = _relative(outs[key], refs, n, f"layer {_label(*key)} at {config}")
                if not item:
                    per_batch.add(key)
                store.setdefault((config, *key), []).append(e)

        record(errs, REFERENCE, run(work, names, batch), None)
        for fmt in formats:
            record(errs, fmt, _run_emulated(work, "", policies[fmt], level, names, batch, run), None)
            if contribution:
                # a module called twice is rounded alone once: both its calls are read from that run
                for name in dict.fromkeys(k[0] for k in ref):
                    if name == "" and not root_is_layer:
                        continue  # the model's output has no layer of its own: alone would be everything
                    record(alone, fmt, _run_emulated(work, name, policies[fmt], level, names, batch, run), name)
    if not keys:
        raise BoundfinderError("error_profile got no batches (or no layer ran): give at least one batch of items.")
    order = list(keys)
    labels = tuple(OUTPUT if (k[0] == "" and not root_is_layer) else _label(*k) for k in order)
    rows = {}
    for config in (REFERENCE, *formats):
        rows[config] = tuple(
            LayerError(index=i, layer=labels[i], module=keys[k], format=config,
                       per="batch" if k in per_batch else "item", errors=np.concatenate(errs[(config, *k)]),
                       alone=np.concatenate(alone[(config, *k)]) if (config, *k) in alone else None)
            for i, k in enumerate(order))
    return ErrorProfile(formats=formats, level=level, rounding=rounding, roles=roles, layers=labels,
                        modules=tuple(keys[k] for k in order), rows=rows, n_items=seen,
                        experiment=dict(experiment or {}))


def _label(name: str, call: int) -> str:
    name = name or "(model)"
    return name if call == 1 else f"{name}#{call}"


def _run_emulated(work: nn.Module, name: str, policy: PrecisionPolicy, level: str, names: Mapping[str, nn.Module],
                  batch: Any, run: Callable) -> dict:
    """The recorded outputs of ``work`` with ``policy`` applied at ``level`` to the layer ``name`` and everything
    inside it (``""``: the whole model)."""
    try:
        if level == "batch":
            # parameter-server precision: the stored parameters rounded, on a copy (nothing else is rounded)
            net = copy.deepcopy(work)
            em = emulate(net.get_submodule(name), policy, level="batch")
            em.round_parameters_now()
            em.remove()
            return run(net, {n: net.get_submodule(n) for n in names}, batch)
        with emulate(work.get_submodule(name), policy, level=level):
            return run(work, names, batch)
    except BoundfinderError as exc:
        where = "the model" if not name else f"layer {name!r} alone"
        raise BoundfinderError(f"emulating {where} at level {level}: {exc}") from exc


# -- cost ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class CostRow:
    """Step and evaluation time of one model at one level, each beside plain float32 in the same rounds.

    ``*_ms``: medians over every timed call; ``*_ratio``: the median over rounds of (the level's median / plain's
    median in that round), so drift between rounds cancels."""

    kind: str
    depth: int
    width: int
    parameters: int
    level: str
    step_fp32_ms: float
    step_ms: float
    step_ratio: float
    eval_fp32_ms: float
    eval_ms: float
    eval_ratio: float

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CostTable:
    """:func:`cost_profile`'s rows, one per (kind, depth, width, level), and how they were measured."""

    rows: tuple[CostRow, ...]
    format: str
    rounding: str
    batch_size: int
    repeats: int
    steps: int
    threads: int
    device: str
    torch_version: str = torch.__version__

    def summary(self) -> dict[str, Any]:
        return {"kind": "cost_profile", "format": self.format, "rounding": self.rounding,
                "batch_size": self.batch_size, "repeats": self.repeats, "steps": self.steps, "threads": self.threads,
                "device": self.device, "torch": self.torch_version, "rows": [r.summary() for r in self.rows]}

    def table(self) -> list[str]:
        lines = [f"{'model':<5} {'depth':>5} {'width':>5} {'params':>8} {'level':<6} {'step fp32 ms':>12} "
                 f"{'step ms':>9} {'ratio':>7} {'eval fp32 ms':>12} {'eval ms':>9} {'ratio':>7}"]
        for r in self.rows:
            lines.append(f"{r.kind:<5} {r.depth:>5} {r.width:>5} {r.parameters:>8} {r.level:<6} "
                         f"{r.step_fp32_ms:>12.3f} {r.step_ms:>9.3f} {r.step_ratio:>6.2f}x "
                         f"{r.eval_fp32_ms:>12.3f} {r.eval_ms:>9.3f} {r.eval_ratio:>6.2f}x")
        return lines

    def report(self) -> str:
        return "\n".join([
            f"time of a training step (forward, cross-entropy, backward, SGD step) and of an evaluation (forward, "
            f"no gradients) under {self.format} ({self.rounding}) at each level, as a ratio of plain float32 "
            f"measured in the same rounds (median of {self.repeats} rounds of {self.steps} calls; batch "
            f"{self.batch_size}, {self.device}, {self.threads} torch thread(s), torch {self.torch_version}); "
            "batch: parameters rounded after each step; layer/op: every role", *self.table()])


def _positive_ints(values: Iterable[int], what: str, example: str) -> tuple[int, ...]:
    values = tuple(values)
    if not values:
        raise BoundfinderError(f"{what} needs at least one value (e.g. {example}), but got {what}=[].")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise BoundfinderError(f"every one of {what} must be an integer >= 1 (e.g. {example}), but got "
                               f"{what}={list(values)} ({bad} invalid).")
    if len(set(values)) != len(values):
        raise BoundfinderError(f"{what} must be distinct, but got {what}={list(values)}.")
    return values


def _cost_model(kind: str, depth: int, width: int) -> nn.Module:
    from boundfinder.models import MLP, LeNet

    if kind == "mlp":
        return MLP(hidden=(width,) * depth)
    return LeNet(channels=(max(width // 2, 1), width), hidden=width)


def _timed(fn: Callable[[], None], n: int, sync: Callable[[], None]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def cost_profile(
    *,
    kinds: Iterable[str] = COST_KINDS,
    depths: Iterable[int] = (1, 2, 4),
    widths: Iterable[int] = (32, 128),
    levels: Iterable[str] = LEVELS,
    format: str | Format = "bf16",
    rounding: str = "nearest",
    batch_size: int = 128,
    repeats: int = 10,
    steps: int = 10,
    warmup: int = 3,
    device: str | torch.device = "cpu",
    threads: int | None = 1,
) -> CostTable:
    """Training-step and evaluation time at each of ``levels`` as a ratio of plain float32, per model.

    Models: for ``"mlp"`` the built-in MLP with ``depth`` hidden layers of ``width`` units for each depth and
    width; for ``"cnn"`` the built-in LeNet (two conv blocks, ``depth`` 2 in the table) with ``width // 2`` and
    ``width`` channels and a hidden layer of ``width`` units, for each width. Inputs: ``batch_size`` random
    1x8x8 images in [0, 1) and labels (digits-shaped; timing does not depend on the values), seed 0. Plain and
    each level get their own copy of the same initial model and their own SGD optimizer (momentum 0.9); each
    round times ``steps`` training steps then ``steps`` evaluations of every configuration in turn (after
    ``warmup`` untimed calls), and a ratio is the median over ``repeats`` rounds of the level's median over plain's
    median in the same round. ``layer`` and ``op`` round every role (weights, activations, gradients);
    ``batch`` rounds the parameters after each step (the parameter-server setting). ``threads``: torch's CPU
    threads while timing (restored after; None: as set). One is the default because on a shared machine several
    threads contend with other processes' work and both times and ratios swing (measured on 2 busy cores: a
    2-thread LeNet step 2-3x slower and ratios of 0.35x-2.6x where 1 thread gave 0.96x-1.97x).
    """
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in COST_KINDS]
    if bad or not kinds:
        raise BoundfinderError(f"kinds must be a non-empty subset of {COST_KINDS}, but got kinds={list(kinds)}.")
    depths = _positive_ints(depths, "depths", "1,2,4")
    widths = _positive_ints(widths, "widths", "32,128")
    levels = tuple(levels)
    if not levels or any(lv not in LEVELS for lv in levels):
        raise BoundfinderError(f"levels must be a non-empty subset of {LEVELS}, but got levels={list(levels)}.")
    fmt = _check_formats([format])[0]
    for name, v, low in (("batch_size", batch_size, 1), ("repeats", repeats, 1), ("steps", steps, 1),
                         ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise BoundfinderError(f"`{name} >= {low}` must hold (an integer), but got {name}={v!r}.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise BoundfinderError(f"threads must be a positive int or None (as set), but got threads={threads!r}.")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _cost_rows(kinds, depths, widths, levels, fmt, rounding, batch_size, repeats, steps, warmup,
                          torch.device(device))
    finally:
        torch.set_num_threads(before)


def _cost_rows(kinds: tuple[str, ...], depths: tuple[int, ...], widths: tuple[int, ...], levels: tuple[str, ...],
               fmt: str, rounding: str, batch_size: int, repeats: int, steps: int, warmup: int,
               device: torch.device) -> CostTable:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 1, 8, 8, generator=gen).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    shapes = [(k, d, w) for k in kinds for d, w in
              ([(d, w) for d in depths for w in widths] if k == "mlp" else [(2, w) for w in widths])]
    rows = []
    for kind, depth, width in shapes:
        torch.manual_seed(0)
        base = _cost_model(kind, depth, width).to(device)
        configs = {"fp32": _Config(copy.deepcopy(base), None, fmt, rounding, x, y)}
        for lv in levels:
            configs[lv] = _Config(copy.deepcopy(base), lv, fmt, rounding, x, y)
        try:
            for c in configs.values():
                _timed(c.step, warmup, sync)
                _timed(c.evaluate, warmup, sync)
            times: dict[tuple[str, str], list[float]] = {}
            ratios: dict[tuple[str, str], list[float]] = {}
            for _ in range(repeats):
                medians = {}
                for name, c in configs.items():
                    for what, fn in (("step", c.step), ("eval", c.evaluate)):
                        t = _timed(fn, steps, sync)
                        times.setdefault((name, what), []).extend(t)
                        medians[(name, what)] = statistics.median(t)
                # paired within the round: other processes' load changes between rounds more than within one
                for (name, what), m in medians.items():
                    ratios.setdefault((name, what), []).append(m / medians[("fp32", what)])
        finally:
            for c in configs.values():
                c.remove()
        params = sum(p.numel() for p in base.parameters())
        for lv in levels:
            rows.append(CostRow(
                kind=kind, depth=depth, width=width, parameters=params, level=lv,
                step_fp32_ms=statistics.median(times[("fp32", "step")]) * 1e3,
                step_ms=statistics.median(times[(lv, "step")]) * 1e3,
                step_ratio=statistics.median(ratios[(lv, "step")]),
                eval_fp32_ms=statistics.median(times[("fp32", "eval")]) * 1e3,
                eval_ms=statistics.median(times[(lv, "eval")]) * 1e3,
                eval_ratio=statistics.median(ratios[(lv, "eval")])))
    return CostTable(rows=tuple(rows), format=fmt, rounding=rounding, batch_size=batch_size, repeats=repeats,
                     steps=steps, threads=torch.get_num_threads(), device=str(device))


class _Config:
    """One timed configuration: its own model copy, optimizer and emulation (None: plain float32)."""

    def __init__(self, model: nn.Module, level: str | None, fmt: str, rounding: str, x: torch.Tensor,
                 y: torch.Tensor) -> None:
        self.model, self.x, self.y, self.level = model.train(), x, y, level
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.em = None
        if level is not None:
            roles = ("weight", "bias") if level == "batch" else None
            policy = PrecisionPolicy.from_spec(fmt, rounding=rounding, roles=roles)
            self.em = emulate(model, policy, level=level, optimizer=self.opt if level == "batch" else None)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()  # the op level rounds the backward through its own node hooks
        self.opt.step()  # the batch level rounds the parameters in its step post-hook

    def evaluate(self) -> None:
        with torch.no_grad():
            self.model(self.x)

    def remove(self) -> None:
        if self.em is not None:
            self.em.remove()
