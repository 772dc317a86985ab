"""Rounders: ``make_rounder(fmt, rounding, generator)`` -> a function tensor -> rounded tensor.

Emulation rounds many small tensors (a layer's bias, an 8x8 activation), where ``quantize``'s fixed cost of
about 40 eager ops (~100 us on CPU) dominates the layer's own work. For the most used cases a rounder uses an
equivalent that costs a few ops, each verified bit for bit against ``quantize`` in tests/emulation/test_round.py:

- ``fp32`` (and any float format equal to float32): identity, no op at all;
- ``nearest`` with fp16 / bf16 / e5m2 / e4m3fn on float32 tensors: a cast to the torch dtype and back (the
  hardware conversion is round-to-nearest-even); e4m3fn additionally maps magnitudes above 464 (the tie between
  448 and the first overflow step rounds to even, 448) to NaN, because torch's float8 cast saturates where the
  OCP format (and ``quantize``) overflows to NaN;
- ``nearest`` / ``truncate`` with ``e8m{M}`` (float32's exponent range, IEEE overflow): one integer rounding of
  the float32 word. Subnormals need no special case because the format's subnormal quantum is the float32 word's
  bit ``23 - M``; NaN words are restored explicitly because rounding a NaN payload can carry it into infinity.

Everything else calls ``quantize``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from boundfinder.formats import FloatFormat, Format, parse_format
from boundfinder.quantize import quantize

__all__ = ["Rounder", "is_elementwise_idempotent", "is_identity", "make_rounder"]

Rounder = Callable[[torch.Tensor], torch.Tensor]

_FP32 = FloatFormat(exp_bits=8, man_bits=23)
_CASTS = {
    FloatFormat(exp_bits=5, man_bits=10): torch.float16,
    FloatFormat(exp_bits=8, man_bits=7): torch.bfloat16,
    FloatFormat(exp_bits=5, man_bits=2): torch.float8_e5m2,
}
_E4M3FN = parse_format("e4m3fn")
_E4M3FN_OVERFLOW = 464.0  # midpoint of 448 (max finite) and 480; ties go to 448 (even), above becomes NaN


def is_identity(fmt: Format) -> bool:
    """Whether rounding float32 to ``fmt`` never changes a value (fp32 itself), whatever the rounding mode."""
    return fmt == _FP32


def is_elementwise_idempotent(fmt: Format, rounding: str) -> bool:
    """Whether rounding an already rounded tensor again is a no-op, so a second rounding can be skipped.

    True for element-wise float and fixed-point formats with deterministic rounding; not for formats whose
    scale depends on the whole tensor (int affine, dynamic fixed point, block, binary with a mean scale), nor for
    stochastic rounding (which would draw again; on the grid it is a no-op too, but skipping is only a saving).
    """
    from boundfinder.formats import FixedPointFormat

    return isinstance(fmt, (FloatFormat, FixedPointFormat)) and rounding != "stochastic"


def _e8_word_rounder(man_bits: int, rounding: str) -> Rounder:
    d = 23 - man_bits
    mask = (1 << d) - 1
    keep = ~mask
    half = (1 << (d - 1)) - 1 if d > 0 else 0

    def round_word(x: torch.Tensor) -> torch.Tensor:
        w = x.view(torch.int32)
        # nearest: add just under half an ulp, plus one when the kept lsb is odd, so ties go to even; a carry out
        # of the fraction increments the exponent, which is exactly rounding into the next binade (or to inf)
        w = ((w + ((w >> d) & 1) + half) if rounding == "nearest" else w) & keep
        return torch.where(x.isnan(), x, w.view(torch.float32))

    return round_word


def make_rounder(fmt: Format | str, rounding: str = "nearest", generator: torch.Generator | None = None) -> Rounder:
    """A function rounding a tensor to ``fmt`` with ``rounding``; equal to ``quantize`` bit for bit.

    The result may be the input tensor itself (identity formats); callers must not modify it in place.

    >>> r = make_rounder("e4m3fn")
    >>> r(torch.tensor([0.1, 300.0, 1e6])).tolist()
    [0.1015625, 288.0, nan]
    """
    fmt = parse_format(fmt)
    if is_identity(fmt):
        return _identity

    def slow(x: torch.Tensor) -> torch.Tensor:
        return quantize(x, fmt, rounding, generator=generator)

    fast: Rounder | None = None
    if rounding == "nearest" and fmt in _CASTS:
        dtype = _CASTS[fmt]

        def fast(x: torch.Tensor) -> torch.Tensor:
            return x.to(dtype).to(torch.float32)

    elif rounding == "nearest" and fmt == _E4M3FN:

        def fast(x: torch.Tensor) -> torch.Tensor:
            y = x.to(torch.float8_e4m3fn).to(torch.float32)
            return torch.where(x.abs() > _E4M3FN_OVERFLOW, float("nan"), y)

    elif (
        rounding in ("nearest", "truncate")
        and isinstance(fmt, FloatFormat)
        and fmt.exp_bits == 8
        and fmt.bias == 127
        and fmt.encoding == "ieee"
        and fmt.overflow == "inf"
        and fmt.subnormals
    ):
        fast = _e8_word_rounder(fmt.man_bits, rounding)

    if fast is None:
        return slow

    def rounder(x: torch.Tensor) -> torch.Tensor:
        # The fast paths are written for float32 data; other dtypes go through quantize, which rounds
        # through float32 and casts back.
        if x.dtype is torch.float32:
            return fast(x)
        return slow(x)

    return rounder


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
