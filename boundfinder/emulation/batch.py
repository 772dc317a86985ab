"""Batch-level emulation: round parameters (and optimizer state) in place after every optimizer step.

This is the parameter-server setting: the stored model lives in the format, while each step's arithmetic runs
in float32. Which tensors are rounded:

- parameters of selected layers with a ``weight`` / ``bias`` format;
- with an ``optimizer_state`` format, every floating-point state tensor of those parameters that has the
  parameter's shape (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ...); scalars such as Adam's ``step``
  counter are left alone, since rounding a step count is not a storage format.

Float32 CPU parameters whose format has an in-place fast path (nearest fp16 / bf16 / e5m2 / e4m3fn) are kept as
views into one buffer per format while emulation is on (``flat.py``), so each step rounds them with one or two
calls; removal gives them their own storage back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from boundfinder.formats import Format
from boundfinder.policy import parameter_role

from ._round import Rounder, is_identity, make_rounder
from .flat import FlatParameters, FlatState, qualifies

__all__ = ["BatchEmulator"]


class BatchEmulator:
    """Rounds parameters / optimizer state of the selected layers on request (:meth:`after_optimizer_step`)."""

    def __init__(
        self,
        model: nn.Module,
        plan: dict[str, dict[str, Format]],
        rounding: str,
        generator: torch.Generator | None,
    ) -> None:
        rounders: dict[Format, Rounder] = {}

        def rounder(fmt: Format | None) -> Rounder | None:
            if fmt is None or is_identity(fmt):
                return None
            if fmt not in rounders:
                rounders[fmt] = make_rounder(fmt, rounding, generator)
            return rounders[fmt]

        modules = dict(model.named_modules())
        self.parameters: list[tuple[nn.Parameter, Rounder]] = []
        self.state_rounders: dict[int, tuple[nn.Parameter, Rounder]] = {}
        seen: set[int] = set()
        for name, formats in plan.items():
            for pname, param in modules[name].named_parameters(recurse=False):
                if id(param) in seen:  # a parameter shared by two layers is rounded once, by the first
                    continue
                seen.add(id(param))
                fmt = formats.get(parameter_role(pname))
                r = rounder(fmt)
                if r is not None:
                    self.parameters.append((param, r))
                s = rounder(formats.get("optimizer_state"))
                if s is not None:
                    self.state_rounders[id(param)] = (param, s)
        self._handles: list[Any] = []
        self._scratch: dict = {}  # buffers of _round_in_place, reused between steps
        # Parameters whose rounder is a deterministic in-place fast path (a cast to fp16 / bf16 / e5m2 and back,
        # or the e4m3fn float arithmetic) live in one buffer per rounder and are rounded by one call on it
        # (flat.py); the rest, and any group whose parameters stop qualifying, go through _round_in_place.
        flat: dict[int, tuple[Rounder, list[nn.Parameter]]] = {}
        self._one_by_one: list[tuple[torch.Tensor, Rounder]] = []
        for param, r in self.parameters:
            if getattr(r, "in_place", None) is not None and qualifies(param):
                flat.setdefault(id(r), (r, []))[1].append(param)
            else:
                self._one_by_one.append((param, r))
        self._flat = [(r, FlatParameters(params)) for r, params in flat.values()]
        self._state_flat: FlatState | None = None

    def round_parameters(self) -> None:
        with torch.no_grad():
            todo = self._one_by_one
            for r, group in self._flat:
                buf = group.buffer()
                if buf is None:
                    todo = todo + [(p, r) for p in group.params]
                else:
                    _round_flat(buf, r, group.scratch)
            if todo:
                _round_in_place(todo, self._scratch)

    def round_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.state_rounders:
            return
        if self._state_flat is not None and self._state_flat.serves(optimizer):
            with torch.no_grad():
                for r, buf in self._state_flat.buffers:
                    _round_flat(buf, r, self._state_flat.scratch)
            return
        slots: list[tuple[torch.Tensor, str, torch.Tensor, Rounder]] = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                entry = self.state_rounders.get(id(param))
                state = optimizer.state.get(param)
                if entry is None or not state:
                    continue
                slots.extend(
                    (param, key, value, entry[1])
                    for key, value in state.items()
                    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == param.shape
                )
        if self._state_flat is not None:
            self._state_flat.detach()
            self._state_flat = None
        if slots and all(getattr(r, "in_place", None) is not None and qualifies(v) for _, _, v, r in slots):
            # every tensor can live in a buffer: from now on one or two calls per buffer and step
            self._state_flat = FlatState(optimizer, slots)
            self.round_optimizer_state(optimizer)
            return
        with torch.no_grad():
            _round_in_place([(value, r) for _, _, value, r in slots], self._scratch)

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer | None) -> None:
        self.round_parameters()
        if optimizer is not None:
            self.round_optimizer_state(optimizer)

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Call :meth:`after_optimizer_step` automatically after each ``optimizer.step()``."""
        self._handles.append(
            optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_optimizer_step(opt))
        )

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for _, group in self._flat:
            group.detach()
        if self._state_flat is not None:
            self._state_flat.detach()
            self._state_flat = None


