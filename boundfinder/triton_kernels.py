"""Hand-written Triton kernels for the element-wise float and fixed-point roundings, and the MX block roundings,
of CUDA tensors.

The same arithmetic as ``kernels.round_float_words``, ``kernels.round_fixed_bits``, ``kernels.round_block_words``
and ``kernels.round_block`` (which stay the reference: tests compare them bit for bit, on the GPU and under
Triton's CPU interpreter), written as one kernel per (mode, overflow, variant, dtype) whose format parameters and
stochastic key are scalar arguments: no parameter tensor to load, no seed to copy to the device, one launch per
call at any size. float32, bfloat16 and float16 tensors are read and written in their own dtype. Import this
module through ``boundfinder.gpu.load()``, which says once in a log line when Triton is missing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import struct
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from boundfinder import kernels

# Elements per program and warps per program (BLOCK / (32 * NUM_WARPS) elements per thread);
# ``python -m benchmarks.gpu_check --sweep`` times the alternatives (BENCHMARKS.md).
BLOCK = 4096
NUM_WARPS = 8

_SCALARS = ["d", "emin32", "man_sub", "max_word", "q_word", "halfq_word", "ovf_nearest", "code_off", "key",
            "tiny_s1", "tiny_s2"]


@triton.jit
def _srl(x, n: tl.constexpr):
    """Logical right shift of int32 words (>> is arithmetic)."""
    return (x >> n) & ((1 << (32 - n)) - 1)


@triton.jit
def _rand30(i, key):
    """``kernels.rand_like``'s flat stream: lowbias32(i ^ key), 30 bits."""
    h = i ^ key
    h = h ^ _srl(h, 16)
    h = h * 0x7FEB352D
    h = h ^ _srl(h, 15)
    h = h * -2073254261  # 0x846CA68B as a wrapped int32
    h = h ^ _srl(h, 16)
    return h & 0x3FFFFFFF


@triton.jit
def _load_words(ptr, offs, mask, IO: tl.constexpr, EVEN: tl.constexpr):
    """The float32 words of the elements at ``offs`` (IO: see _IO): float32 words as stored, bfloat16 words
    widened by a shift (exact, NaN payloads too) or float16 values converted (exact)."""
    if EVEN:
        v = tl.load(ptr + offs, eviction_policy="evict_first")
    else:
        v = tl.load(ptr + offs, mask=mask, other=0, eviction_policy="evict_first")
    if IO == 0:
        w = v
    elif IO == 2:
        w = v.to(tl.float32).to(tl.int32, bitcast=True)
    else:
        w = v.to(tl.int32) << 16
    return w


@triton.jit
def _store_words(ptr, offs, mask, r, IO: tl.constexpr, EVEN: tl.constexpr):
    """Store the float32 words ``r`` in the tensor's dtype (IO: see _IO), converted as torch's ``.to(dtype)``
    converts: to nearest, ties to even, overflow to infinity.

    bfloat16 by integer arithmetic (Triton's interpreter truncates, so its conversion could not be tested): the
    high half, rounded by the low half; with IO 3 the host knows every result is a bfloat16 value, and the high
    half is stored as it is. A NaN must have a zero low half (else rounding could carry it into infinity): the
    kernels' NaN results are their bfloat16 inputs' NaN words or the quiet NaN 0x7FC00000."""
    if IO == 0:
        v = r
    elif IO == 1:
        # (a carry out of the magnitude cannot reach the sign: the largest magnitude, 0x7FFFxxxx, is a NaN)
        v = ((r + 0x7FFF + ((r >> 16) & 1)) >> 16).to(tl.int16)
    elif IO == 2:
        v = r.to(tl.float32, bitcast=True).to(tl.float16)
    else:
        v = (r >> 16).to(tl.int16)
    if EVEN:
        tl.store(ptr + offs, v, eviction_policy="evict_first")
    else:
        tl.store(ptr + offs, v, mask=mask, eviction_policy="evict_first")


