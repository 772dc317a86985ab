"""The Triton path for CUDA tensors (``triton_kernels.py``): one hand-written kernel per element-wise float or
fixed-point rounding, with the format and the stochastic key as scalar arguments.

``quantize`` and emulation's rounders call it for contiguous float32 CUDA tensors. Where Triton is missing, a
kernel fails to compile, or ``BOUNDFINDER_TRITON=0`` is set, they keep the torch.compile path (the same results;
one log line says why).
"""

from __future__ import annotations

import functools
import logging
import os
import types
from collections.abc import Callable

import torch

from boundfinder import kernels
from boundfinder.formats import FixedPointFormat, FloatFormat, Format

log = logging.getLogger("boundfinder")

_module: types.ModuleType | None = None
_tried = False
# The device the kernels run on; tests under Triton's CPU interpreter (TRITON_INTERPRET=1) set "cpu".
DEVICE_TYPE = "cuda"


def enabled() -> bool:
    return os.environ.get("BOUNDFINDER_TRITON", "1") != "0"


def load() -> types.ModuleType | None:
    """``boundfinder.triton_kernels``, or None (with one log line) where Triton cannot be imported."""
    global _module, _tried
    if not _tried:
        _tried = True
        try:
            from boundfinder import triton_kernels
        except Exception as exc:  # noqa: BLE001 - missing, or broken on import: either way, the other path
            log.warning("boundfinder: Triton is not importable (%s); CUDA tensors are rounded by torch.compile's "
                        "kernels, which give identical results more slowly.", exc)
        else:
            _module = triton_kernels
    return _module


def failed(exc: Exception) -> None:
    """A Triton kernel failed to compile or launch: say so once and use the torch.compile path from now on.
    Running out of device memory is no kernel failure: it is raised again, as the other path would raise it."""
    global _module
    if isinstance(exc, torch.OutOfMemoryError):
        raise exc
    _module = None
    log.warning("boundfinder: a Triton rounding kernel failed (%s: %s); CUDA tensors are rounded by "
                "torch.compile's kernels from now on (identical results, slower).", type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "")


def usable(x: torch.Tensor) -> bool:
    """Whether the Triton kernels may round ``x``: a contiguous float32 tensor on a CUDA device, plain (no
    subclass, no fake tensor), outside Python dispatch modes and functorch transforms (a kernel's raw pointers
    would bypass them), with Triton importable and not switched off."""
    return (
        x.device.type == DEVICE_TYPE
        and (type(x) is torch.Tensor or type(x) is torch.nn.Parameter)
        and x.dtype is torch.float32
        and x.is_contiguous()
        and not x.is_neg()  # a lazily negated view: its storage holds the other sign
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch.compiler.is_compiling()  # dynamo traces the torch path
        and torch._C._functorch.peek_interpreter_stack() is None
        and enabled()
        and load() is not None
    )


@functools.lru_cache(maxsize=256)
def kernel(fmt: Format, mode: int) -> Callable[..., torch.Tensor] | None:
    """``f(x, key, out=None)`` rounding a tensor that ``usable`` accepts to ``fmt`` with rounding mode ``mode``
    (``kernels.MODE``; ``key``: ``kernels.seed_key(seed)``, used by stochastic rounding); None for formats the
    Triton kernels do not cover (int affine, dynamic fixed point, binary, block) or where Triton is missing."""
    tk = load()
    if tk is None:
        return None
    if isinstance(fmt, FloatFormat):
        fields = kernels.float_fields(fmt)
        overflow, variant = kernels.OVERFLOW[fmt.overflow], kernels.float_variant(fmt)
        return lambda x, key, out=None: tk.round_float(x, fields, mode, overflow, variant, key, out)
    if isinstance(fmt, FixedPointFormat):
        fixed = kernels.fixed_fields(fmt)
        return lambda x, key, out=None: tk.round_fixed(x, *fixed, mode, key, out)
    return None


def try_round(x: torch.Tensor, fmt: Format, mode: int, seed: int | None,
              out: torch.Tensor | None = None) -> torch.Tensor | None:
    """``x`` (which ``usable`` accepts) rounded to ``fmt`` by its Triton kernel, into ``out`` if given (it may be
    ``x``); ``seed``: ``draw_seed``'s for stochastic rounding, else None. None for the formats the kernels do
    not cover, and where a kernel failed (``failed`` has said so; the caller takes the torch path)."""
    kern = kernel(fmt, mode)
    if kern is None:
        return None
    try:
        return kern(x, 0 if seed is None else kernels.seed_key(seed), out)
    except Exception as exc:  # noqa: BLE001 - any compiler or driver failure: the torch path is identical
        failed(exc)
        return None
