"""The Triton path for CUDA tensors: one hand-written kernel per element-wise float or fixed-point rounding and
per MX block rounding, with the format and the stochastic key as scalar arguments (``triton_kernels.py``); for
the formats whose scale is a reduction (integer affine, binary, dynamic fixed point), the reduction and one
rounding kernel that reads its result on the device (``triton_scales.py``).

``quantize`` and emulation's rounders call it for float32, bfloat16 and float16 CUDA tensors (one pass: a
16-bit tensor is widened and narrowed inside the kernel), dense in any layout (contiguous for stochastic
rounding). Where Triton is missing, a kernel fails to compile, or ``BOUNDFINDER_TRITON=0`` is set, they keep the
torch.compile path (the same results; one log line says why).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import types
from collections.abc import Callable

import torch

from boundfinder import kernels
from boundfinder.formats import (
    BinaryFormat,
    BlockFormat,
    DynamicFixedPointFormat,
    FixedPointFormat,
    FloatFormat,
    Format,
    IntFormat,
)

log = logging.getLogger("boundfinder")

_module: types.ModuleType | None = None
_tried = False
# The device the kernels run on; tests under Triton's CPU interpreter (TRITON_INTERPRET=1) set "cpu".
DEVICE_TYPE = "cuda"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_STOCHASTIC = kernels.MODE["stochastic"]


def enabled() -> bool:
    return os.environ.get("BOUNDFINDER_TRITON", "1") != "0"


def load() -> types.ModuleType | None:
    """``boundfinder.triton_kernels`` (``triton_scales`` imported with it), or None (with one log line) where
    Triton cannot be imported."""
    global _module, _tried
    if not _tried:
        _tried = True
        try:
            from boundfinder import triton_kernels, triton_scales  # noqa: F401 - (the second: its import works)
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


def usable(x: torch.Tensor, mode: int) -> bool:
    """Whether the Triton kernels may round ``x`` with rounding mode ``mode`` (``kernels.MODE``): a float32,
    bfloat16 or float16 tensor on a CUDA device, plain (no subclass, no fake tensor), outside Python dispatch
    modes and functorch transforms (a kernel's raw pointers would bypass them), with Triton importable and not
    switched off; contiguous, or for deterministic rounding dense in any layout (channels_last, a transpose: the
    kernel runs over its storage, and the result has its strides). Stochastic rounding takes contiguous tensors
    only: its random stream follows the elements' logical order, as on the CPU."""
    return (
        x.device.type == DEVICE_TYPE
        and (type(x) is torch.Tensor or type(x) is torch.nn.Parameter)
        and x.dtype in _DTYPES
        and (x.is_contiguous() or (mode != _STOCHASTIC and _dense(x)))
        and not x.is_neg()  # a lazily negated view: its storage holds the other sign
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch.compiler.is_compiling()  # dynamo traces the torch path
        and torch._C._functorch.peek_interpreter_stack() is None
        and enabled()
        and load() is not None
    )


def _dense(x: torch.Tensor) -> bool:
    """Whether x's elements fill its storage span without gaps or overlap (in some order of its dimensions)."""
    expected = 1
    for size, stride in sorted(zip(x.shape, x.stride(), strict=True), key=lambda d: d[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


@functools.lru_cache(maxsize=256)
def kernel(fmt: Format, mode: int) -> Callable[..., torch.Tensor | None] | None:
    """``f(x, key, out=None)`` rounding a tensor that ``usable`` accepts to ``fmt`` with rounding mode ``mode``
    (``kernels.MODE``; ``key``: ``kernels.seed_key(seed)``, used by stochastic rounding); None where Triton is
    missing. For block (MX), per-channel integer and per-channel binary formats ``f`` returns None for the
    tensors it does not take (see ``triton_kernels.block_rounder`` and ``triton_scales``)."""
    tk = load()
    if tk is None:
        return None
    from boundfinder import triton_scales as ts

    if isinstance(fmt, IntFormat):
        zero = 0 if fmt.signed else 2 ** (fmt.bits - 1)  # (affine_qparams' symmetric zero point)
        return ts.affine_rounder(fmt.qmin, fmt.qmax, fmt.symmetric, zero, fmt.axis, mode)
    if isinstance(fmt, BinaryFormat):
        return ts.binary_rounder(fmt.scale == "mean", fmt.axis, mode)
    if isinstance(fmt, DynamicFixedPointFormat):
        base = FixedPointFormat(word_bits=fmt.word_bits, frac_bits=0)
        return ts.dynamic_rounder(fmt.word_bits, base.qmin, base.qmax, fmt.overflow_rate, mode)
    if isinstance(fmt, FloatFormat):
        return tk.float_rounder(kernels.float_fields(fmt), mode, kernels.OVERFLOW[fmt.overflow],
                                kernels.float_variant(fmt), bf16_exact(fmt))
    if isinstance(fmt, FixedPointFormat):
        return tk.fixed_rounder(*kernels.fixed_fields(fmt), mode, bf16_exact(fmt))
    if isinstance(fmt, BlockFormat):
        elem = fmt.element
        floating = isinstance(elem, FloatFormat)
        return tk.block_rounder(kernels.float_fields(elem) if floating else None,
                                None if floating else kernels.fixed_fields(elem), fmt.element_emax,
                                fmt.block_size, fmt.axis, mode)
    return None


def bf16_exact(fmt: FloatFormat | FixedPointFormat) -> bool:
    """Whether every finite value of ``fmt`` is a bfloat16 value, so that rounding a bfloat16 tensor to it needs
    no rounding back: at most 8 significant bits, within bfloat16's range at the top. (bfloat16's grid at the
    bottom, 2**-133, is no coarser than any format's: a float format's exponents lie within float32's, so with
    at most 7 fraction bits its smallest step is 2**-133 or more; a fixed-point step is 2**-126 or more.)"""
    if isinstance(fmt, FloatFormat):
        return fmt.man_bits <= 7
    steps = max(-fmt.qmin, fmt.qmax)  # the largest multiple of the step, 2**-frac_bits
    return steps <= 256 and math.ldexp(steps, -fmt.frac_bits) < 2.0**128


def try_round(x: torch.Tensor, fmt: Format, mode: int, seed: int | None,
              out: torch.Tensor | None = None) -> torch.Tensor | None:
    """``x`` (which ``usable`` accepts) rounded to ``fmt`` by its Triton kernel: a new tensor of x's dtype and
    strides, or ``out`` if given (of the same; it may be ``x``). ``seed``: ``draw_seed``'s for stochastic
    rounding, else None. None for the formats the kernels do not cover, and where a kernel failed (``failed``
    has said so; the caller takes the torch path)."""
    kern = kernel(fmt, mode)
    if kern is None:
        return None
    try:
        return kern(x, 0 if seed is None else kernels.seed_key(seed), out)
    except Exception as exc:  # noqa: BLE001 - any compiler or driver failure: the torch path is identical
        failed(exc)
        return None