@triton.jit
def _offsets(BLOCK: tl.constexpr, WIDE: tl.constexpr):
    if WIDE:  # noqa: SIM108 - a constexpr branch: Triton compiles only the branch taken
        start = tl.program_id(0).to(tl.int64) * BLOCK
    else:
        start = tl.program_id(0) * BLOCK
    return start + tl.arange(0, BLOCK)


@triton.jit(do_not_specialize=_SCALARS)
def _round_float(x_ptr, out_ptr, n, d, emin32, man_sub, max_word, q_word, halfq_word, ovf_nearest, code_off, key,
                 tiny_s1, tiny_s2, MODE: tl.constexpr, OVERFLOW: tl.constexpr, E8: tl.constexpr, ADD: tl.constexpr,
                 IO: tl.constexpr, BLOCK: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr):
    offs = _offsets(BLOCK, WIDE)
    mask = offs < n
    w = _load_words(x_ptr, offs, mask, IO, EVEN)
    r = _round_words(w, offs.to(tl.int32), key, d, emin32, man_sub, max_word, q_word, halfq_word, ovf_nearest,
                     code_off, tiny_s1, tiny_s2, MODE, OVERFLOW, E8, ADD, False)
    _store_words(out_ptr, offs, mask, r, IO, EVEN)


@triton.jit
def _round_words(w, idx, key, d, emin32, man_sub, max_word, q_word, halfq_word, ovf_nearest, code_off, tiny_s1,
                 tiny_s2, MODE: tl.constexpr, OVERFLOW: tl.constexpr, E8: tl.constexpr, ADD: tl.constexpr,
                 FINITE: tl.constexpr):
    """Float32 words ``w`` rounded to the float format of the scalars (``kernels.round_float_words``); ``idx``:
    the elements' indices in the random stream of ``key`` (stochastic rounding). ``FINITE``: every word is +0 or
    a positive normal value (MX blocks' scaled magnitudes; modes nearest, truncate and stochastic, general variant,
    saturating): the sign, NaN and float32-subnormal cases are left out."""
    tl.static_assert(not FINITE or ((MODE == 0 or MODE == 1 or MODE == 4) and OVERFLOW == 2 and not E8))
    if FINITE:
        a = w
        sign = 0
    else:
        a = w & 0x7FFFFFFF
        sign = w ^ a
    if E8:
        dc = d
        mask = (1 << d) - 1
    else:
        # binades below the format's smallest normal (see kernels.round_float_words)
        if FINITE:  # noqa: SIM108 - a constexpr branch (for +0, t is one more than for a subnormal: either rounds to 0)
            t = tl.maximum(emin32 - (a >> 23), 0)
        else:
            t = tl.maximum(emin32 - tl.maximum(a >> 23, 1), 0)
        dc = tl.minimum(d + t, 23)
        mask = (1 << dc) - 1
    if MODE == 0 and ADD:
        # Round to nearest even by the float adder: K is a power of two whose spacing is the value's quantum
        # (2**(e - man_bits) in binade e, the format's smallest quantum below its smallest normal), so |x| + K,
        # in [K, 2K] (|x| < K as man_bits < 23), is rounded to a multiple of the quantum with ties to even, and
        # subtracting K is exact (Sterbenz). Below one quantum this gives 0 or q (q / 2 ties to 0), as the
        # integer path's select does. The host picks this only where every K is finite and the parity of the
        # multiple is the parity of the code (_adder_rounds); lanes at or above the overflow threshold (NaN and
        # infinities too) are replaced below.
        e = a >> 23
        k = (tl.where(e >= emin32, e + d, emin32 + 23 - man_sub) << 23).to(tl.float32, bitcast=True)
        r = ((a.to(tl.float32, bitcast=True) + k) - k).to(tl.int32, bitcast=True)
    elif MODE == 0:
        if E8:  # noqa: SIM108 - as above
            r = a + ((mask + ((a >> dc) & 1)) >> 1)
        else:
            r = a + ((mask + (((a - code_off) >> dc) & 1)) >> 1)
        r = r & ~mask
    elif MODE == 1:
        r = a & ~mask
    elif MODE == 2:
        away = w >= 0
        r = (a + tl.where(away, mask, 0)) & ~mask
    elif MODE == 3:
        away = w < 0
        r = (a + tl.where(away, mask, 0)) & ~mask
    else:
        rbits = _rand30(idx, key)
        if FINITE:  # noqa: SIM108 - as above
            r = (a + (rbits >> (30 - dc))) & ((-1) << dc)
        else:  # (a NaN or infinity must not carry into the next word)
            r = (tl.minimum(a, 0x7F800001) + (rbits >> (30 - dc))) & ((-1) << dc)

    if E8:
        r = tl.where(a > 0x7F800000, a, r)
    else:
        tiny = a < q_word
        if MODE == 0 and ADD:
            pass  # (the adder rounded values under one quantum too)
        elif MODE == 0:
            r = tl.where(tiny, tl.where(a > halfq_word, q_word, 0), r)
        elif MODE == 1:
            r = tl.where(tiny, 0, r)
        elif MODE == 2 or MODE == 3:
            r = tl.where(tiny, tl.where(away & (a > 0), q_word, 0), r)
        else:
            # |x| / q to 30 bits, truncated, as kernels.round_float_words computes it with shifts, here in float
            # arithmetic (off the integer units, which this kernel keeps busiest): for |x| < q the scaling by
            # 2**30 / q (two powers of two, so that neither factor overflows) is exact, since the product lies
            # in [2**-118, 2**30), float32's normal range; conversion truncates. Other lanes are not selected.
            frac = ((a.to(tl.float32, bitcast=True) * tiny_s1) * tiny_s2).to(tl.int32)
            r = tl.where(tiny, q_word & -((frac + rbits) >> 30), r)
        if OVERFLOW == 2 and MODE == 0 and ADD and FINITE:
            r = tl.where(a >= ovf_nearest, max_word, r)
        elif OVERFLOW == 2 and FINITE:
            r = tl.minimum(r, max_word)
        elif OVERFLOW == 2 and MODE == 0 and ADD:
            # (the adder's lanes at or above the threshold hold no rounded value to clamp)
            r = tl.where(a > 0x7F800000, a, tl.where(a >= ovf_nearest, max_word, r))
        elif OVERFLOW == 2:
            r = tl.where(a > 0x7F800000, a, tl.minimum(r, max_word))
        else:
            if OVERFLOW == 0:
                big = tl.maximum(a, 0x7F800000)  # infinity, or the NaN itself
                kept = a
                beyond = 0x7F800000
            else:
                big = 0x7FC00000
                kept = 0x7FC00000
                beyond = 0x7FC00000
            if MODE == 1:
                r = tl.where(a >= 0x7F800000, kept, tl.minimum(r, max_word))
            elif MODE == 0:
                r = tl.where(a >= ovf_nearest, big, r)
            elif MODE == 4:
                r = tl.where(r > max_word, big, r)
            else:
                # IEEE 754: directed rounding toward zero keeps a finite overflow at max_finite
                r = tl.where(r > max_word, tl.where(away, beyond, max_word), r)
                r = tl.where(a >= 0x7F800000, kept, r)
    return r | sign


