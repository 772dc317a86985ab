"""Layer-level emulation: round what crosses each selected layer's boundary, forward and backward.

Per selected layer, one forward pre-hook and one or two forward hooks do everything (roles are fused so that a
layer costs a few hook calls, however many roles it has):

- ``weight`` / ``bias``: for the duration of the layer's forward the parameter entry in ``module._parameters``
  is swapped for its rounded value, computed through a straight-through estimator, so the gradient reaches the
  real-valued parameter (BinaryNet's clipped STE for binary formats). A hook with ``always_call`` restores the
  parameter even when forward raises; ``state_dict`` and the optimizer never see the swap. Parameters with an
  element-wise format are rounded together, one call per (format, gradient format), and the result is reused
  until a parameter changes (version counter), is replaced, or a backward pass consumed the graph.
- ``input`` + ``grad_input`` and ``activation`` + ``grad_output``: each floating-point tensor entering (leaving)
  the layer passes through one autograd function that rounds it forward and rounds its gradient backward
  (outputs without a forward format get a tensor hook instead). A tensor already rounded to the same
  element-wise format is not rounded again, and layers that keep values on the grid by themselves (ReLU,
  Flatten, Identity, max pooling) skip the rounding of their outputs and, where no sums occur, of their input
  gradients: both would be no-ops.
- ``weight_grad``: for parameters rounded in a group, the gradient is rounded on its way to the parameter (the
  group's backward); with gradient accumulation over several backward passes each pass's contribution is
  rounded and ``.grad`` holds their float32 sum. Other parameters (per-tensor formats, or a ``weight_grad``
  format without a weight format) use ``Tensor.register_post_accumulate_grad_hook``, which rounds ``.grad``
  in place after each accumulation.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from boundfinder import native
from boundfinder.errors import PolicyError
from boundfinder.formats import BinaryFormat, Format
from boundfinder.policy import parameter_role
from boundfinder.quantize import quantize_ste

from ._round import Rounder, is_elementwise_idempotent, is_identity, is_marked, make_rounder, mark
from .inputs import ArgumentSelector

__all__ = ["LayerEmulator"]

# Marks a tensor produced by a boundary rounding with (format key, tensor version), so the next layer can skip
# rounding the same tensor again; an in-place change bumps the version and voids the mark.
_MARK = "_boundfinder_rounded"


class _Boundary(torch.autograd.Function):
    """Round a tensor forward (``fwd``) and its gradient backward (``bwd``); either may be None."""

    @staticmethod
    def forward(ctx, x, fwd, bwd):
        ctx.bwd = bwd
        ctx.set_materialize_grads(False)
        # A custom Function must not return its input as is (autograd would turn it into a view that a later
        # in-place op, e.g. ReLU(inplace=True), may not modify), hence the clone when nothing is rounded forward.
        return fwd(x) if fwd is not None else x.clone()

    @staticmethod
    def backward(ctx, grad):
        if grad is None or ctx.bwd is None:
            return grad, None, None
        return ctx.bwd(grad), None, None


class _WeightSTE(torch.autograd.Function):
    """Rounded parameter forward, identity backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, w, rounder):
        return rounder(w)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _WeightGroup:
    """All parameters rounded to one element-wise format (and whose gradients share one format): rounded in one
    call on their concatenation, cached until a parameter changes (its version counter moves), the parameter
    object is replaced, or a backward pass consumed the graph. Small layers make the per-call cost dominate,
    so one call per format instead of one per parameter is most of the layer level's weight cost; under
    ``no_grad`` (validation) the rounded weights are computed once and reused until the next optimizer step.
    With gradients, the whole group is one autograd node (:class:`_GroupSTE`), not a cat / split / view chain.
    """

    def __init__(self, rounder: Rounder, grad_rounder: Rounder | None,
                 native_specs: tuple[Any, native.Spec, native.Spec] | None = None) -> None:
        self.rounder = rounder
        self.grad_rounder = grad_rounder
        self.params: list[torch.Tensor] = []
        self.tensors: list[torch.Tensor] | None = None
        self.versions: list[int] = []
        self.pointers: list[int] = []
        self.fingerprints: list[int | None] = []
        self.with_graph = False
        self.generation = 0
        # (extension, format, gradient format): with gradients, float32 CPU parameters are rounded by one C++
        # node (``round_params``) instead of _GroupSTE; it rounds the gradients and, when its backward runs,
        # writes its generation into ``consumed`` (read through a NumPy view of it: no tensor op)
        self.native_specs = native_specs
        self.consumed = torch.zeros(1, dtype=torch.int64) if native_specs is not None else None
        self.consumed_view = self.consumed.numpy() if native_specs is not None else None
        self.native_graph = False  # whether the current graph is round_params'

    def add(self, param: torch.Tensor) -> int:
        """The index of ``param`` in the group; a parameter already in it (tied weights: one Parameter held by
        several layers) keeps its one entry, so every use shares one rounded tensor and the group's backward
        rounds the sum of their gradients once, as for a layer called twice."""
        for i, p in enumerate(self.params):
            if p is param:
                return i
        self.params.append(param)
        return len(self.params) - 1

    def get(self, index: int, param: torch.Tensor) -> torch.Tensor:
        if param is not self.params[index]:  # the module got a new Parameter object
            self.params[index] = param
            self.tensors = None
        if (
            self.tensors is None
            or param._version != self.versions[index]
            or param.data_ptr() != self.pointers[index]
            or (not self.with_graph and torch.is_grad_enabled() and param.requires_grad)
            or (self.native_graph and self.consumed_view[0] >= self.generation)
            or (not self.with_graph and not self._same_content(index, param))
        ):
            self._compute()
        return self.tensors[index]

    def _same_content(self, index: int, param: torch.Tensor) -> bool:
        """Whether ``param`` still holds the bytes its cached rounding was computed from. Writes through
        ``param.data`` (``p.data.mul_(2)``, ``p.data.copy_(ema)``) change the values without moving the version
        counter, so rounded weights reused across forwards without gradients (evaluation) are keyed on a
        fingerprint of the bytes too (native extension, float32 CPU: about a read of the parameter); a
        parameter that cannot be fingerprinted is rounded again at every forward instead."""
        fp = self.fingerprints[index]
        return fp is not None and _fingerprint(param) == fp

    def round_all(self, params: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat([p.reshape(-1) for p in params]) if len(params) > 1 else params[0].reshape(-1)
        rounded = self.rounder(flat)
        pieces = [rounded] if len(params) == 1 else rounded.split([p.numel() for p in params])
        # each in its parameter's layout (a channels_last weight stays channels_last: the layer then computes
        # as it does unemulated, and as the native path's copies, which keep the layout)
        return [_with_layout(piece.view(p.shape), p) for piece, p in zip(pieces, params, strict=True)]

    def _compute(self) -> None:
        params = self.params
        self.native_graph = False
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            self.generation += 1
            if self.native_specs is not None and native.all_usable(params):
                ext, spec, grad_spec = self.native_specs
                self.tensors = ext.round_params(params, spec, grad_spec, self.consumed, self.generation)
                self.native_graph = True
            else:
                self.tensors = list(_GroupSTE.apply(self, *params))
            self.with_graph = True
        else:
            self.tensors = self.round_all(params)
            self.with_graph = False
        self.versions = [p._version for p in params]
        self.pointers = [p.data_ptr() for p in params]
        # rounded weights kept for several forwards (no graph) are keyed on their parameters' bytes as well; a
        # graph's are used by one forward and backward, keyed on version and data pointer only
        self.fingerprints = [] if self.with_graph else [_fingerprint(p) for p in params]

    def clear(self) -> None:
        self.tensors = None
        self.native_graph = False


def _fingerprint(t: torch.Tensor) -> int | None:
    """A 64-bit hash of a float32 CPU tensor's bytes (native extension), or None where none can be taken."""
    if not (t.is_cpu and t.dtype is torch.float32 and t.is_contiguous()
            and type(t) in (torch.Tensor, nn.Parameter)):
        return None
    ext = native.load()
    return ext.fingerprint(t) if ext is not None else None


def _with_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` (contiguous, ``like``'s shape) with ``like``'s strides, where ``like`` is dense and they differ
    (strides differ even between tensors that both count as contiguous, along dimensions of size 1)."""
    if t.stride() == like.stride():
        return t
    out = torch.empty_like(like)
    return out.copy_(t) if out.stride() != t.stride() else t


class _GroupSTE(torch.autograd.Function):
    """Round a group's parameters (one call on their concatenation); backward: each gradient straight through,
    rounded to the group's ``weight_grad`` format when it has one (again one call on the concatenation).
    One node for the whole group: the cat / split / view chain it replaces cost a dozen autograd nodes."""

    @staticmethod
    def forward(ctx, group, *params):
        ctx.group = group
        ctx.generation = group.generation
        ctx.set_materialize_grads(False)
        return tuple(group.round_all(params))

    @staticmethod
    def backward(ctx, *grads):
        group = ctx.group
        if group.generation == ctx.generation:
            group.tensors = None  # this graph is consumed: the next forward needs a fresh one
        rounder = group.grad_rounder
        if rounder is not None:
            present = [i for i, g in enumerate(grads) if g is not None]
            if present:
                grads = list(grads)
                if len(present) == 1:
                    grads[present[0]] = rounder(grads[present[0]])
                else:
                    flat = rounder(torch.cat([grads[i].reshape(-1) for i in present]))
                    for i, piece in zip(present, flat.split([grads[i].numel() for i in present]), strict=True):
                        grads[i] = piece.view(grads[i].shape)
        return (None, *grads)


class _Side:
    """Forward and backward rounding of one side (inputs or outputs) of a layer.

    ``key``: the mark put on results that are on the forward grid (None: never marked, never skipped).
    ``hook_grad``: round the gradient with a tensor hook on the tensor itself instead of an autograd function;
    used for outputs, where the hook sees exactly the gradient with respect to the layer's output.
    """

    __slots__ = ("bwd", "ext", "fwd", "hook_grad", "key", "nbwd", "nfwd")

    def __init__(self, fwd: Rounder | None, bwd: Rounder | None, key: Any, hook_grad: bool,
                 ext: Any = None, nfwd: native.Spec | None = None, nbwd: native.Spec | None = None) -> None:
        self.fwd = fwd
        self.bwd = bwd
        self.key = key
        self.hook_grad = hook_grad
        # the native extension and its parameters for both passes (``[]``: nothing to round), when it covers
        # both; then float32 CPU tensors get one C++ autograd node instead of a Python function or tensor hook
        self.ext = ext
        self.nfwd = nfwd
        self.nbwd = nbwd

    def apply(self, x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        key = self.key
        fwd = self.fwd
        # (inference tensors, e.g. under Lightning's validate/predict, are never marked: see _round.mark)
        if fwd is not None and key is not None and is_marked(x, _MARK, key):
            fwd = None  # already rounded to this grid (and not modified since): rounding again is a no-op
        grad = x.requires_grad and torch.is_grad_enabled()
        if self.ext is not None and native.usable(x):
            nfwd = self.nfwd if fwd is not None else []
            if grad and fwd is None and self.hook_grad and self.bwd is not None:
                self.ext.hook_grad(x, self.nbwd)  # a C++ hook: no copy, no Python in the backward pass
                out = x
            elif grad and (self.bwd is not None or fwd is not None):
                out = self.ext.round_ste(x, nfwd, self.nbwd)
            else:
                out = self.ext.round(x, nfwd) if fwd is not None else x
        elif fwd is not None:
            # straight through: the gradient passes unchanged, or rounded when the side has a gradient role
            out = _Boundary.apply(x, fwd, self.bwd) if grad else fwd(x)
        elif not grad or self.bwd is None:
            out = x
        elif self.hook_grad:
            x.register_hook(self.bwd)
            out = x
        else:
            out = _Boundary.apply(x, None, self.bwd)
        if key is not None:
            mark(out, _MARK, key)
        return out


# Layers whose output is on the grid of an element-wise format whenever their input is (they select, reorder
# or zero elements), and whose input gradient is on the grid whenever their output gradient is. Rounding
# those again would be a no-op, so it is skipped (max pooling only without overlapping windows, where the
# backward scatters each output gradient to one input without sums). Exact classes only: a subclass may compute
# something else in its forward (a scaled ReLU, an activation standing in for another), so it is rounded.
_GRID_PRESERVING = (nn.ReLU, nn.Flatten, nn.Unflatten, nn.Identity)
_POOL_DIMS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}


def _preserves_grid(module: nn.Module) -> tuple[bool, bool]:
    """(forward preserves the grid, backward preserves the grid)."""
    cls = type(module)
    if cls in _GRID_PRESERVING:
        return True, True
    n = _POOL_DIMS.get(cls)
    if n is not None:
        as_tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * n  # noqa: E731
        kernel, stride, dilation = (as_tuple(module.kernel_size), as_tuple(module.stride or module.kernel_size),
                                    as_tuple(module.dilation))
        disjoint = all(d == 1 for d in dilation) and all(k <= s for k, s in zip(kernel, stride, strict=True))
        return True, disjoint
    return False, False


def _straight_through_grad(rounder: Rounder | None) -> Rounder | None:
    """A gradient rounder for backward passes that build a graph (``create_graph=True``, a gradient penalty):
    there a gradient that requires grad is rounded through a straight-through node, so the double backward
    treats the rounding as the identity, whatever torch ops the rounder uses (the native nodes do the same)."""
    if rounder is None:
        return None

    def round_grad(g: torch.Tensor) -> torch.Tensor:
        if g.requires_grad and torch.is_grad_enabled():
            return _WeightSTE.apply(g, rounder)
        return rounder(g)

    return round_grad


def _mark_backward(rounder: Rounder, key: Any) -> Rounder:
    """Wrap a gradient rounder so it skips gradients already rounded to ``key`` and marks its results."""
    if key is None:
        return rounder

    def round_grad(g: torch.Tensor) -> torch.Tensor:
        if is_marked(g, _MARK, key):
            return g
        out = rounder(g)
        mark(out, _MARK, key)
        return out

    return round_grad


class LayerEmulator:
    """Installs the layer-level hooks for a resolved plan; ``remove()`` takes every one of them away."""

    def __init__(
        self,
        model: nn.Module,
        plan: dict[str, dict[str, Format]],
        rounding: str,
        generator: torch.Generator | None,
        *,
        roles: tuple[str, ...] | None = None,
        outside_dispatch: bool = False,
    ) -> None:
        """``outside_dispatch``: compute rounded weights with Python dispatch disabled (the op level: its mode
        must not round the rounding's own ops)."""
        self._outside_dispatch = outside_dispatch
        self._handles: list[Any] = []
        # id(module) -> [module, {name: real parameter}, depth]: parameters swapped for their rounded values while
        # the module's forward runs; ``depth`` counts nested calls (a module that calls itself, or a parent that
        # swaps a child's parameters and then calls the child), and only the outermost restores
        self._swapped: dict[int, list[Any]] = {}
        self._forwards: list[tuple[nn.Module, Any]] = []  # (module, the forward set on it)
        self._rounders: dict[Format, Rounder] = {}
        self._ext: Any = None  # the native extension, loaded when a rounding of the plan can use it
        self._groups: dict[tuple[Format, Format | None], _WeightGroup] = {}
        self._grad_hooked: set[int] = set()  # parameters whose .grad a post-accumulate hook rounds
        self.rounding = rounding
        self.generator = generator
        self.installed: dict[str, tuple[str, ...]] = {}
        try:
            if any(isinstance(m, nn.DataParallel) for m in model.modules()):
                raise PolicyError(
                    "nn.DataParallel cannot be emulated: it copies the layers for every call and runs the copies "
                    "in threads, which would share one emulation. Use DistributedDataParallel (one process per "
                    "device, each with its own emulated model), or emulate the module inside DataParallel and run "
                    "it on one device."
                )
            modules = dict(model.named_modules())
            if roles is not None:
                plan = {name: {r: f for r, f in formats.items() if r in roles} for name, formats in plan.items()}
            self._tied = self._tied_gradients(modules, plan)
            for name, formats in plan.items():
                self._install(name, modules[name], formats, modules)
            # nn.DataParallel wrapped around the model after this point copies it for each device (its hooks
            # shared with the copies): refuse to run a copy rather than compute with the original's weights
            self._handles.append(model.register_forward_pre_hook(_refuse_replica))
        except BaseException:
            self.remove()  # the model as it was: no hook, no forward, no swapped parameter left behind
            raise

    def _tied_gradients(self, modules: dict[str, nn.Module], plan: dict[str, dict[str, Format]]) -> set[int]:
        """Parameters used by several layers of the plan (tied weights) whose total gradient must be rounded once,
        after autograd summed their uses, by a post-accumulate-grad hook: those whose layers round them to
        different formats (each layer has its own rounded copy, so no single node sees the total). Tied parameters
        rounded to one element-wise format share one entry of their group instead, whose backward sees the total.
        Raises PolicyError when the layers give a tied parameter different ``weight_grad`` formats."""
        uses: dict[int, list[tuple[str, str, Format | None, Format | None]]] = {}
        for name, formats in plan.items():
            for pname, param in modules[name].named_parameters(recurse=False):
                uses.setdefault(id(param), []).append(
                    (name, pname, formats.get(parameter_role(pname)), formats.get("weight_grad")))
        hooked = set()
        for pid, entries in uses.items():
            if len(entries) < 2:
                continue
            grads = {g for *_, g in entries}
            if len(grads) > 1:
                where = ", ".join(f"{n or '<root>'}.{p} (weight_grad {g})" for n, p, _, g in entries)
                raise PolicyError(
                    f"a parameter shared by several layers has one gradient, but the policy rounds it to different "
                    f"weight_grad formats: {where}. Give these layers the same weight_grad format."
                )
            grad_fmt = next(iter(grads))
            if grad_fmt is None or is_identity(grad_fmt):
                continue
            fmts = {f for _, _, f, _ in entries}
            fmt = next(iter(fmts))
            grouped = (len(fmts) == 1 and self._rounder(fmt) is not None and self._key(fmt) is not None
                       and self._key(grad_fmt) is not None)
            if not grouped:
                hooked.add(pid)
        return hooked

    # -- construction -----------------------------------------------------------------------------------------
    def _rounder(self, fmt: Format | None) -> Rounder | None:
        if fmt is None or is_identity(fmt):
            return None
        if fmt not in self._rounders:
            self._rounders[fmt] = make_rounder(fmt, self.rounding, self.generator)
        return self._rounders[fmt]

    def _native(self, fmt: Format | None) -> native.Spec | None:
        """The native extension's parameters for ``fmt`` (``[]``: nothing to round), or None if it cannot
        round it (or is unavailable). Not at the op level, whose dispatch mode must see every rounding op."""
        if fmt is None or is_identity(fmt):
            return []
        if self._outside_dispatch:
            return None
        spec = native.spec(fmt, self.rounding)
        if spec is None:
            return None
        if self._ext is None:
            self._ext = native.load()
        return spec if self._ext is not None else None

    def _key(self, fmt: Format | None) -> Any:
        if fmt is None or not is_elementwise_idempotent(fmt, self.rounding):
            return None
        return (fmt, self.rounding)

    def _side(self, formats: dict[str, Format], fwd_role: str, bwd_role: str, *, output: bool,
              skip_fwd: bool = False, skip_bwd: bool = False) -> _Side | None:
        """``skip_fwd`` / ``skip_bwd``: the layer keeps that pass on the grid by itself (see _preserves_grid)."""
        fwd_fmt, bwd_fmt = formats.get(fwd_role), formats.get(bwd_role)
        fwd = None if skip_fwd else self._rounder(fwd_fmt)
        bwd = None if skip_bwd else _straight_through_grad(self._rounder(bwd_fmt))
        key = self._key(fwd_fmt) if (fwd is not None or skip_fwd) else None
        if fwd is None and bwd is None and key is None:
            return None
        nfwd = self._native(fwd_fmt) if fwd is not None else []
        nbwd = self._native(bwd_fmt) if bwd is not None else []
        if bwd is not None:
            bwd = _mark_backward(bwd, self._key(bwd_fmt))
        if nfwd is None or nbwd is None:
            return _Side(fwd, bwd, key, hook_grad=output)
        return _Side(fwd, bwd, key, hook_grad=output, ext=self._ext, nfwd=nfwd, nbwd=nbwd)

    def _parameter_functions(self, module: nn.Module, formats: dict[str, Format]) -> list[tuple[str, Callable]]:
        """(parameter name, rounding as used in forward) for the module's direct parameters; registers the
        ``weight_grad`` rounding of those that a group's backward does not round."""
        params: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
        layer_grad_fmt = formats.get("weight_grad")
        for pname, param in module.named_parameters(recurse=False):
            fmt = formats.get(parameter_role(pname))
            rounder = self._rounder(fmt)
            # a tied parameter used with different formats: its total gradient is rounded after accumulation
            grad_fmt = None if id(param) in self._tied else layer_grad_fmt
            grad_rounder = self._rounder(grad_fmt)
            if (
                rounder is not None
                and self._key(fmt) is not None
                and (grad_rounder is None or self._key(grad_fmt) is not None)
            ):
                # element-wise formats: one fused rounding per (format, gradient format); the gradient is
                # rounded on its way to the parameter, in the group's backward
                group = self._groups.get((fmt, grad_fmt))
                if group is None:
                    wspec, gspec = self._native(fmt), self._native(grad_fmt)
                    specs = (self._ext, wspec, gspec) if wspec is not None and gspec is not None else None
                    group = self._groups[(fmt, grad_fmt)] = _WeightGroup(
                        rounder, _straight_through_grad(grad_rounder), specs)
                params.append((pname, functools.partial(group.get, group.add(param))))
                grad_rounder = None
            elif rounder is not None:
                params.append((pname, self._weight_function(fmt, rounder)))
            if grad_rounder is None and id(param) in self._tied:
                grad_rounder = self._rounder(layer_grad_fmt)
            if grad_rounder is not None and param.requires_grad and id(param) not in self._grad_hooked:
                # once per parameter, however many layers use it: .grad holds the sum of every use
                self._grad_hooked.add(id(param))
                self._handles.append(param.register_post_accumulate_grad_hook(_grad_hook(grad_rounder)))
        return params

    def _install(self, name: str, module: nn.Module, formats: dict[str, Format],
                 modules: dict[str, nn.Module]) -> None:
        params = self._parameter_functions(module, formats)
        host = _parameter_host(name, module, modules)
        if host is not None and params:
            # a layer whose parameters its parent reads directly (nn.MultiheadAttention's out_proj): they are
            # swapped for their rounded values while the parent's forward runs
            parent, child = host
            self._handles.append(parent.register_forward_pre_hook(
                self._pre_hook(params, None, child=child), with_kwargs=True))
            self._handles.append(parent.register_forward_hook(self._restore_hook(child=child), always_call=True))
        fwd_keeps, bwd_keeps = _preserves_grid(module)
        same_fwd = formats.get("input") == formats.get("activation") and self._key(formats.get("input"))
        same_bwd = formats.get("grad_output") == formats.get("grad_input") and self._key(formats.get("grad_input"))
        inputs = self._side(formats, "input", "grad_input", output=False, skip_bwd=bool(bwd_keeps and same_bwd))
        outputs = self._side(formats, "activation", "grad_output", output=True,
                             skip_fwd=bool(fwd_keeps and same_fwd))
        if not params and inputs is None and outputs is None and "weight_grad" not in formats:
            return
        self.installed[name] = tuple(formats)
        pre_hook = self._pre_hook(params, inputs, ArgumentSelector(module) if inputs is not None else None) \
            if (params or inputs is not None) else None
        output_hook = None
        if outputs is not None:
            # A layer whose backward keeps the grid hands back input gradients that are already rounded: mark
            # them (a hook on its autograd node, no tensor op) so the previous layer does not round them again.
            grad_key = self._key(formats.get("grad_input")) if (bwd_keeps and same_bwd) else None
            # (native gradient rounding needs no marks to skip work: it costs about as much as the check)
            output_hook = _output_hook(outputs, grad_key if outputs.ext is None else None)
        post_hook = self._restore_hook(output_hook) if params else output_hook
        specs = self._fused_specs(module, formats, skip_activation=bool(fwd_keeps and same_fwd),
                                  skip_grad_input=bool(bwd_keeps and same_bwd))
        if specs is not None:
            # nn.Linear on 2-D, nn.Conv{N}d on batched, nn.ReLU on any float32 CPU inputs: one native autograd
            # node does every role; other inputs take the hooks' path, called from the same forward
            forward = _fused_forward(self._ext, specs, dict(params), inputs.key if inputs is not None else None,
                                     outputs.key if outputs is not None else None, pre_hook, post_hook,
                                     always_post=bool(params))
            module.forward = _BoundForward(forward, module)
            self._forwards.append((module, module.forward))
            return
        if pre_hook is not None:
            self._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if params:
            # one hook restores the parameters (always, even when forward raises) and rounds the outputs
            self._handles.append(module.register_forward_hook(post_hook, always_call=True))
        elif output_hook is not None:
            self._handles.append(module.register_forward_hook(output_hook))

    def _fused_specs(self, module: nn.Module, formats: dict[str, Format], *, skip_activation: bool = False,
                     skip_grad_input: bool = False) -> torch.Tensor | None:
        """The native fused layer's parameters, one row per role (``_FUSED_ROLES``), or None where it does not
        apply: not exactly an ``nn.Linear``, a zero-padded ``nn.Conv{1,2,3}d`` with numeric padding or an
        ``nn.ReLU`` that is not in place (a subclass may compute something else; other padding modes pad first;
        an in-place ReLU changes its input), a role format the extension cannot round, a ``forward`` already
        overridden on the instance, or the op level. ``skip_*``: roundings the hooks' path skips as no-ops."""
        if (not FUSE or "forward" in module.__dict__ or self._outside_dispatch or not _fusable(module)
                or _has_hooks(module)):
            return None
        rows = []
        for role in _FUSED_ROLES:
            spec = self._native(formats.get(role))
            if spec is None:
                return None
            # the parameters arrive rounded, by the same functions as on the hooks' path (a group's cached
            # straight-through nodes, which also round their gradients): the node rounds the rest
            skipped = ((role == "activation" and skip_activation) or (role == "grad_input" and skip_grad_input)
                       or role in _PARAMETER_ROLES)
            rows.append([0.0] * 7 if skipped else (spec or [0.0] * 7))
        if self._ext is None:
            return None  # nothing to round at all (every role fp32): the hooks' path has nothing to do either
        return torch.tensor(rows, dtype=torch.float64)

    def _weight_function(self, fmt: Format, rounder: Rounder) -> Callable[[torch.Tensor], torch.Tensor]:
        if isinstance(fmt, BinaryFormat):
            rounding, generator = self.rounding, self.generator

            def binary(w: torch.Tensor) -> torch.Tensor:
                # BinaryNet's clipped straight-through estimator lives in quantize_ste
                if torch.is_grad_enabled() and w.requires_grad:
                    return quantize_ste(w, fmt, rounding, generator=generator)
                return rounder(w)

            return binary

        def ste(w: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled() and w.requires_grad:
                return _WeightSTE.apply(w, rounder)
            return rounder(w)

        return ste

    # -- hooks ------------------------------------------------------------------------------------------------
    def _pre_hook(self, params, inputs: _Side | None, selector: ArgumentSelector | None = None, *,
                  child: str | None = None):
        """Swap the parameters in (those of the module, or of its child ``child``) and round the data inputs."""
        swapped = self._swapped
        guard = torch._C._DisableTorchDispatch if self._outside_dispatch else contextlib.nullcontext
        if inputs is not None:
            apply = inputs.apply

            def round_arg(a: Any) -> Any:
                return apply(a) if isinstance(a, torch.Tensor) else tree_map(apply, a)

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict):
            if module.__dict__.get("_is_replica"):
                _refuse_replica(module, args)
            if params:
                owner = module if child is None else module._modules[child]
                entry = swapped.get(id(owner))
                if entry is not None:
                    entry[2] += 1  # a nested call: the outer swap stays, and the outer restore puts them back
                else:
                    originals = {}
                    with guard():
                        for pname, fn in params:
                            p = owner._parameters[pname]
                            if p is None:
                                continue
                            originals[pname] = p
                            owner._parameters[pname] = fn(p)
                    swapped[id(owner)] = [owner, originals, 1]
            if inputs is not None:
                return selector.apply(round_arg, args, kwargs)
            return None

        return pre_hook

    def _restore_hook(self, output_hook=None, *, child: str | None = None):
        swapped = self._swapped

        def restore(module: nn.Module, args: tuple, output: Any) -> Any:
            owner = module if child is None else module._modules[child]
            entry = swapped.get(id(owner))
            if entry is not None:
                entry[2] -= 1
                if entry[2] == 0:
                    del swapped[id(owner)]
                    owner._parameters.update(entry[1])
            # (when forward raised, ``output`` is None and the exception propagates whatever this returns)
            return output_hook(module, args, output) if output_hook is not None and output is not None else None

        return restore

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, forward in self._forwards:
            if module.__dict__.get("forward") is forward:
                del module.forward
        self._forwards.clear()
        # Only reachable if remove() runs inside a forward: put the real parameters back.
        for module, originals, _depth in self._swapped.values():
            module._parameters.update(originals)
        self._swapped.clear()
        for group in self._groups.values():
            group.clear()


# Whether emulators built from now on fuse nn.Linear, nn.Conv{N}d and nn.ReLU layers into one native node (tests
# turn it off to check the hooks' path, which records what it rounds where a spy can see it, and to compare).
FUSE = True
# The roles of the native fused layers, in the order of their parameter rows (csrc/round.cpp, ``Role``).
_FUSED_ROLES = ("input", "weight", "bias", "activation", "grad_output", "grad_input", "weight_grad")
# Roles of the fused node that emulation leaves to the parameters' own rounding (so that a layer used twice in
# one forward gets its weight gradient rounded once, summed over both uses, as on the hooks' path).
_PARAMETER_ROLES = ("weight", "bias", "weight_grad")
# The batched input rank each fused layer type takes (unbatched inputs take the hooks' path; None: any rank).
_FUSED_RANK = {nn.Linear: 2, nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5, nn.ReLU: None}


class _BoundForward:
    """The forward set on a fused layer's instance: ``fn`` called with the module. A deep copy of the model
    binds the copy; pickling (``torch.save`` of the whole model) is refused with a message, as it fails on
    the hooks' path (a bound method would pickle as the class's plain forward and load without emulation)."""

    __slots__ = ("fn", "module")

    def __init__(self, fn: Callable, module: nn.Module) -> None:
        self.fn = fn
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(self.module, *args, **kwargs)

    def __deepcopy__(self, memo: dict) -> _BoundForward:
        return _BoundForward(self.fn, copy.deepcopy(self.module, memo))

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            f"an emulated {type(self.module).__name__} cannot be pickled (its emulation is made of closures): "
            "save the model's state_dict() instead, or remove the emulation first (Emulation.remove())"
        )


def _has_hooks(module: nn.Module) -> bool:
    """Whether hooks of someone else's are on the module (or on every module) already: they would run around
    the fused node instead of around the roundings, so such a layer keeps the hooks' path."""
    from torch.nn.modules import module as m

    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or m._global_forward_hooks or m._global_forward_pre_hooks
                or m._global_backward_hooks or m._global_backward_pre_hooks)


def _fusable(module: nn.Module) -> bool:
    cls = type(module)
    if cls is nn.Linear:
        return True
    if cls is nn.ReLU:
        return not module.inplace
    return cls in _FUSED_RANK and module.padding_mode == "zeros" and not isinstance(module.padding, str)


def _fused_forward(ext: Any, specs: torch.Tensor, params: dict[str, Callable], input_key: Any, output_key: Any,
                   pre_hook, post_hook, *, always_post: bool):
    """The forward set on an emulated ``nn.Linear`` or ``nn.Conv{N}d`` (bound to it: a deep copy of the model
    binds the copy).

    ``input_key`` / ``output_key``: the marks of the input and output grids, as the hooks' path uses them (an
    input already on the input grid is not rounded again; the output is marked for the next layer).
    ``params``: the rounding of each parameter the layer rounds (by name), as the hooks' path swaps them in.
    ``pre_hook`` / ``post_hook``: the hooks' path, for inputs the native node does not take."""
    round_weight = params.get("weight")
    round_bias = params.get("bias")

    def forward(self: nn.Module, input: Any) -> Any:
        cls = type(self)
        if cls is nn.ReLU:
            if isinstance(input, torch.Tensor) and native.usable(input):
                out = ext.fused_relu(input, specs, input_key is None or not is_marked(input, _MARK, input_key))
                if output_key is not None:
                    mark(out, _MARK, output_key)
                return out
            return hooks_path(self, input)
        weight, bias = self.weight, self.bias
        if (
            isinstance(input, torch.Tensor)
            and input.dim() == _FUSED_RANK[cls]
            and native.usable(input)
            and native.usable(weight)
            and (bias is None or native.usable(bias))
        ):
            if round_weight is not None:
                weight = round_weight(weight)
            if round_bias is not None and bias is not None:
                bias = round_bias(bias)
            round_input = input_key is None or not is_marked(input, _MARK, input_key)
            if cls is nn.Linear:
                out = ext.fused_linear(input, weight, bias, specs, round_input)
            else:
                out = ext.fused_conv(input, weight, bias, specs, self.stride, self.padding, self.dilation,
                                     self.groups, round_input)
            if output_key is not None:
                mark(out, _MARK, output_key)
            return out
        return hooks_path(self, input)

    def hooks_path(self: nn.Module, input: Any) -> Any:
        cls = type(self)
        args: tuple = (input,)
        if pre_hook is not None:
            changed = pre_hook(self, args, {})
            if changed is not None:
                args = changed[0]
        if post_hook is None:
            return cls.forward(self, *args)
        out = None
        try:
            out = cls.forward(self, *args)
        finally:
            if always_post or out is not None:
                result = post_hook(self, args, out)
        return out if result is None else result

    return forward


def _output_hook(outputs: _Side, grad_key: Any = None):
    def mark_grads(grad_inputs: tuple, grad_outputs: tuple) -> None:
        for g in grad_inputs:
            if g is not None:
                mark(g, _MARK, grad_key)

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            out = outputs.apply(output)
            if grad_key is not None and out.grad_fn is not None and torch.is_grad_enabled():
                out.grad_fn.register_hook(mark_grads)
            return out
        return tree_map(outputs.apply, output)

    return hook


def _grad_hook(rounder: Rounder):
    def hook(param: torch.Tensor) -> None:
        if param.grad is not None:
            with torch.no_grad():
                param.grad.copy_(rounder(param.grad))

    return hook


# Layers whose forward reads a child's parameters directly instead of calling the child: the child's parameter
# roles are applied while the parent's forward runs (nn.MultiheadAttention passes out_proj.weight and
# out_proj.bias to F.multi_head_attention_forward; out_proj's own forward never runs).
_PARAMETER_CHILDREN: dict[type, tuple[str, ...]] = {nn.MultiheadAttention: ("out_proj",)}


def _parameter_host(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> tuple[nn.Module, str] | None:
    """(parent, attribute name) when the parent's forward uses ``module``'s parameters without calling it."""
    if not name:
        return None
    parent_name, _, attr = name.rpartition(".")
    parent = modules.get(parent_name)
    if parent is None or parent._modules.get(attr) is not module:
        return None
    for cls in type(parent).__mro__:
        if attr in _PARAMETER_CHILDREN.get(cls, ()):
            return parent, attr
    return None


def _refuse_replica(module: nn.Module, args: Any) -> None:
    if module.__dict__.get("_is_replica"):
        raise PolicyError(
            f"an emulated {type(module).__name__} is running as an nn.DataParallel replica: DataParallel copies "
            "the layers for each device and call and runs them in threads, which would share one emulation (and "
            "compute with the original's weights). Use DistributedDataParallel, one process per device, each "
            "with its own emulated model."
        )
