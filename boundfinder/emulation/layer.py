"""Layer-level emulation: round what crosses each selected layer's boundary, forward and backward.

Per selected layer, one forward pre-hook and one forward hook do everything (roles are fused so that a layer
costs two hook calls, however many roles it has):

- ``weight`` / ``bias``: for the duration of the layer's forward the parameter entry in ``module._parameters``
  is swapped for its rounded value, computed through a straight-through estimator, so the gradient reaches the
  real-valued parameter unchanged (BinaryNet's clipped STE for binary formats). A hook with ``always_call``
  restores the parameter even when forward raises; ``state_dict`` and the optimizer never see the swap.
- ``input`` + ``grad_input`` and ``activation`` + ``grad_output``: each floating-point tensor entering (leaving)
  the layer passes through one autograd function that rounds it forward and rounds its gradient backward.
  A tensor already rounded to the same element-wise format by the previous layer is not rounded again.
- ``weight_grad``: ``Tensor.register_post_accumulate_grad_hook`` rounds ``param.grad`` in place after each
  accumulation (so with gradient accumulation the running sum is kept in the format).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from boundfinder.formats import BinaryFormat, Format
from boundfinder.policy import parameter_role
from boundfinder.quantize import quantize_ste

from ._round import Rounder, is_elementwise_idempotent, is_identity, make_rounder

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


class _Side:
    """Forward and backward rounding of one side (inputs or outputs) of a layer."""

    __slots__ = ("bwd", "fwd", "key", "skip_key")

    def __init__(self, fwd: Rounder | None, bwd: Rounder | None, key: Any, bwd_key: Any) -> None:
        self.fwd = fwd
        self.bwd = bwd
        self.key = key  # mark put on forward results (None: results are not idempotent, never skipped)
        self.skip_key = bwd_key

    def apply(self, x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        key = self.key
        fwd = self.fwd
        if key is not None and not x.is_inference() and getattr(x, _MARK, None) == (key, x._version):
            fwd = None  # already rounded to this grid (and not modified since): rounding again is a no-op
        if self.bwd is not None and x.requires_grad and torch.is_grad_enabled():
            out = _Boundary.apply(x, fwd, self.bwd)
        elif fwd is not None:
            out = fwd(x)
        else:
            return x
        if key is not None and not out.is_inference():
            setattr(out, _MARK, (key, out._version))
        return out


def _mark_backward(rounder: Rounder, key: Any) -> Rounder:
    """Wrap a gradient rounder so it skips gradients already rounded to ``key`` and marks its results."""
    if key is None:
        return rounder

    def round_grad(g: torch.Tensor) -> torch.Tensor:
        if getattr(g, _MARK, None) == (key, g._version):
            return g
        out = rounder(g)
        setattr(out, _MARK, (key, out._version))
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
    ) -> None:
        self._handles: list[Any] = []
        self._swapped: dict[int, tuple[nn.Module, dict[str, nn.Parameter]]] = {}
        self._rounders: dict[Format, Rounder] = {}
        self.rounding = rounding
        self.generator = generator
        self.installed: dict[str, tuple[str, ...]] = {}
        modules = dict(model.named_modules())
        for name, formats in plan.items():
            if roles is not None:
                formats = {r: f for r, f in formats.items() if r in roles}
            self._install(name, modules[name], formats)

    # -- construction -----------------------------------------------------------------------------------------
    def _rounder(self, fmt: Format | None) -> Rounder | None:
        if fmt is None or is_identity(fmt):
            return None
        if fmt not in self._rounders:
            self._rounders[fmt] = make_rounder(fmt, self.rounding, self.generator)
        return self._rounders[fmt]

    def _key(self, fmt: Format | None) -> Any:
        if fmt is None or not is_elementwise_idempotent(fmt, self.rounding):
            return None
        return (fmt, self.rounding)

    def _side(self, formats: dict[str, Format], fwd_role: str, bwd_role: str) -> _Side | None:
        fwd, bwd = self._rounder(formats.get(fwd_role)), self._rounder(formats.get(bwd_role))
        if fwd is None and bwd is None:
            return None
        bwd_key = self._key(formats.get(bwd_role)) if bwd is not None else None
        if bwd is not None:
            bwd = _mark_backward(bwd, bwd_key)
        return _Side(fwd, bwd, self._key(formats.get(fwd_role)) if fwd is not None else None, bwd_key)

    def _install(self, name: str, module: nn.Module, formats: dict[str, Format]) -> None:
        params: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
        for pname, param in module.named_parameters(recurse=False):
            fmt = formats.get(parameter_role(pname))
            rounder = self._rounder(fmt)
            if rounder is not None:
                params.append((pname, self._weight_function(fmt, rounder)))
            grad_rounder = self._rounder(formats.get("weight_grad"))
            if grad_rounder is not None and param.requires_grad:
                self._handles.append(param.register_post_accumulate_grad_hook(_grad_hook(grad_rounder)))
        inputs = self._side(formats, "input", "grad_input")
        outputs = self._side(formats, "activation", "grad_output")
        if not params and inputs is None and outputs is None and "weight_grad" not in formats:
            return
        self.installed[name] = tuple(formats)
        if params or inputs is not None:
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(params, inputs), with_kwargs=True))
        if params:
            self._handles.append(module.register_forward_hook(self._restore_hook(), always_call=True))
        if outputs is not None:
            self._handles.append(module.register_forward_hook(_output_hook(outputs)))

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
    def _pre_hook(self, params, inputs: _Side | None):
        swapped = self._swapped

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict):
            if params and id(module) not in swapped:  # a re-entrant call keeps the outer swap
                originals = {}
                for pname, fn in params:
                    p = module._parameters[pname]
                    if p is None:
                        continue
                    originals[pname] = p
                    module._parameters[pname] = fn(p)
                swapped[id(module)] = (module, originals)
            if inputs is not None:
                args = tuple(tree_map(inputs.apply, a) if not isinstance(a, torch.Tensor) else inputs.apply(a)
                             for a in args)
                if kwargs:
                    kwargs = tree_map(inputs.apply, kwargs)
                return args, kwargs
            return None

        return pre_hook

    def _restore_hook(self):
        swapped = self._swapped

        def restore(module: nn.Module, args: tuple, output: Any) -> None:
            entry = swapped.pop(id(module), None)
            if entry is not None:
                module._parameters.update(entry[1])

        return restore

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        # Only reachable if remove() runs inside a forward: put the real parameters back.
        for module, originals in self._swapped.values():
            module._parameters.update(originals)
        self._swapped.clear()


def _output_hook(outputs: _Side):
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return outputs.apply(output)
        return tree_map(outputs.apply, output)

    return hook


def _grad_hook(rounder: Rounder):
    def hook(param: torch.Tensor) -> None:
        if param.grad is not None:
            with torch.no_grad():
                param.grad.copy_(rounder(param.grad))

    return hook