@triton.jit
def _round_to_integer(c, i, key, MODE: tl.constexpr):
    """``kernels.round_to_integer`` for |c| <= 2**24 (fixed point's saturated values): integer conversion
    truncates toward zero; the other modes step from there, so no math library call is needed."""
    ti = c.to(tl.int32)
    tf = ti.to(tl.float32)
    if MODE == 1:
        return tf
    if MODE == 2:
        return tl.where(tf < c, tf + 1.0, tf)
    fi = tl.where(tf > c, ti - 1, ti)  # floor
    f = fi.to(tl.float32)
    if MODE == 3:
        return f
    g = c - f  # exact, in [0, 1)
    if MODE == 0:
        up = (g > 0.5) | ((g == 0.5) & ((fi & 1) != 0))  # ties to even
    else:
        up = ((g * 1073741824.0).to(tl.int32) + _rand30(i, key)) >= 1073741824
    return tl.where(up, f + 1.0, f)


@triton.jit(do_not_specialize=["scale", "inv", "qmin", "qmax", "key"])
def _round_fixed(x_ptr, out_ptr, n, scale, inv, qmin, qmax, key, MODE: tl.constexpr, IO: tl.constexpr,
                 BLOCK: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr):
    offs = _offsets(BLOCK, WIDE)
    mask = offs < n
    x = _load_words(x_ptr, offs, mask, IO, EVEN).to(tl.float32, bitcast=True)
    r = _fixed_values(x, offs.to(tl.int32), key, scale, inv, qmin, qmax, MODE)
    _store_words(out_ptr, offs, mask, r.to(tl.int32, bitcast=True), IO, EVEN)


