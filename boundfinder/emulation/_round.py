"""Rounders: ``make_rounder(fmt, rounding, generator)`` -> a function tensor -> rounded tensor.

Emulation rounds many small tensors (a layer's bias, an 8x8 activation), where ``quantize``'s fixed cost of
about 40 eager ops (~100 us on CPU) dominates the layer's own work. For the most used cases a rounder uses an
equivalent that costs a few ops, each verified bit for bit against ``quantize`` in tests/emulation/test_round.py:

- ``fp32`` (and any float format equal to float32): identity, no op at all;
- ``nearest`` with fp16 / bf16 / e5m2 on float32 tensors: a cast to the torch dtype and back (the conversion is
  round-to-nearest-even with IEEE overflow). Not e4m3fn: torch's float8_e4m3fn cast saturates where the OCP
  format (and ``quantize``) overflows to NaN, and its conversion back to float32 is slow on CPU;
- ``nearest`` with ``fn`` formats whose overflow is NaN (e4m3fn): divide by the element's quantum (a power of
  two built from the exponent bits), round half to even, multiply back; about ten float ops (from 2**17
  elements on, where compiled code runs, quantize's one-pass kernel instead);
- ``nearest`` / ``truncate`` with ``e8m{M}`` (float32's exponent range, IEEE overflow): one integer rounding of
  the float32 word. Subnormals need no special case because the format's subnormal quantum is the float32 word's
  bit ``23 - M``; NaN inputs get their quiet bit set because rounding a NaN payload can carry it into infinity
  (so a NaN stays NaN, its payload bits may differ from ``quantize``'s).

Everything else calls ``quantize``. Where the native extension (boundfinder/native.py) is built and covers the
format, float32 CPU tensors go through its one-pass kernel instead, with the same results; the paths above
serve other tensors and machines without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from boundfinder import gpu, kernels, native
from boundfinder.formats import FixedPointFormat, FloatFormat, Format, parse_format
from boundfinder.quantize import draw_seed, quantize, quantize_with_seed

__all__ = ["Rounder", "is_elementwise_idempotent", "is_identity", "is_marked", "make_rounder", "mark"]

Rounder = Callable[[torch.Tensor], torch.Tensor]

_FP32 = FloatFormat(exp_bits=8, man_bits=23)
# From this many float32 elements on, an ``fn`` rounder calls quantize's compiled kernel instead of its float
# arithmetic. Measured inside training steps, not alone: alone (CPU, one thread) the two are even at 32,768
# elements (29.8 and 31.3 us) and the compiled kernel wins above (131,072: 120 -> 65 us), but in an MLP's
# layer-level step (activations of 32,768 elements) it made the step slower (2.56x -> 2.8x of plain), and
# LeNet's 65,536-element tensors gained nothing. 262,144 elements: 305 -> 197 us; 2**20: 1803 -> 539 us.
FN_COMPILED_MIN_NUMEL = 1 << 17
# Emulation's calls of quantize run compiled from this many elements on (kernels.compile_from).
EMULATION_COMPILE_FROM = 2
_CASTS = {
    FloatFormat(exp_bits=5, man_bits=10): torch.float16,
    FloatFormat(exp_bits=8, man_bits=7): torch.bfloat16,
    FloatFormat(exp_bits=5, man_bits=2): torch.float8_e5m2,
}


def is_identity(fmt: Format) -> bool:
    """Whether rounding float32 to ``fmt`` never changes a value (fp32 itself), whatever the rounding mode."""
    return fmt == _FP32


def is_elementwise_idempotent(fmt: Format, rounding: str) -> bool:
    """Whether rounding an already rounded tensor again is a no-op, so a second rounding can be skipped.

    True for element-wise float and fixed-point formats with deterministic rounding; not for formats whose
    scale depends on the whole tensor (int affine, dynamic fixed point, block, binary with a mean scale), nor for
    stochastic rounding (which would draw again; on the grid it is a no-op too, but skipping is only a saving).
    """
    return isinstance(fmt, (FloatFormat, FixedPointFormat)) and rounding != "stochastic"


def _e8_word_rounder(man_bits: int, rounding: str) -> Rounder:
    d = 23 - man_bits
    keep = ~((1 << d) - 1)
    half = (1 << (d - 1)) - 1

    def round_word(x: torch.Tensor) -> torch.Tensor:
        # Two temporaries, updated in place: on CPU each fresh large temporary costs page faults comparable to
        # the arithmetic itself.
        w = x.view(torch.int32)
        if rounding == "nearest":
            # add just under half an ulp, plus one when the kept lsb is odd, so ties go to even; a carry out of
            # the fraction increments the exponent: exactly rounding into the next binade (or to infinity)
            r = w >> d
            r.bitwise_and_(1).add_(half).add_(w).bitwise_and_(keep)
        else:
            r = w & keep
        # Rounding a NaN payload may carry it into infinity or past the sign bit: OR a quiet NaN word into NaN
        # inputs. The mask is
        # all-ones where the magnitude word exceeds infinity's (the add overflows into the sign bit); integer
        # ops, because comparisons producing bool tensors cost several float ops each on CPU.
        m = w & 0x7FFFFFFF
        m.add_(0x007FFFFF).bitwise_right_shift_(31).bitwise_and_(0x7FC00000)
        return r.bitwise_or_(m).view(torch.float32)

    return round_word


def _fn_float_rounder(fmt: FloatFormat, *, sync_free: bool | None = None) -> Rounder:
    """Round to nearest for formats without infinities whose overflow is NaN (e4m3fn), in float arithmetic.

    ``sync_free``: None picks by device (CPU: a reduction and a host check; elsewhere: no synchronisation);
    tests force each variant.
    """
    min_normal_word = int(torch.tensor(fmt.min_normal, dtype=torch.float32).view(torch.int32))
    shift = fmt.man_bits << 23
    max_finite = fmt.max_finite
    c = math.ldexp(1.0, fmt.emax - fmt.man_bits - 1)  # half an ulp at the top binade
    sqrt_c = math.sqrt(c)
    q_top = math.ldexp(1.0, fmt.emax - fmt.man_bits)  # the quantum of the top binade

    def round_float(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        # quantum = 2**(exponent of x, at least emin) * 2**-man_bits, built as a float32 word; x / quantum is
        # exact (power of two), round_ rounds half to even, and the product is exact again. Infinite inputs stay
        # infinite here and become NaN (the format's overflow value) below. Two temporaries, updated in place.
        # ``out``: where the result goes (may be ``x`` itself: rounding in place).
        qw = x.view(torch.int32) & 0x7F800000
        q = qw.clamp_(min=min_normal_word).sub_(shift).view(torch.float32)
        if (x.is_cpu if sync_free is None else not sync_free):
            # On CPU one reduction of the quanta (never NaN: a NaN or inf input gives a finite 2**(128 - M))
            # tells whether any element reaches the top binade, where overflow is possible; only then is a mask
            # built, since comparisons producing bool tensors cost several float ops each there (as does a
            # tensor comparison before the host read: .item() first).
            top = q.amax().item() >= q_top
            y = torch.div(x, q, out=out).round_().mul_(q)
            if top:
                y.masked_fill_(torch.abs(y, out=q) > max_finite, float("nan"))
            return y
        y = torch.div(x, q, out=out).round_().mul_(q)
        a = torch.abs(y, out=q)
        # Elsewhere, no host synchronisation: with t = min(max - |y|, 0), which is 0 in range and at most -ulp
        # beyond, sqrt(t + c) - sqrt(c) is exactly 0 in range and NaN beyond (c = ulp / 2); y - 0 keeps the sign
        # of zeros.
        a.neg_().add_(max_finite).clamp_(max=0.0).add_(c).sqrt_().sub_(sqrt_c)
        return y.sub_(a)

    return round_float


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
    rounder = _python_rounder(fmt, rounding, generator)
    spec = native.spec(fmt, rounding)
    ext = native.load() if spec is not None else None
    if ext is not None:
        rounder = _with_native(rounder, ext, spec)
    return _with_triton(rounder, fmt, rounding, generator) if isinstance(fmt, (FloatFormat, FixedPointFormat)) \
        else rounder


def _with_triton(base: Rounder, fmt: FloatFormat | FixedPointFormat, rounding: str,
                 generator: torch.Generator | None) -> Rounder:
    """``base`` with the Triton kernel (boundfinder/gpu.py) for the CUDA tensors it takes (``gpu.usable``): one
    launch per rounding at any size; the same results bit for bit, the same random stream as ``quantize``."""
    if rounding not in kernels.MODE:
        return base  # (quantize says what is wrong when it is called)
    mode = kernels.MODE[rounding]
    stochastic = rounding == "stochastic"

    def takes(x: torch.Tensor) -> bool:
        # (stochastic rounding of 2**31 elements or more is refused by quantize: the base path says so)
        return gpu.usable(x, mode) and not (stochastic and x.numel() >= 2**31)

    def launch(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor | None:
        """The kernel's result, or, where it failed, the base path's with the same random bits."""
        seed = draw_seed(generator) if stochastic else None
        result = gpu.try_round(x, fmt, mode, seed, out)
        if result is not None or seed is None:
            return result
        result = quantize_with_seed(x, fmt, rounding, seed)
        return result if out is None else out.copy_(result)

    def rounder(x: torch.Tensor) -> torch.Tensor:
        if takes(x):
            result = launch(x, None)
            if result is not None:
                return result
        return base(x)

    base_in_place = getattr(base, "in_place", None)

    def in_place(t: torch.Tensor) -> None:
        # a tensor autograd tracks is left to torch's own in-place checks (the base path's ops)
        if takes(t) and not (t.requires_grad and torch.is_grad_enabled()):
            done = launch(t, t)
            if done is not None:
                torch.autograd.graph.increment_version(t)  # the kernel wrote behind autograd's back
                return
        if base_in_place is not None:
            base_in_place(t)
        else:
            t.copy_(base(t))

    rounder.elementwise = getattr(base, "elementwise", False)  # type: ignore[attr-defined]
    rounder.in_place = in_place  # type: ignore[attr-defined]
    if getattr(base, "cast_dtype", None) is not None:
        rounder.cast_dtype = base.cast_dtype  # type: ignore[attr-defined]
    return rounder


def _with_native(base: Rounder, ext, spec: native.Spec) -> Rounder:
    """``base`` with the native extension's one-pass kernel for the tensors it takes (float32 on the CPU, outside
    dispatch modes); the same results bit for bit (tests/emulation/test_native.py)."""

    def rounder(x: torch.Tensor) -> torch.Tensor:
        return ext.round(x, spec) if native.usable(x) else base(x)

    base_in_place = getattr(base, "in_place", None)

    def in_place(t: torch.Tensor) -> None:
        if native.usable(t) and t.is_contiguous():
            ext.round_(t, spec)
        elif base_in_place is not None:
            base_in_place(t)
        else:
            t.copy_(base(t))

    rounder.elementwise = True  # type: ignore[attr-defined]  # (every format the extension rounds is)
    rounder.in_place = in_place  # type: ignore[attr-defined]
    if getattr(base, "cast_dtype", None) is not None:
        rounder.cast_dtype = base.cast_dtype  # type: ignore[attr-defined]
    return rounder


def _python_rounder(fmt: Format, rounding: str, generator: torch.Generator | None) -> Rounder:
    """make_rounder without the native extension: a fast path in torch ops where one exists, else quantize."""

    def slow(x: torch.Tensor) -> torch.Tensor:
        # emulation rounds the same small tensors at every step: compiled from a few elements on
        with kernels.compile_from(EMULATION_COMPILE_FROM):
            return quantize(x, fmt, rounding, generator=generator)  # a fresh tensor, never a view

    fast: Rounder | None = None
    if rounding == "nearest" and fmt in _CASTS:
        dtype = _CASTS[fmt]

        def fast(x: torch.Tensor) -> torch.Tensor:
            return x.to(dtype).to(torch.float32)

    elif (
        rounding == "nearest"
        and isinstance(fmt, FloatFormat)
        and fmt.encoding == "fn"
        and fmt.overflow == "nan"
        and fmt.subnormals
        and fmt.man_bits >= 1
    ):
        fast = _fn_float_rounder(fmt)
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
        slow.elementwise = is_elementwise_idempotent(fmt, rounding)  # type: ignore[attr-defined]
        return slow

    # The float-arithmetic rounder makes about seven passes over memory; quantize's compiled kernel makes one
    # but costs ~20 us per call: from FN_COMPILED_MIN_NUMEL elements on (and where compiled code runs) it wins.
    fn_compiled_from = FN_COMPILED_MIN_NUMEL if fast.__name__ == "round_float" else None

    def rounder(x: torch.Tensor) -> torch.Tensor:
        # The fast paths are written for float32 data; other dtypes go through quantize, which rounds
        # through float32 and casts back.
        if x.dtype is torch.float32 and (fn_compiled_from is None or x.numel() < fn_compiled_from
                                         or not kernels.compiles(kernels.round_float, x.numel())):
            return fast(x)
        return slow(x)

    rounder.elementwise = True  # type: ignore[attr-defined]  # every fast path is element-wise
    if rounding == "nearest" and fmt in _CASTS:
        dtype = _CASTS[fmt]

        def in_place(t: torch.Tensor) -> None:
            t.copy_(t.to(dtype))  # copy_ converts back to t's dtype: two passes, no temporary of t's size

        rounder.in_place = in_place  # type: ignore[attr-defined]
        # the rounding is a conversion to this dtype and back (batch.py converts many tensors in two foreach calls)
        rounder.cast_dtype = dtype  # type: ignore[attr-defined]
    elif fast is not None and fast.__name__ == "round_float":
        round_float = fast

        def in_place(t: torch.Tensor) -> None:
            if t.dtype is torch.float32:
                round_float(t, out=t)
            else:
                t.copy_(slow(t))

        rounder.in_place = in_place  # type: ignore[attr-defined]
    return rounder


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x

def mark(t: torch.Tensor, name: str, key: object) -> None:
    if not t.is_inference():
        setattr(t, name, (key, t._version))


def is_marked(t: torch.Tensor, name: str, key: object) -> bool:
    m = getattr(t, name, None)
    return m is not None and m[0] == key and not t.is_inference() and m[1] == t._version
