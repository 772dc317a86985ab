"""Op-level emulation: a TorchDispatchMode that rounds the output of every floating-point aten op.

The mode sits below autograd, so it sees the forward ops and, during backward, the ops autograd runs to compute
gradients (``torch._C._current_autograd_node()`` tells the two apart: forward outputs get the ``activation``
format, backward outputs the gradient format).

Not rounded, and why:

- view and metadata ops (``view``, ``t``, ``transpose``, ``expand``, ``detach``, ... any op whose schema says its
  result aliases an input): they compute nothing, and rounding in place would write through to the base tensor;
- copies, conversions and allocations (``clone``, ``copy_``, ``_to_copy``, ``empty*``, ``zeros*``, ``ones_like``,
  ``fill_``, ``zero_``, ``lift_fresh*``): they compute nothing either; their values are op outputs (already
  rounded), model inputs or constants;
- outputs that are not float32 / bfloat16 / float16 (indices, masks, float64 bookkeeping).

In-place and ``out=`` ops are rounded in place (the written arguments). Optimizer steps run outside the mode
unless the caller puts them inside :meth:`OpEmulator.context`; use the batch level for stored parameters.

``accumulate_chunk=k`` replaces ``mm``, ``addmm``, ``bmm``, ``baddbmm``, 1-d/2-d ``convolution`` and
``convolution_backward`` by a reference that splits the reduction axis into chunks of ``k``: each chunk's
partial sum is computed in float32, added to the accumulator, and the sum rounded (``k = 1``: one rounding per
multiply-add, i.e. a fused multiply-add in the format). Convolutions go through ``unfold`` + the chunked matmul;
the overlap-add of ``fold`` in the input gradient and the bias gradient's sum are rounded once. The cost is one
matmul, one add and one rounding per chunk: ``K / k`` small kernels instead of one GEMM, so ``k = 1`` on a
reduction of length K is roughly K times slower than plain — a reference, not a fast path.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from boundfinder.errors import PolicyError
from boundfinder.formats import Format

from ._round import Rounder, is_elementwise_idempotent, is_identity, is_marked, make_rounder, mark
from .layer import LayerEmulator

__all__ = ["OpEmulator", "RoundingMode", "chunked_matmul"]

aten = torch.ops.aten
_ROUNDED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_SKIP = {
    aten.detach, aten.clone, aten.copy_, aten._to_copy, aten.lift_fresh, aten.lift_fresh_copy,
    aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided,
    aten.zeros, aten.zeros_like, aten.new_zeros, aten.ones_like, aten.fill_, aten.zero_,
    aten._local_scalar_dense, aten.set_, aten.resize_,
}  # fmt: skip
_CLASS_CACHE: dict[Any, tuple[str, tuple[tuple[int, str], ...]]] = {}


def _classify(func) -> tuple[str, tuple[tuple[int, str], ...]]:
    """('skip' | 'mutating' | 'functional', written arguments as (position, name))."""
    cached = _CLASS_CACHE.get(func)
    if cached is not None:
        return cached
    schema = func._schema
    written = tuple(
        (i, a.name) for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write
    )
    if func.overloadpacket in _SKIP:
        kind = "skip"
    elif written:
        kind = "mutating"
    elif any(r.alias_info is not None for r in schema.returns):
        kind = "skip"  # a view of an input
    else:
        kind = "functional"
    _CLASS_CACHE[func] = (kind, written)
    return kind, written


def _roundable(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in _ROUNDED_DTYPES


# -- chunked reductions -----------------------------------------------------------------------------------------
def chunked_matmul(a: torch.Tensor, b: torch.Tensor, k: int, rounder: Rounder) -> torch.Tensor:
    """``a @ b`` (broadcasting like ``torch.matmul``) with the reduction split into chunks of ``k``.

    ``acc = round(acc + a[..., chunk] @ b[..., chunk, :])`` chunk after chunk, starting from 0; with ``k = 1``
    every multiply-add is rounded once.

    >>> a, b = torch.tensor([[1.0, 4e-4, 4e-4]]), torch.ones(3, 1)
    >>> fp16 = lambda t: t.to(torch.float16).float()
    >>> chunked_matmul(a, b, 1, fp16).item()  # each 1 + 4e-4 rounds back to 1 (half an ulp is 4.9e-4)
    1.0
    >>> chunked_matmul(a, b, 3, fp16).item()  # one rounding of 1.0008
    1.0009765625
    """
    n = a.shape[-1]
    acc = None
    for start in range(0, n, k):
        part = torch.matmul(a[..., start : start + k], b[..., start : start + k, :])
        acc = rounder(part if acc is None else acc + part)
    if acc is None:  # empty reduction
        return rounder(torch.matmul(a, b))
    return acc


def _conv_geometry(args: tuple, weight: torch.Tensor, what: str):
    stride, padding, dilation, transposed, _output_padding, groups = args
    if transposed or groups != 1 or weight.dim() not in (3, 4):
        raise PolicyError(
            f"accumulate_chunk supports 1-d and 2-d convolutions with groups=1 and no transposition; {what} got "
            f"weight of shape {tuple(weight.shape)}, transposed={transposed}, groups={groups}."
        )
    if weight.dim() == 3:  # 1-d: treat as 2-d with a height of 1
        return (1, stride[0]), (0, padding[0]), (1, dilation[0]), True
    return tuple(stride), tuple(padding), tuple(dilation), False


def _conv_forward(x, weight, bias, geometry, k, rounder):
    stride, padding, dilation, one_d = geometry
    if one_d:
        x, weight = x.unsqueeze(2), weight.unsqueeze(2)
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (N, C*kh*kw, L)
    out = chunked_matmul(weight.reshape(o, -1), cols, k, rounder)  # (N, O, L)
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = out.reshape(n, o, ho, wo)
    if bias is not None:
        out = rounder(out + bias.reshape(1, o, 1, 1))
    return out.squeeze(2) if one_d else out


def _conv_backward(grad, x, weight, geometry, output_mask, k, rounder):
    stride, padding, dilation, one_d = geometry
    if one_d:
        grad, x, weight = grad.unsqueeze(2), x.unsqueeze(2), weight.unsqueeze(2)
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    g = grad.reshape(n, o, -1)  # (N, O, L)
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        gcols = chunked_matmul(weight.reshape(o, -1).t(), g, k, rounder)  # (N, C*kh*kw, L), reduced over O
        grad_input = rounder(F.fold(gcols, (h, w), (kh, kw), dilation=dilation, padding=padding, stride=stride))
        if one_d:
            grad_input = grad_input.squeeze(2)
    if output_mask[1]:
        cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (N, CK, L)
        a = g.permute(1, 0, 2).reshape(o, -1)  # (O, N*L)
        b = cols.permute(0, 2, 1).reshape(-1, cols.shape[1])  # (N*L, CK)
        grad_weight = chunked_matmul(a, b, k, rounder).reshape(weight.shape)
        if one_d:
            grad_weight = grad_weight.squeeze(2)
    if output_mask[2]:
        grad_bias = rounder(g.sum(dim=(0, 2)))
    return grad_input, grad_weight, grad_bias


def _chunked(func, args: tuple, kwargs: dict, k: int, rounder: Rounder) -> Any:
    packet = func.overloadpacket
    if packet in (aten.mm, aten.bmm):
        return chunked_matmul(args[0], args[1], k, rounder)
    if packet in (aten.addmm, aten.baddbmm):
        base, m1, m2 = args[:3]
        beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
        prod = chunked_matmul(m1, m2, k, rounder)
        if alpha != 1:
            prod = rounder(prod * alpha)
        if beta != 1:
            base = rounder(base * beta) if beta != 0 else torch.zeros_like(prod)
        return rounder(base + prod)
    if packet is aten.convolution:
        x, weight, bias = args[:3]
        geometry = _conv_geometry(args[3:9], weight, "convolution")
        return _conv_forward(x, weight, bias, geometry, k, rounder)
    if packet is aten.convolution_backward:
        grad, x, weight, _bias_sizes = args[:4]
        geometry = _conv_geometry(args[4:10], weight, "convolution_backward")
        return _conv_backward(grad, x, weight, geometry, args[10], k, rounder)
    return NotImplemented


_CHUNKED_OPS = {aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.convolution, aten.convolution_backward}


class RoundingMode(TorchDispatchMode):
    """Round every floating-point op output: ``forward`` outside autograd's backward, ``backward`` inside it.

    Either rounder may be None (that pass is not rounded). ``accumulate_chunk`` as in :func:`chunked_matmul`.
    """

    def __init__(self, forward: Rounder | None, backward: Rounder | None, accumulate_chunk: int | None = None,
                 *, grid_key: Any = None):
        super().__init__()
        self.forward_rounder = forward
        self.backward_rounder = backward
        self.accumulate_chunk = accumulate_chunk
        # Set when forward and backward use one element-wise format with deterministic rounding: outputs are
        # marked, and ops that only select, move or negate elements of marked inputs skip their (no-op) rounding.
        self.grid_key = grid_key

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind, written = _CLASS_CACHE.get(func) or _classify(func)
        if kind == "skip":  # views and copies are most ops: leave them first
            return func(*args, **kwargs)
        in_backward = torch._C._current_autograd_node() is not None
        rounder = self.backward_rounder if in_backward else self.forward_rounder
        if rounder is None:
            return func(*args, **kwargs)
        if self.accumulate_chunk is not None and func.overloadpacket in _CHUNKED_OPS:
            return self._mark(_chunked(func, args, kwargs, self.accumulate_chunk, rounder))
        out = func(*args, **kwargs)
        if kind == "functional":
            key = self.grid_key
            if key is not None and _keeps_grid(func, args) and all(
                is_marked(t, _MARK, key) for t in tree_flatten(args)[0] if _roundable(t)
            ):
                return self._mark(out)
            if isinstance(out, torch.Tensor):
                return self._mark(rounder(out)) if out.dtype in _ROUNDED_DTYPES else out
            return self._mark(tree_map(lambda t: rounder(t) if _roundable(t) else t, out))
        if kind == "mutating":
            for pos, name in written:
                target = args[pos] if pos < len(args) else kwargs.get(name)
                for t in tree_flatten(target)[0]:
                    if _roundable(t):
                        t.copy_(rounder(t))
        return out

    def _mark(self, out: Any) -> Any:
        key = self.grid_key
        if key is not None:
            for t in (out,) if isinstance(out, torch.Tensor) else tree_flatten(out)[0]:
                if _roundable(t):
                    mark(t, _MARK, key)
        return out


_MARK = "_boundfinder_op_rounded"
# Ops whose float outputs are on an element-wise grid whenever their float inputs are: they select, move or
# negate elements (max pooling backward only without overlapping windows, where nothing is summed).
_KEEPS_GRID = {aten.relu, aten.threshold_backward, aten.max_pool2d_with_indices, aten.neg, aten.abs, aten.cat,
               aten.stack, aten.max_pool2d_with_indices_backward}


def _keeps_grid(func, args: tuple) -> bool:
    packet = func.overloadpacket
    if packet not in _KEEPS_GRID:
        return False
    if packet is aten.max_pool2d_with_indices_backward:
        kernel, stride = list(args[2]), list(args[3]) or list(args[2])
        kernel, stride = kernel * (2 // len(kernel)), stride * (2 // len(stride))
        dilation = list(args[5]) if len(args) > 5 else [1]
        return all(d == 1 for d in dilation) and all(k <= s for k, s in zip(kernel, stride, strict=True))
    return True


class OpEmulator:
    """Runs a model's forward and backward inside a :class:`RoundingMode`, and rounds parameters as used.

    Forward: a pre-hook on the root module enters the mode and a hook (``always_call``) leaves it. Backward: the
    autograd nodes the forward created get a pre-hook that enters the mode and a hook that leaves it, so plain
    ``loss.backward()`` is rounded too, on whichever thread autograd runs the node. Both do nothing while the
    mode is already active on the thread (inside :meth:`context`), so nothing is rounded twice; a forward run
    inside :meth:`context` registers no node hooks, since the caller is expected to run its backward inside the
    context as well (a backward outside it is then not rounded).
    """

    def __init__(
        self,
        model: nn.Module,
        plan: dict[str, dict[str, Format]],
        forward: Format | None,
        backward: Format | None,
        rounding: str,
        generator: torch.Generator | None,
        accumulate_chunk: int | None,
    ) -> None:
        fwd = None if forward is None or is_identity(forward) else make_rounder(forward, rounding, generator)
        bwd = None if backward is None or is_identity(backward) else make_rounder(backward, rounding, generator)
        grid_key = None
        if (forward is not None and forward == backward and fwd is not None
                and is_elementwise_idempotent(forward, rounding)):
            grid_key = (forward, rounding)
        self.mode = RoundingMode(fwd, bwd, accumulate_chunk, grid_key=grid_key)
        self._tls = threading.local()
        self._removed = False
        self._handles: list[Any] = []
        # Weights as used: the layer level's per-layer swap (works when only submodules are called, as in a
        # LightningModule's training_step), with its own ops kept out of this mode.
        self._weights = LayerEmulator(model, plan, rounding, generator, roles=("weight", "bias"),
                                      outside_dispatch=True)
        try:
            self._handles.append(model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True))
            self._handles.append(model.register_forward_hook(self._root_hook, always_call=True))
        except BaseException:
            self.remove()
            raise

    # -- mode stack (per thread) ----------------------------------------------------------------------------
    def _depth(self) -> int:
        return getattr(self._tls, "depth", 0)

    def _enter(self) -> None:
        depth = self._depth()
        if depth == 0:
            self.mode.__enter__()
        self._tls.depth = depth + 1

    def _exit(self) -> None:
        depth = self._depth() - 1
        self._tls.depth = depth
        if depth == 0:
            self.mode.__exit__(None, None, None)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Round every op inside the block (forward, backward, loss), on this thread."""
        self._enter()
        try:
            yield
        finally:
            self._exit()

    # -- hooks ----------------------------------------------------------------------------------------------
    def _root_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._tls.outer = self._depth() > 0
        if not self._tls.outer:
            # the backward stops where the model's inputs came from (positional or keyword): what computed them
            # is outside the emulated model
            self._tls.stop = {t.grad_fn for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        self._enter()

    def _root_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._exit()
        # Inside context() the caller runs the backward inside it too (that is what the context is for), so the
        # graph needs no hooks; walking it costs about as much as a few rounded ops.
        if torch.is_grad_enabled() and not getattr(self._tls, "outer", False):
            self._hook_graph(output, getattr(self._tls, "stop", set()))

    def _hook_graph(self, output: Any, stop: set) -> None:
        roots = [t.grad_fn for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
        seen: set = set()
        stack = [n for n in roots if n is not None]

        def pre(grad_outputs):
            if not self._removed:
                self._enter()

        def post(grad_inputs, grad_outputs):
            if not self._removed:
                self._exit()

        while stack:
            node = stack.pop()
            if node in seen or node in stop:
                continue
            seen.add(node)
            if type(node).__name__ == "AccumulateGrad":
                continue  # a leaf's gradient accumulation, not an op of the model
            node.register_prehook(pre)
            node.register_hook(post)
            stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)

    def remove(self) -> None:
        self._removed = True
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._weights.remove()