@triton.jit
def _fixed_values(x, idx, key, scale, inv, qmin, qmax, MODE: tl.constexpr):
    """Float32 values ``x`` rounded to the fixed-point grid of the scalars (``kernels.round_fixed_bits``)."""
    y = x * scale
    if MODE == 2 or MODE == 3:
        y = tl.where(y == 0.0, x, y)  # a nonzero value under one step still rounds away from zero
    q = _round_to_integer(tl.minimum(tl.maximum(y, qmin), qmax), idx, key, MODE)
    return tl.where(x != x, x, tl.where(q == 0.0, 0.0, q * inv))


@triton.jit(do_not_specialize=[*_SCALARS, "cols", "nb", "total", "emax", "scale", "inv", "qmin", "qmax"])
def _round_block(x_ptr, out_ptr, cols, nb, total, d, emin32, man_sub, max_word, q_word, halfq_word, ovf_nearest,
                 code_off, key, tiny_s1, tiny_s2, emax, scale, inv, qmin, qmax, MODE: tl.constexpr,
                 ADD: tl.constexpr, FIXED: tl.constexpr, LEAN: tl.constexpr, IO: tl.constexpr, BS: tl.constexpr,
                 G: tl.constexpr, PADDED: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr):
    """MX block rounding (``kernels.round_block_words`` for float elements, ``kernels.round_block`` for fixed
    point) of rows of ``cols`` elements, ``nb`` blocks of BS per row (the last one padded with zeros when BS does
    not divide ``cols``), ``total`` blocks in all: G blocks per program, each block's shared exponent from its
    largest magnitude, in registers. ``PADDED``: BS does not divide ``cols``; ``EVEN``: it does, and G divides
    ``total``. Random bits are drawn by the padded index, as the reference draws them over its padded blocks.
    ``LEAN`` (float elements; see ``_lean``): the element format rounds +0 and every magnitude up to 2**-126 to 0 in
    this mode, so the scaled magnitudes need no case for zero or for float32 subnormals, and round without their
    sign (``_round_words``'s FINITE)."""
    if WIDE:
        g = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)[:, None]
    else:
        g = tl.program_id(0) * G + tl.arange(0, G)[:, None]
    j = tl.arange(0, BS)[None, :]
    idx = g * BS + j  # the padded index
    if EVEN:
        offs = idx
        mask = None
    elif not PADDED:  # whole blocks: the padded index is the element's, only the last program has spare lanes
        offs = idx
        mask = g < total
    else:
        row = g // nb
        col = (g - row * nb) * BS + j
        offs = row * cols + col
        mask = (g < total) & (col < cols)
    w = _load_words(x_ptr, offs, mask, IO, EVEN)
    a = w & 0x7FFFFFFF
    sign = w ^ a
    amax = tl.max(a, axis=1, keep_dims=True)  # magnitude words order like their values; NaN above infinity
    # a subnormal amax normalised by an exact scaling by 2**64 (the kernels are compiled without flush to zero)
    amax_p = (amax.to(tl.float32, bitcast=True) * 18446744073709551616.0).to(tl.int32, bitcast=True)
    if FIXED:
        # kernels.round_block: the shared exponent is floor(log2(amax)) - emax (frexp's exponent - 1; -1 for 0)
        floor_log2 = tl.where(amax == 0, -1, tl.where((amax >> 23) == 0, (amax_p >> 23) - (127 + 64),
                                                      (amax >> 23) - 127))
        shared = tl.minimum(tl.maximum(floor_log2 - emax, -127), 127)
        x = w.to(tl.float32, bitcast=True)
        scaled = x * _pow2(-shared)  # exact unless it underflows
        if MODE == 2 or MODE == 3:
            # far under the element's step, a nonzero value must still round away from zero
            tiny = tl.where(x > 0, 1.1754943508222875e-38, -1.1754943508222875e-38)
            scaled = tl.where((scaled == 0.0) & (x != 0.0), tiny, scaled)
        out = (_fixed_values(scaled, idx.to(tl.int32), key, scale, inv, qmin, qmax, MODE)
               * _pow2(shared)).to(tl.int32, bitcast=True)
    else:
        # kernels.round_block_words with float multiplications by powers of two where it moves exponent fields:
        # |x| * 2**k is exact where it is a float32 normal, or where k >= 0; where neither (far under the element's
        # smallest value) 2**-126 stands in, as there; scaling back rounds a float32 subnormal result to nearest
        # even, as its shift does. (No flush to zero: the kernels are compiled without it.)
        e_amax = tl.where((amax >> 23) == 0, (amax_p >> 23) - 64, amax >> 23)  # (<= 0 for a subnormal amax)
        k = -tl.minimum(tl.maximum(e_amax - (127 + emax), -127), 127)  # scaled = x * 2**k
        prod = (a.to(tl.float32, bitcast=True) * _pow2(k)).to(tl.int32, bitcast=True)
        if LEAN:
            # (2**-126 stands in for 0 and float32 subnormals too: all of them round to 0; in a block holding an
            # infinity or NaN, the words are replaced below)
            r = _round_words(tl.maximum(prod, 0x00800000), idx.to(tl.int32), key, d, emin32, man_sub, max_word,
                             q_word, halfq_word, ovf_nearest, code_off, tiny_s1, tiny_s2, MODE, 2, False, ADD, True)
            out = (r.to(tl.float32, bitcast=True) * _pow2(-k)).to(tl.int32, bitcast=True) | sign
        else:
            scaled = tl.where(a == 0, 0, tl.where(k >= 0, prod, tl.maximum(prod, 0x00800000)))
            r = _round_words(scaled | sign, idx.to(tl.int32), key, d, emin32, man_sub, max_word, q_word,
                             halfq_word, ovf_nearest, code_off, tiny_s1, tiny_s2, MODE, 2, False, ADD, False)
            out = (r.to(tl.float32, bitcast=True) * _pow2(-k)).to(tl.int32, bitcast=True)
    out = tl.where(amax >= 0x7F800000, 0x7FC00000, out)  # an inf or NaN in the block: all NaN
    _store_words(out_ptr, offs, mask, out, IO, EVEN)


