"""Parameters kept as views into one buffer, so that batch-level rounding is one call over all of them.

Rounding a small model's parameters after every optimizer step costs more in per-tensor calls (and in copying
them into one buffer and back) than in arithmetic: on a 0.6 ms MLP step, the two grouped fp16 conversions and
their copies took ~9% of the step. ``FlatParameters`` moves the parameters' data into one float32 buffer once
(``param.data`` becomes a view of it; the Parameter objects, their values and shapes stay), and each step rounds
that buffer in place with one or two calls.

Each parameter starts at a multiple of 16 elements (64 bytes, the alignment of a fresh CPU allocation), so the
layer arithmetic sees data aligned as before and gives the same results bit for bit. Before each use the views
are checked (data pointer and shape): anything that replaced a parameter's data (a move to another device,
``param.data = ...``) makes the group fall back to per-tensor rounding and re-attach later. ``detach`` gives every
parameter its own storage again (values unchanged).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["FlatParameters", "FlatState", "qualifies"]

ALIGN = 16  # elements of float32: 64 bytes


def qualifies(param: torch.Tensor) -> bool:
    """A float32 CPU parameter with plain, contiguous, non-empty data."""
    data = param.data
    return (type(data) is torch.Tensor and data.dtype == torch.float32 and data.is_cpu and data.is_contiguous()
            and data.numel() > 0 and not data.is_neg() and not data.is_conj())


class FlatParameters:
    """Parameters of one rounder as aligned views into one float32 buffer (see the module docstring)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.flat: torch.Tensor | None = None
        self._views: list[tuple[int, torch.Size]] = []
        self.scratch: dict = {}  # the rounder's working copies of ``flat`` (batch.py), dropped with it

    def buffer(self) -> torch.Tensor | None:
        """The buffer every parameter is a view of (attaching them first if needed), or None if one does not
        qualify: round those tensors one by one instead."""
        if self.flat is not None and self._intact():
            return self.flat
        self.detach()
        if not all(qualifies(p) for p in self.params):
            return None
        self._attach()
        return self.flat

    def _intact(self) -> bool:
        return all(p.data_ptr() == ptr and p.shape == shape for p, (ptr, shape) in zip(self.params, self._views,
                                                                                       strict=True))

    def _attach(self) -> None:
        with torch.no_grad():
            flat, views = _aligned_buffer([p.data for p in self.params])
            for p, view in zip(self.params, views, strict=True):
                p.data = view
        self.flat = flat
        self._views = [(p.data_ptr(), p.shape) for p in self.params]

    def detach(self) -> None:
        """Give each parameter still viewing the buffer its own storage again (same values)."""
        if self.flat is None:
            return
        with torch.no_grad():
            for p, (ptr, shape) in zip(self.params, self._views, strict=True):
                if p.data_ptr() == ptr and p.shape == shape:
                    p.data = p.data.clone()
        self.flat = None
        self._views = []
        self.scratch = {}


def _aligned_buffer(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A zeroed float32 buffer and, per tensor, an aligned view of it holding that tensor's values."""
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += -(-t.numel() // ALIGN) * ALIGN
    flat = torch.zeros(total, dtype=torch.float32)
    views = []
    for t, offset in zip(tensors, offsets, strict=True):
        view = flat[offset:offset + t.numel()].view(t.shape)
        view.copy_(t)
        views.append(view)
    return flat, views


def _state_fingerprint(optimizer: torch.optim.Optimizer) -> tuple:
    return tuple(len(s) for s in optimizer.state.values())


class FlatState:
    """Optimizer state tensors (momentum, Adam's moments) as aligned views into one buffer per rounder: each
    ``optimizer.state[param][key]`` is replaced by its view once; optimizers update their state in place, so the
    views stay. ``serves`` tells whether the state is still exactly those views (same entries, same objects):
    a new entry or a replaced tensor (``load_state_dict``) means building anew."""

    def __init__(self, optimizer: torch.optim.Optimizer,
                 slots: list[tuple[torch.Tensor, str, torch.Tensor, object]]) -> None:
        """``slots``: (parameter, state key, state tensor, rounder) for each tensor to keep in a buffer."""
        self.optimizer = optimizer
        groups: dict[int, tuple[object, list[tuple[torch.Tensor, dict, str, torch.Tensor]]]] = {}
        for param, key, value, rounder in slots:
            groups.setdefault(id(rounder), (rounder, []))[1].append((param, optimizer.state[param], key, value))
        self.buffers: list[tuple[object, torch.Tensor]] = []
        self.slots: list[tuple[torch.Tensor, dict, str, torch.Tensor]] = []
        self.scratch: dict = {}  # the rounder's working copies of the buffers (batch.py), dropped with them
        with torch.no_grad():
            for rounder, entries in groups.values():
                flat, views = _aligned_buffer([value for *_, value in entries])
                for (param, state, key, _), view in zip(entries, views, strict=True):
                    state[key] = view
                    self.slots.append((param, state, key, view))
                self.buffers.append((rounder, flat))
        self.fingerprint = _state_fingerprint(optimizer)

    def serves(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether the optimizer's state is still exactly these views: the same per-parameter dicts (a
        ``load_state_dict`` makes new ones), the same entries, the same tensor objects."""
        if optimizer is not self.optimizer or _state_fingerprint(optimizer) != self.fingerprint:
            return False
        current = optimizer.state
        return all(current.get(param) is state and state.get(key) is view for param, state, key, view in self.slots)

    def detach(self) -> None:
        """Give each state tensor still viewing a buffer its own storage again (same values)."""
        with torch.no_grad():
            for _, state, key, view in self.slots:
                if state.get(key) is view:
                    state[key] = view.clone()
        self.slots = []
        self.buffers = []
        self.scratch = {}
