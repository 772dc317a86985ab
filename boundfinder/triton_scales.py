"""Triton kernels for CUDA tensors in the formats whose scale is a reduction over the tensor or a channel:
integer affine (per tensor and per channel), binary (with or without a mean |x| scale) and dynamic fixed point.

Each format is a reduction and then one rounding kernel that reads the reduction's result from device memory:
no host synchronisation, no parameter tensors built by a chain of small torch operations, and the bits of the
torch path (``quantize.affine_qparams`` with ``kernels.fake_quant_affine``, ``kernels.mean_abs`` with
``kernels.binary_sign``, ``kernels.dynamic_frac_bits`` with ``kernels.round_fixed``: tests compare them under
Triton's CPU interpreter, and ``benchmarks/gpu_check.py`` on a GPU). The reductions: torch's min/max (one
pass), float64 partial sums of |x| and partial exponent histograms (Triton, one pass each). A reduction reads
the tensor once more than a device copy does, so these formats' ceiling is 2/3 of a copy's bandwidth (three
accesses of each element instead of two). Import through ``boundfinder.gpu``.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from boundfinder import kernels
from boundfinder import triton_kernels as tk
from boundfinder.triton_kernels import _load_words, _offsets, _pow2, _rand30, _round_to_integer, _store_words

_NAN = tl.constexpr(tl.PropagateNan.ALL)  # torch.minimum, maximum and clamp propagate NaN; Triton's default does not
_EPS = tl.constexpr(1.1920928955078125e-07)  # torch.finfo(torch.float32).eps: the smallest scale affine_qparams gives
# Exponent histogram bins per program: kernels.N_BINS (277) and the bin of zeros, infinities and NaN, rounded
# up to a power of two (tl.histogram's range)
_HIST_BINS = 512
# Per-channel quantization runs one program per piece of a row (no integer division per element) where the rows
# (the elements after the channel axis) hold at least this many elements
ROW_MIN = 256


@triton.jit
def _store_values(ptr, offs, mask, r, IO: tl.constexpr, EVEN: tl.constexpr):
    """``_store_words`` for float32 results that may hold a NaN computed here (from a NaN or infinite scale): in
    bfloat16 every NaN is stored as the quiet NaN, as torch's ``.to(torch.bfloat16)`` stores it. (An NVIDIA GPU
    computes the NaN 0x7FFFFFFF, whose rounding to bfloat16 would carry into the sign: -0.0.)"""
    w = r.to(tl.int32, bitcast=True)
    if IO == 1:
        w = tl.where(r == r, w, 0x7FC00000)
    _store_words(ptr, offs, mask, w, IO, EVEN)


# -- integer affine -------------------------------------------------------------------------------------------
@triton.jit
def _affine_qparams(lo, hi, qmin, qmax, zp_sym, SYM: tl.constexpr):
    """``quantize.affine_qparams`` in float32 (division correctly rounded, as torch divides): scale, 1 / scale,
    and the zero point as a float, from a tensor's or channel's min and max. A NaN in the range gives a NaN
    scale, an infinite range an infinite one; every result is then NaN, as on the torch path, whatever the
    zero point (kept in [qmin, qmax] here, as there)."""
    lo = tl.minimum(lo, 0.0, propagate_nan=_NAN)
    hi = tl.maximum(hi, 0.0, propagate_nan=_NAN)
    if SYM:
        hi = tl.maximum(-lo, hi, propagate_nan=_NAN)
        scale = tl.maximum(tl.math.div_rn(hi, (qmax - qmin) * 0.5), _EPS, propagate_nan=_NAN)
        zp = tl.zeros_like(scale) + zp_sym
    else:
        scale = tl.maximum(tl.math.div_rn(hi - lo, qmax - qmin), _EPS, propagate_nan=_NAN)
        c = tl.math.div_rn(lo, scale)  # in [qmin - qmax, 0] for a finite scale: round half to even is exact
        zp = qmin - _round_to_integer(tl.where(c == c, c, 0.0), 0, 0, 0)
        zp = tl.minimum(tl.maximum(zp, qmin), qmax)
    return scale, tl.math.div_rn(1.0, scale), zp


@triton.jit
def _fake_quant(x, idx, key, scale, inv, zp, qmin, qmax, MODE: tl.constexpr):
    """``kernels.fake_quant_affine``: float32 values ``x`` quantized to the codes [qmin, qmax] of ``scale`` and
    ``zp`` (``inv`` = 1 / scale) and back; ``idx``: the elements' indices in the random stream of ``key``."""
    lo_j = qmin - zp
    hi_j = qmax - zp
    y = tl.minimum(tl.maximum(x * inv, lo_j, propagate_nan=_NAN), hi_j, propagate_nan=_NAN)
    if MODE == 0:
        # (y is NaN only where x is, or where the scale is not finite: then every result is NaN, as there)
        q = _round_to_integer(tl.where(y == y, y, 0.0), idx, key, 0) + zp
        r = tl.where(y == y, (q - zp) * scale, y)
        return tl.where(x != x, x, r)
    j = _round_to_integer(tl.where(y == y, y, 0.0), idx, key, 3)  # floor (tl.floor flushes subnormals to zero)
    j = tl.where(y == y, j, y)
    # x * (1 / scale) may be off by one code: compare with the neighbours' dequantized values
    j = tl.where(j * scale > x, j - 1.0, tl.where((j + 1.0) * scale <= x, j + 1.0, j))
    j = tl.minimum(tl.maximum(j, lo_j, propagate_nan=_NAN), hi_j, propagate_nan=_NAN)
    at = j * scale
    exact = at == x
    if MODE == 4:
        frac = tl.minimum(tl.maximum(y - j, 0.0, propagate_nan=_NAN), 1.0, propagate_nan=_NAN)
        frac = tl.where(frac == frac, frac, 0.0)  # (a NaN lane's result is NaN whatever it draws)
        up = (((frac * 1073741824.0).to(tl.int32) + _rand30(idx, key)) >= 1073741824) & (exact == 0)
    elif MODE == 2:
        up = exact == 0
    elif MODE == 3:
        up = exact & (exact == 0)
    else:
        up = (x < 0) & (exact == 0)  # toward zero
    up = up & (x > at)
    out = tl.minimum(j + up.to(tl.float32), hi_j, propagate_nan=_NAN) * scale
    return tl.where(x != x, x, tl.where(out == 0.0, 0.0, out))