@triton.jit
def _pow2(e):
    """2**e as float32 for integer e in [-127, 127] (2**-127 is a subnormal)."""
    return tl.where(e >= -126, (e + 127) << 23, 1 << tl.maximum(e + 149, 0)).to(tl.float32, bitcast=True)


# The kernels' IO argument for each dtype they take, with the view of the tensor they are given: 0 float32
# words, 1 bfloat16 words (results rounded to bfloat16), 2 float16 values; 3 bfloat16 words of a format all of
# whose values are bfloat16 values (results stored as they are: no rounding work).
_IO = {torch.float32: (0, torch.int32), torch.bfloat16: (1, torch.int16), torch.float16: (2, torch.float16)}
_BF16_EXACT = (3, torch.int16)

Rounder = Callable[[torch.Tensor, int, torch.Tensor | None], torch.Tensor]
MaybeRounder = Callable[[torch.Tensor, int, torch.Tensor | None], torch.Tensor | None]


def float_rounder(fields: tuple[int, ...], mode: int, overflow: int, variant: int, bf16_exact: bool) -> Rounder:
    """``f(x, key, out=None)``: ``x`` rounded to the float format of ``fields`` (``kernels.float_fields``) with
    rounding mode ``mode``, overflow policy ``overflow`` and variant ``variant`` (``kernels.OVERFLOW``,
    ``kernels.float_variant``); ``key``: ``kernels.seed_key(seed)`` for stochastic rounding; ``bf16_exact``:
    whether every value of the format is a bfloat16 value. See ``_launch`` for the tensors it takes."""
    consts = {"MODE": mode, "OVERFLOW": overflow, "E8": variant == kernels.E8,
              "ADD": mode == 0 and _adder_rounds(fields, variant)}
    tiny = _tiny_scales(fields[4])
    return lambda x, key, out=None: _launch(_round_float, x, out, (*fields, key, *tiny), consts, bf16_exact)


