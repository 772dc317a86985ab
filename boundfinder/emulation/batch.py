"""Batch-level emulation: round parameters (and optimizer state) in place after every optimizer step.

This is the parameter-server setting: the stored model lives in the format, while each step's arithmetic runs
in float32. Which tensors are rounded:

- parameters of selected layers with a ``weight`` / ``bias`` format;
- with an ``optimizer_state`` format, every floating-point state tensor of those parameters that has the
  parameter's shape (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ...); scalars such as Adam's ``step``
  counter are left alone, since rounding a step count is not a storage format.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from boundfinder.formats import Format
from boundfinder.policy import parameter_role

from ._round import Rounder, is_identity, make_rounder

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

    def round_parameters(self) -> None:
        with torch.no_grad():
            _round_in_place(self.parameters)

    def round_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.state_rounders:
            return
        todo: list[tuple[torch.Tensor, Rounder]] = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                entry = self.state_rounders.get(id(param))
                state = optimizer.state.get(param)
                if entry is None or not state:
                    continue
                todo.extend(
                    (value, entry[1])
                    for value in state.values()
                    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == param.shape
                )
        with torch.no_grad():
            _round_in_place(todo)

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


def _round_in_place(items: list[tuple[torch.Tensor, Rounder]]) -> None:
    """Round each tensor in place with its rounder. Tensors sharing an element-wise rounder (float32, same
    device) are rounded in one call on their concatenation: with small layers the per-call cost dominates."""
    groups: dict[tuple[int, torch.device], list[torch.Tensor]] = {}
    rounders: dict[int, Rounder] = {}
    for tensor, r in items:
        in_place = getattr(r, "in_place", None)
        if in_place is not None and tensor.dtype == torch.float32:
            in_place(tensor)  # a cast and back: cheaper per tensor than concatenating
        elif getattr(r, "elementwise", False) and tensor.dtype == torch.float32:
            groups.setdefault((id(r), tensor.device), []).append(tensor)
            rounders[id(r)] = r
        else:
            tensor.copy_(r(tensor))
    for (rid, _), tensors in groups.items():
        if len(tensors) == 1:
            tensors[0].copy_(rounders[rid](tensors[0]))
            continue
        flat = rounders[rid](torch.cat([t.reshape(-1) for t in tensors]))
        pieces = [piece.view(t.shape) for piece, t in zip(flat.split([t.numel() for t in tensors]), tensors,
                                                          strict=True)]
        torch._foreach_copy_(tensors, pieces)