# (inner stays specialised: a row length divisible by 16 lets the rows be loaded 128 bits at a time)
@triton.jit(do_not_specialize=["n", "channels", "chunks", "qmin", "qmax", "zp_sym", "key"])
def _affine(x_ptr, out_ptr, lo_ptr, hi_ptr, table_ptr, n, inner, channels, chunks, qmin, qmax, zp_sym, key,
            MODE: tl.constexpr, SYM: tl.constexpr, CHANNELS: tl.constexpr, IO: tl.constexpr, BLOCK: tl.constexpr,
            EVEN: tl.constexpr, WIDE: tl.constexpr):
    """Integer affine quantization of a tensor's elements. CHANNELS 0: per tensor (``lo_ptr``, ``hi_ptr``: its
    min and max). Per channel (``table_ptr``: scale, 1 / scale and zero point of each of ``channels`` channels,
    ``inner`` elements apart in the contiguous tensor, seen as rows of ``inner`` elements, each in one channel):
    CHANNELS 1, each element's channel from its index; CHANNELS 2, each program in one row (``chunks`` programs
    per row: its channel's parameters are loaded once, and no element needs an integer division; EVEN: BLOCK
    divides ``inner``). Random bits are drawn by the element's index in the channel-major order in which the
    torch path draws them."""
    if CHANNELS == 2:
        pid = tl.program_id(0)
        row = pid // chunks
        col = (pid - row * chunks) * BLOCK + tl.arange(0, BLOCK)
        mask = col < inner
        if WIDE:  # noqa: SIM108 - a constexpr branch: Triton compiles only the branch taken
            offs = row.to(tl.int64) * inner + col
        else:
            offs = row * inner + col
    else:
        offs = _offsets(BLOCK, WIDE)
        mask = offs < n
    x = _load_words(x_ptr, offs, mask, IO, EVEN).to(tl.float32, bitcast=True)
    if CHANNELS == 0:
        lo = tl.load(lo_ptr).to(tl.float32)
        hi = tl.load(hi_ptr).to(tl.float32)
        scale, inv, zp = _affine_qparams(lo, hi, qmin, qmax, zp_sym, SYM)
        idx = offs
    else:
        if CHANNELS == 2:
            ch = row % channels
            if MODE == 4:  # noqa: SIM108 - as above
                idx = ch * (n // channels) + (row // channels) * inner + col
            else:
                idx = offs
        else:
            ch = (offs // inner) % channels  # (in range for the masked lanes too)
            if MODE == 4:  # noqa: SIM108 - as above
                idx = ch * (n // channels) + (offs // (inner * channels)) * inner + offs % inner
            else:
                idx = offs
        scale = tl.load(table_ptr + ch * 3)
        inv = tl.load(table_ptr + ch * 3 + 1)
        zp = tl.load(table_ptr + ch * 3 + 2)
    _store_values(out_ptr, offs, mask, _fake_quant(x, idx.to(tl.int32), key, scale, inv, zp, qmin, qmax, MODE), IO,
                  EVEN)


@triton.jit(do_not_specialize=["channels", "qmin", "qmax", "zp_sym"])
def _affine_table(lo_ptr, hi_ptr, table_ptr, channels, qmin, qmax, zp_sym, SYM: tl.constexpr, BLOCK: tl.constexpr):
    """Each channel's scale, 1 / scale and zero point (``_affine_qparams``) from its min and max."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < channels
    scale, inv, zp = _affine_qparams(tl.load(lo_ptr + offs, mask=mask, other=0.0),
                                     tl.load(hi_ptr + offs, mask=mask, other=0.0), qmin, qmax, zp_sym, SYM)
    tl.store(table_ptr + offs * 3, scale, mask=mask)
    tl.store(table_ptr + offs * 3 + 1, inv, mask=mask)
    tl.store(table_ptr + offs * 3 + 2, zp, mask=mask)


# -- binary ---------------------------------------------------------------------------------------------------
@triton.jit
def _abs_sums(x_ptr, sums_ptr, n, IO: tl.constexpr, BLOCK: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr):
    """Each program's sum of |x| over its elements, in float64 (``kernels.mean_abs`` accumulates in float64)."""
    offs = _offsets(BLOCK, WIDE)
    a = _load_words(x_ptr, offs, offs < n, IO, EVEN) & 0x7FFFFFFF
    tl.store(sums_ptr + tl.program_id(0), tl.sum(a.to(tl.float32, bitcast=True).to(tl.float64), axis=0))


@triton.jit(do_not_specialize=["n", "key"])
def _binary(x_ptr, out_ptr, scale_ptr, n, key, MODE: tl.constexpr, MEAN: tl.constexpr, IO: tl.constexpr,
            BLOCK: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr):
    """``kernels.binary_sign``: the sign (+1 for 0; stochastic: +1 with probability clamp((x + 1) / 2, 0, 1)),
    times the mean |x| at ``scale_ptr`` with MEAN; NaN stays NaN."""
    offs = _offsets(BLOCK, WIDE)
    mask = offs < n
    x = _load_words(x_ptr, offs, mask, IO, EVEN).to(tl.float32, bitcast=True)
    if MODE == 4:
        p = tl.minimum(tl.maximum((x + 1.0) * 0.5, 0.0), 1.0)
        s = tl.where(_rand30(offs.to(tl.int32), key) < (p * 1073741824.0).to(tl.int32), 1.0, -1.0)
    else:
        s = tl.where(x >= 0, 1.0, -1.0)
    if MEAN:
        s = s * tl.load(scale_ptr)
    _store_values(out_ptr, offs, mask, tl.where(x != x, x, s), IO, EVEN)  # (s is NaN where the mean is)


# -- dynamic fixed point --------------------------------------------------------------------------------------
@triton.jit
def _exponent_hist(x_ptr, hist_ptr, n, blocks, IO: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr,
                   WIDE: tl.constexpr):
    """Each program's histogram of ``kernels.exponent_bins`` (floor(log2|x|) + 149; kernels.N_BINS for zeros,
    infinities and NaN) over every ``num_programs``-th block of BLOCK elements, in NB int32 counts."""
    pid = tl.program_id(0)
    hist = tl.zeros((NB,), dtype=tl.int32)
    for b in range(pid, blocks, tl.num_programs(0)):
        if WIDE:  # noqa: SIM108 - as above
            offs = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        else:
            offs = b * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        a = _load_words(x_ptr, offs, mask, IO, False) & 0x7FFFFFFF
        e = a >> 23
        # a subnormal's exponent from its value scaled by 2**64 (exact: the kernels keep subnormals)
        e_sub = (a.to(tl.float32, bitcast=True) * 18446744073709551616.0).to(tl.int32, bitcast=True) >> 23
        bins = tl.where(e == 0, e_sub - 42, e + 22)
        bins = tl.where((a == 0) | (e == 255), 277, bins)
        hist += tl.histogram(bins, NB, mask=mask)
    tl.store(hist_ptr + pid * NB + tl.arange(0, NB), hist)


@triton.jit(do_not_specialize=["n", "qmin", "qmax", "key"])
def _round_dynamic(x_ptr, out_ptr, frac_ptr, n, qmin, qmax, key, MODE: tl.constexpr, IO: tl.constexpr,
                   BLOCK: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr):
    """``kernels.round_fixed`` with the fraction length at ``frac_ptr`` (``kernels.dynamic_frac_bits``)."""
    offs = _offsets(BLOCK, WIDE)
    mask = offs < n
    frac = tl.load(frac_ptr)
    x = _load_words(x_ptr, offs, mask, IO, EVEN).to(tl.float32, bitcast=True)
    r = tk._fixed_values(x, offs.to(tl.int32), key, _pow2(frac), _pow2(-frac), qmin, qmax, MODE)
    _store_words(out_ptr, offs, mask, r.to(tl.int32, bitcast=True), IO, EVEN)


# -- host side ------------------------------------------------------------------------------------------------
Rounder = tk.MaybeRounder


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, tk.BLOCK),)


def _flags(x: torch.Tensor) -> dict:
    """The launch arguments every element-wise kernel here takes, for ``x``'s size and dtype."""
    n = x.numel()
    return {"IO": tk._IO[x.dtype][0], "BLOCK": tk.BLOCK, "EVEN": n % tk.BLOCK == 0, "WIDE": n >= 2**31 - tk.BLOCK,
            "num_warps": tk.NUM_WARPS}


def _view(t: torch.Tensor) -> torch.Tensor:
    return t.view(tk._IO[t.dtype][1])


def affine_rounder(qmin: int, qmax: int, symmetric: bool, zp_sym: int, axis: int | None, mode: int) -> Rounder:
    """``f(x, key, out=None)``: ``x`` quantized to the integer affine format of codes [qmin, qmax] (``symmetric``
    with zero point ``zp_sym``), per tensor (``axis`` None) or per channel along ``axis``; None for the tensors
    it does not take (per channel: not contiguous, 0-d, or an axis they lack: the torch path says what is
    wrong)."""
    consts = {"MODE": mode, "SYM": symmetric}
    scalars = (float(qmin), float(qmax), float(zp_sym))

    def run(x: torch.Tensor, key: int, out: torch.Tensor | None = None) -> torch.Tensor | None:
        n = x.numel()
        if axis is None:
            lo, hi = torch.aminmax(x)  # (exact in x's dtype: the kernel widens them)
            table, channels, inner = lo, 1, 1
        else:
            if x.dim() == 0 or not -x.dim() <= axis < x.dim() or not x.is_contiguous():
                return None
            channels = x.shape[axis]
            inner = math.prod(x.shape[axis:][1:])
            rows = x.view(-1, channels, inner)
            if rows.shape[0] == 1:
                lo, hi = torch.aminmax(rows[0], dim=1)
            else:
                lo, hi = rows.amin(dim=(0, 2)), rows.amax(dim=(0, 2))
            lo, hi = lo.to(torch.float32), hi.to(torch.float32)
            table = torch.empty(channels, 3, dtype=torch.float32, device=x.device)
        out = torch.empty_like(x) if out is None else out
        flags = {**consts, **_flags(x), "CHANNELS": 0 if axis is None else 1}
        grid, chunks = _grid(n), 1
        if axis is not None and inner >= ROW_MIN:
            # rows of at least ROW_MIN elements: a program in one row, of a power of two up to tk.BLOCK elements
            block = min(tk.BLOCK, triton.next_power_of_2(inner))
            chunks = triton.cdiv(inner, block)
            if n // inner * chunks < 2**31:
                grid = (n // inner * chunks,)
                flags.update(CHANNELS=2, BLOCK=block, EVEN=inner % block == 0)
        with tk._on_device(x):
            if axis is not None:
                _affine_table[(triton.cdiv(channels, 1024),)](lo, hi, table, channels, *scalars, SYM=symmetric,
                                                             BLOCK=1024)
            _affine[grid](_view(x), _view(out), lo, hi, table, n, inner, channels, chunks, *scalars, key, **flags)
        return out

    return run


def binary_rounder(mean: bool, axis: int | None, mode: int) -> Rounder:
    """``f(x, key, out=None)``: ``x`` binarized (times its mean |x| with ``mean``); None for a scale per
    channel (``axis`` given with ``mean``: the torch path)."""

    def run(x: torch.Tensor, key: int, out: torch.Tensor | None = None) -> torch.Tensor | None:
        if mean and axis is not None:
            return None
        n = x.numel()
        flags = _flags(x)
        out = torch.empty_like(x) if out is None else out
        with tk._on_device(x):
            if mean:
                sums = torch.empty(_grid(n)[0], dtype=torch.float64, device=x.device)
                _abs_sums[_grid(n)](_view(x), sums, n, IO=flags["IO"], BLOCK=tk.BLOCK, EVEN=flags["EVEN"],
                                    WIDE=flags["WIDE"], num_warps=tk.NUM_WARPS)
                total = sums.sum()  # (divided as in kernels.mean_abs: by a tensor, correctly rounded)
                scale = (total / torch.full_like(total, n)).to(torch.float32)
            else:
                scale = out  # (not read)
            _binary[_grid(n)](_view(x), _view(out), scale, n, key, MODE=mode, MEAN=mean, **flags)
        return out

    return run


def dynamic_rounder(word_bits: int, qmin: int, qmax: int, overflow_rate: float, mode: int) -> Rounder:
    """``f(x, key, out=None)``: ``x`` rounded to dynamic fixed point of ``word_bits`` (codes [qmin, qmax]) whose
    fraction length follows the tensor by the overflow-rate rule (``kernels.dynamic_frac_bits``)."""

    def run(x: torch.Tensor, key: int, out: torch.Tensor | None = None) -> torch.Tensor | None:
        n = x.numel()
        flags = _flags(x)
        blocks = _grid(n)[0]
        programs = min(blocks, _programs(x.device))
        partial = torch.empty(programs, _HIST_BINS, dtype=torch.int32, device=x.device)
        out = torch.empty_like(x) if out is None else out
        with tk._on_device(x):
            _exponent_hist[(programs,)](_view(x), partial, n, blocks, IO=flags["IO"], BLOCK=tk.BLOCK,
                                        NB=_HIST_BINS, WIDE=flags["WIDE"], num_warps=tk.NUM_WARPS)
            hist = partial.sum(dim=0, dtype=torch.int64)[: kernels.N_BINS]
            frac = kernels.frac_bits_from_histogram(hist, int(overflow_rate * n), word_bits)
            _round_dynamic[_grid(n)](_view(x), _view(out), frac, n, float(qmin), float(qmax), key, MODE=mode,
                                     **flags)
        return out

    return run


@functools.lru_cache(maxsize=8)
def _programs_on(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # (Triton's CPU interpreter, in tests)


def _programs(device: torch.device) -> int:
    """How many programs take part in a histogram: a few per multiprocessor (each adds its counts once)."""
    return _programs_on(device)