def fixed_rounder(scale: float, inv: float, qmin: float, qmax: float, mode: int, bf16_exact: bool) -> Rounder:
    """``f(x, key, out=None)``: ``x`` rounded to a fixed-point grid of step ``inv`` (= 1 / scale) saturating at
    ``qmin`` and ``qmax`` steps (``kernels.fixed_fields``), as ``float_rounder``'s functions."""
    consts = {"MODE": mode}
    return lambda x, key, out=None: _launch(_round_fixed, x, out, (scale, inv, qmin, qmax, key), consts, bf16_exact)


def block_rounder(fields: tuple[int, ...] | None, fixed: tuple[float, ...] | None, emax: int, block_size: int,
                  axis: int, mode: int) -> MaybeRounder:
    """``f(x, key, out=None)``: ``x`` rounded to an MX block format whose elements are the float format of
    ``fields`` or the fixed-point format of ``fixed`` (``kernels.fixed_fields``), with the largest element
    exponent ``emax``, blocks of ``block_size`` along ``axis``; None for the tensors it does not take (blocks
    along another axis than the last, or not contiguous; block sizes other than powers of two up to 1,024), which
    the torch path rounds."""
    consts = {"MODE": mode, "FIXED": fixed is not None,
              "ADD": mode == 0 and fields is not None and _adder_rounds(fields, kernels.GENERAL),
              "LEAN": fields is not None and _lean(fields, mode)}
    # (the unused kind's scalars: placeholders)
    tiny = _tiny_scales(fields[4]) if fields is not None else (1.0, 1.0)
    fields = fields if fields is not None else (0,) * 8
    fixed = fixed if fixed is not None else (1.0, 1.0, 0.0, 0.0)
    if block_size & (block_size - 1) or block_size > 1024:
        return lambda x, key, out=None: None

    def run(x: torch.Tensor, key: int, out: torch.Tensor | None = None) -> torch.Tensor | None:
        dims = max(x.dim(), 1)
        if not (x.is_contiguous() and axis in (-1, dims - 1)) or x.numel() == 0:
            return None
        cols = x.shape[-1] if x.dim() else 1
        nb = triton.cdiv(cols, block_size)
        total = x.numel() // cols * nb
        if mode == kernels.MODE["stochastic"] and total * block_size >= 2**31:
            return None  # (the random stream's index is an int32)
        per = max(BLOCK // block_size, 1)
        out = torch.empty_like(x) if out is None else out
        io, view = _IO[x.dtype]  # (bfloat16 rounded back: scaled block values may lie under its grid)
        with _on_device(x):
            _round_block[(triton.cdiv(total, per),)](
                x.view(view), out.view(view), cols, nb, total, *fields, key, *tiny, emax, *fixed, **consts, IO=io,
                BS=block_size, G=per, PADDED=cols % block_size != 0,
                EVEN=cols % block_size == 0 and total % per == 0,
                WIDE=total * block_size >= 2**31 - BLOCK, num_warps=NUM_WARPS)
        return out

    return run


def _launch(kern, x: torch.Tensor, out: torch.Tensor | None, scalars: tuple, consts: dict,
            bf16_exact: bool) -> torch.Tensor:
    """One launch of ``kern`` over the elements of ``x`` (float32, bfloat16 or float16 on a CUDA device, dense:
    the kernels run over its storage, which its elements fill in some order; stochastic rounding's random
    stream follows that order, so callers give it contiguous tensors) into ``out``: a new tensor of x's dtype
    and strides, or a given one of the same (it may be ``x``, for rounding in place)."""
    out = torch.empty_like(x) if out is None else out
    n = x.numel()
    if n:
        io, view = _BF16_EXACT if bf16_exact and x.dtype is torch.bfloat16 else _IO[x.dtype]
        with _on_device(x):
            kern[(triton.cdiv(n, BLOCK),)](x.view(view), out.view(view), n, *scalars, **consts, IO=io, BLOCK=BLOCK,
                                          EVEN=n % BLOCK == 0, WIDE=n >= 2**31 - BLOCK, num_warps=NUM_WARPS)
    return out


def _adder_rounds(fields: tuple[int, ...], variant: int) -> bool:
    """Whether round to nearest may use the float adder (see _round_float): a general-variant format
    - with 1 to 22 fraction bits: with 23 (d = 0) |x| is not below K, so the sum's spacing would be twice the
      quantum; with 0 a tie is broken by the parity of the exponent code, which the adder cannot see;
    - whose largest K (exponent field of max_finite + d, and twice it) is finite, and whose K below the
      smallest normal (exponent field emin32 + 23 - man_sub) is too."""
    d, emin32, man_sub, max_word = fields[0], fields[1], fields[2], fields[3]
    return (variant == kernels.GENERAL and 1 <= d <= 22 and (max_word >> 23) + d <= 253
            and emin32 + 23 - man_sub <= 254)


def _lean(fields: tuple[int, ...], mode: int) -> bool:
    """Whether the MX kernel may round a block's scaled magnitudes without cases for zero, float32 subnormals and
    the sign (``_round_block``'s LEAN): round to nearest, truncation or stochastic rounding, into an element
    format whose smallest magnitude q is at least 2**-95, so that 0 and every magnitude up to 2**-126 round to 0
    alike (to nearest: under q / 2; stochastically: |x| / q to 30 bits is 0). Directed rounding away from zero
    takes a nonzero magnitude to q, so it keeps them apart."""
    return mode in (kernels.MODE["nearest"], kernels.MODE["truncate"], kernels.MODE["stochastic"]) \
        and fields[4] >= (127 - 95) << 23


def _on_device(x: torch.Tensor):
    """Triton launches on the current CUDA device and its current stream: make that ``x``'s device."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=256)
def _tiny_scales(q_word: int) -> tuple[float, float]:
    """Two powers of two whose product is 2**30 / q (q: the float32 of ``q_word``), each finite in float32."""
    e = math.frexp(struct.unpack("<f", struct.pack("<i", q_word))[0])[1] - 1  # q = 2**e
    first = min(30 - e, 127)
    return math.ldexp(1.0, first), math.ldexp(1.0, 30 - e - first)