def _round_flat(buf: torch.Tensor, r: Rounder, scratch: dict) -> None:
    """Round a buffer of flat.py in place; ``scratch`` (the buffer owner's, emptied with its buffers) keeps the
    cast dtype's copy between steps."""
    cast = getattr(r, "cast_dtype", None)
    if cast is None:
        r.in_place(buf)  # type: ignore[attr-defined]
        return
    tmp = scratch.get(id(buf))
    if tmp is None:
        tmp = scratch[id(buf)] = torch.empty(buf.numel(), dtype=cast)
    tmp.copy_(buf)  # round to nearest even, as Tensor.to
    buf.copy_(tmp)


def _round_in_place(items: list[tuple[torch.Tensor, Rounder]], scratch: dict | None = None) -> None:
    """Round each tensor in place with its rounder, with few calls: with small layers the per-call cost dominates.

    Float32 tensors sharing a rounder (and device) are rounded together: on CPU a cast rounder converts them all
    into float16 / bfloat16 / float8 buffers and back in two ``_foreach_copy_`` calls (elsewhere: a cast and
    back per tensor, as before; the foreach conversion is tested bit for bit on CPU only); another
    element-wise rounder rounds their concatenation in one call (in place when it can) and copies the pieces
    back in one ``_foreach_copy_``. ``scratch`` keeps those buffers between calls (keyed by the tensors' shapes), so a
    training step allocates nothing.
    """
    if scratch is None:
        scratch = {}
    groups: dict[tuple[int, torch.device], list[torch.Tensor]] = {}
    rounders: dict[int, Rounder] = {}
    for tensor, r in items:
        in_place = getattr(r, "in_place", None)
        if (in_place is not None and getattr(r, "cast_dtype", None) is not None and not tensor.is_cpu
                and tensor.dtype == torch.float32):
            # off the CPU, a cast and back per tensor (the foreach conversion is only verified bit for bit on CPU)
            in_place(tensor)
        elif getattr(r, "elementwise", False) and tensor.dtype == torch.float32:
            groups.setdefault((id(r), tensor.device), []).append(tensor)
            rounders[id(r)] = r
        else:
            tensor.copy_(r(tensor))
    for (rid, device), tensors in groups.items():
        r = rounders[rid]
        shapes = tuple(t.shape for t in tensors)
        # buffers are kept only for small groups, where the per-call cost they save matters; large ones would
        # hold a copy of the model
        keep = sum(t.numel() for t in tensors) <= _SCRATCH_MAX_NUMEL
        key = (rid, device, shapes)
        cast = getattr(r, "cast_dtype", None)
        if cast is not None:
            bufs = scratch.get(key)
            if bufs is None:
                bufs = [torch.empty(s, dtype=cast, device=device) for s in shapes]
                if keep:
                    scratch[key] = bufs
            torch._foreach_copy_(bufs, tensors)  # round to nearest even, as Tensor.to
            torch._foreach_copy_(tensors, bufs)
            continue
        in_place = getattr(r, "in_place", None)
        if len(tensors) == 1:
            if in_place is not None:
                in_place(tensors[0])
            else:
                tensors[0].copy_(r(tensors[0]))
            continue
        sizes = [t.numel() for t in tensors]
        entry = scratch.get(key)
        if entry is None:
            flat = torch.empty(sum(sizes), device=device)
            entry = (flat, [piece.view(s) for piece, s in zip(flat.split(sizes), shapes, strict=True)])
            if keep:
                scratch[key] = entry
        flat, views = entry
        torch.cat([t.reshape(-1) for t in tensors], out=flat)
        if in_place is not None:
            in_place(flat)
        else:
            rounded = r(flat)
            views = [piece.view(s) for piece, s in zip(rounded.split(sizes), shapes, strict=True)]
        torch._foreach_copy_(tensors, views)


_SCRATCH_MAX_NUMEL = 1 << 22
