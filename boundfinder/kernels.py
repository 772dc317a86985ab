"""Fused rounding kernels: integer bit manipulation on float32 words, one pass over memory when compiled.

Every kernel here is a plain function of torch ops. ``run(kernel, x, tensors, static)`` calls its
torch.compile'd version (one fused loop on CPU, one Triton kernel on GPU); when compilation is unavailable the
eager function runs instead, bit for bit the same, and one log line says so. Format parameters travel as a small
tensor so that one compiled kernel serves every format of a family (a sweep over bit widths compiles once per
rounding mode). Float kernels take and return the float32 words as int32: reinterpreting inside a compiled CPU
loop costs a scalar store and load per element.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
import os
import struct
from collections.abc import Callable, Iterator

import torch
from torch.utils import _python_dispatch

from boundfinder.compiled_call import DirectCompiled
from boundfinder.formats import FixedPointFormat, FloatFormat

log = logging.getLogger("boundfinder")

INT32_MIN = -(2**31)
ABS_MASK = 0x7FFFFFFF
EXP_INF = 0x7F800000
RAND_BITS = 30  # stochastic rounding compares the fraction, truncated to 30 bits, with 30 random bits

# Rounding modes as small ints (static arguments of the kernels).
MODE = {"nearest": 0, "truncate": 1, "up": 2, "down": 3, "stochastic": 4}
# What overflow becomes (static): 0 = infinity, 1 = NaN, 2 = saturate.
OVERFLOW = {"inf": 0, "nan": 1, "saturate": 2}


# -- random bits ------------------------------------------------------------------------------------------------
def _srl(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int32 words (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (32 - n)) - 1)


def _wrap32(v: int) -> int:
    return v - (1 << 32) if v >= (1 << 31) else v


def _lowbias32(h: torch.Tensor) -> torch.Tensor:
    return _lowbias32_rest(h ^ _srl(h, 16))


def _lowbias32_rest(h: torch.Tensor) -> torch.Tensor:
    """``_lowbias32`` after its first xor-shift."""
    h = h * _wrap32(0x7FEB352D)
    h = h ^ _srl(h, 15)
    h = h * _wrap32(0x846CA68B)
    return h ^ _srl(h, 16)


def _lowbias32_int(h: int) -> int:
    """``_lowbias32`` on a Python int (unsigned 32-bit result)."""
    m = 0xFFFFFFFF
    h &= m
    h ^= h >> 16
    h = (h * 0x7FEB352D) & m
    h ^= h >> 15
    h = (h * 0x846CA68B) & m
    return h ^ (h >> 16)


# Random bits are built per row of this many elements on CPU (see ``rand_like``).
LANES = 16


def seed_keys(seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The stochastic kernels' seed argument, from ``key``, the seed hashed once (on the host: no kernel hashes
    it per element or per iteration). Element ``i`` draws ``lowbias32(i ^ key)``. Entry LANES is ``key``
    (flat tensors); entries j < LANES serve rows of LANES elements on CPU, where ``i = row * LANES + j``:
    ``h = i ^ key`` and lowbias32's first step ``h ^ (h >>> 16)`` is ``r ^ (r >>> 16) ^ key_j`` with
    ``r = row * LANES`` and ``key_j = key ^ j ^ (key >>> 16)`` (j and the shift touch disjoint bits)."""
    key = _key(seed)
    lanes = [_wrap32(key ^ j ^ (key >> 16)) for j in range(LANES)]
    return torch.tensor([*lanes, _wrap32(key)], dtype=torch.int32, device=device)


def seed_key(seed: int) -> int:
    """``seed_keys(seed)[LANES]`` as a Python int (int32 range): the key of the flat stream, element ``i``
    drawing ``lowbias32(i ^ key)`` (the Triton kernels take it as a scalar argument)."""
    return _wrap32(_key(seed))


def _key(seed: int) -> int:
    return _lowbias32_int(int(seed) * 0x9E3779B1 + 0x632BE5AB)


def random_bits(seed: torch.Tensor | int, numel: int, device: torch.device) -> torch.Tensor:
    """30 uniform random bits per element from a counter-based hash of (seed, index): the stream the kernels
    draw from ``seed_keys(seed)`` (see ``rand_like``), as a flat tensor."""
    return rand_like(seed_keys(int(seed), device), torch.empty(numel, dtype=torch.int32, device=device))


def rand_like(keys: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """30 uniform random bits for each element of the contiguous tensor ``x``, from ``keys = seed_keys(seed)``.

    The hash is Chris Wellons' lowbias32 (two multiply-xorshift rounds) of the element's flat index xor a key
    hashed from the seed, in wrapping int32 arithmetic: the stream is identical on CPU and GPU, eager and
    compiled, and costs no memory pass when fused into a rounding kernel. A CPU tensor of rows of LANES elements
    (``run`` gives stochastic kernels that shape) starts from the row (see ``seed_keys``): Inductor's CPU code
    would rebuild a flat index vector element by element in every iteration, which costs more than the hash;
    here the per-lane keys are one vector load and the row's part of the first xor-shift one broadcast.
    """
    if x.device.type == "cpu" and x.dim() == 2 and x.shape[1] == LANES:
        rows = torch.arange(x.shape[0], device=x.device, dtype=torch.int32)[:, None] * LANES
        h = _lowbias32_rest((rows ^ _srl(rows, 16)) ^ keys[:LANES])  # the row's part once per row
    else:
        h = _lowbias32((torch.arange(x.numel(), device=x.device, dtype=torch.int32) ^ keys[LANES]).view(x.shape))
    return h & ((1 << RAND_BITS) - 1)


# -- float formats ----------------------------------------------------------------------------------------------
# Float kernel variants (static): the general one, and float32's own exponent range (e8m{M}: bf16, tf32, the
# original study's truncated float32), where every value, subnormals included, is rounded at one fixed bit of
# its word.
GENERAL, E8 = 0, 1


def float_variant(fmt: FloatFormat) -> int:
    e8 = (fmt.exp_bits == 8 and fmt.bias == 127 and fmt.encoding == "ieee" and fmt.overflow == "inf"
          and fmt.subnormals)
    return E8 if e8 else GENERAL


def _word(v: float) -> int:
    """The float32 word of ``v`` (rounded to nearest), computed without torch: no dispatch mode can see it."""
    return struct.unpack("<i", struct.pack("<f", v))[0]


def float_params(fmt: FloatFormat, device: torch.device) -> torch.Tensor:
    """Pack what the float kernel needs into an int32 tensor (see ``round_float_words`` for the fields)."""
    return torch.tensor(float_fields(fmt), dtype=torch.int32, device=device)


def float_fields(fmt: FloatFormat) -> tuple[int, ...]:
    """The float kernel's parameters as int32-range Python ints, in ``float_params``' order."""
    d = 23 - fmt.man_bits
    man_sub = fmt.man_bits if fmt.subnormals else 0
    emin32 = fmt.emin + 127  # float32 biased exponent of the format's smallest normal (>= 1)
    max_word = _word(fmt.max_finite)
    q = math.ldexp(1.0, fmt.emin - man_sub)  # the smallest positive value (at least 2**-149)
    # Round to nearest overflows from max_finite plus half its spacing (the tie goes up when max_finite's code
    # is odd): a threshold on the magnitude word, which orders like the value.
    code = max_word - ((emin32 - 1) << 23)  # max_finite's code (exponent and fraction fields, format's bias)
    lsb = (code >> d) & 1
    ovf_nearest = max_word + (1 << d) - (((1 << d) - 1 + lsb) >> 1)
    # Ties to even need the parity of the kept part of a's code: bit dc of a - (emin32 - 1) << 23 in the normal
    # range; below it, where dc == 23 happens only man_bits binades down, of the code with its hidden bit,
    # which differs by man_bits << 23: one subtraction of code_off serves both.
    code_off = (emin32 - 1 - (fmt.man_bits & 1)) << 23
    return d, emin32, man_sub, max_word, _word(q), _word(q / 2), ovf_nearest, code_off


def round_float(w: torch.Tensor, params: torch.Tensor, seed: torch.Tensor, mode: int, overflow: int,
                variant: int = GENERAL) -> torch.Tensor:
    """``round_float_words`` with its random bits drawn in-kernel from ``seed`` (stochastic mode only)."""
    rbits = rand_like(seed, w) if mode == 4 else None
    return round_float_words(w, params, rbits, mode, overflow, variant)


def round_float_bits(x: torch.Tensor, params: torch.Tensor, rbits: torch.Tensor | None, mode: int,
                     overflow: int, variant: int = GENERAL) -> torch.Tensor:
    """``round_float_words`` on float32 values instead of their words."""
    return round_float_words(x.view(torch.int32), params, rbits, mode, overflow, variant).view(torch.float32)


def round_float_words(w: torch.Tensor, params: torch.Tensor, rbits: torch.Tensor | None, mode: int,
                      overflow: int, variant: int = GENERAL) -> torch.Tensor:
    """Round float32 words ``w`` (int32, any shape) to a FloatFormat described by ``params``; returns words.

    Integer operations only (a float/int reinterpretation inside a compiled CPU kernel costs more than the
    rounding). The magnitude word ``a`` is rounded by dropping its low ``dc`` bits: ``d = 23 - man_bits`` in
    the normal range, one more per binade below the format's smallest normal (the quantum is fixed there). A
    carry out of the fraction moves into the exponent, which is exactly rounding up into the next binade.
    Values under one quantum ``q`` round to 0 or ``q``; they, overflow, infinities and NaN are decided by
    comparing ``a`` with thresholds (float32 words of one sign order like their values).

    ``variant=E8`` (float32's exponent range, IEEE overflow): no binade is below the format's smallest normal
    in a different way than float32's own subnormals, so ``dc = d`` everywhere and only NaN needs a select.
    """
    d, emin32, man_sub, max_word, q_word = params[0], params[1], params[2], params[3], params[4]
    halfq_word, ovf_nearest, code_off = params[5], params[6], params[7]
    a = w & ABS_MASK
    sign = w ^ a
    # stochastic: a NaN payload plus the random bits must not wrap past the sign bit
    a_r = torch.clamp(a, max=EXP_INF + 1) if mode == 4 else a
    one = torch.ones((), dtype=torch.int32, device=w.device)

    if variant == E8:
        dc = d
        mask = (one << d) - 1
        t = None
    else:
        # binades below the format's smallest normal (float32 subnormal words are linear with the spacing of
        # exponent 1)
        t = torch.clamp(emin32 - torch.clamp(a >> 23, min=1), min=0)
        dc = torch.clamp(d + t, max=23)  # values needing more (under one quantum) are decided below
        mask = (one << dc) - 1
        if mode == 4:
            sig = a - ((emin32 - 1 - t) << 23)  # the 24-bit significand below the smallest normal

    if mode == 0:
        # Ties to even: add half a quantum, minus one unless the kept part's last bit is odd (mask + lsb is
        # even, mask >> 1 drops it; for dc == 0 nothing is added).
        r = a + ((mask + (((a if variant == E8 else a - code_off) >> dc) & 1)) >> 1)
    elif mode == 1:
        r = a
    elif mode in (2, 3):
        away = (w >= 0) if mode == 2 else (w < 0)
        r = a + torch.where(away, mask, 0)
    else:
        r = a_r + (rbits >> (RAND_BITS - dc))
    r = r & (((-one) << dc) if mode == 4 else ~mask)  # (the same bits: stochastic has no other use of mask)

    if variant == E8:
        # a carry out of max_finite reaches exactly infinity's word (truncation never does); a NaN stays NaN
        return torch.where(a > EXP_INF, a, r) | sign

    # -- under one quantum: 0 or q
    tiny = a < q_word
    if mode == 0:
        r = torch.where(tiny, torch.where(a > halfq_word, q_word, 0), r)  # exactly q/2 is a tie to even (0)
    elif mode == 1:
        r = torch.where(tiny, 0, r)
    elif mode in (2, 3):
        r = torch.where(tiny, torch.where(away & (a > 0), q_word, 0), r)
    else:
        # the fraction |x| / q = sig / 2**(23 + s) to 30 bits, truncated when longer (a bias below 2**-30);
        # round up with probability frac / 2**30. s >= 1 for float32 normals; for float32 subnormals s is
        # emin32 - 1 - man_sub, negative when the format's smallest normal is within man_sub binades of float32's
        # (e8m3_sat: -3), and then sig < 2**(23 + s), so sig << (7 - s) < 2**30 still fits.
        # As one shift each way: u = 7 - s, frac = sig << u (u >= 0) or sig >> -u (capped at 31: sig < 2**24).
        u = ((RAND_BITS - 23) + man_sub) - t
        frac = (sig << torch.clamp(u, min=0)) >> torch.clamp(t - ((RAND_BITS - 23) + man_sub), min=0, max=31)
        # frac + rbits < 2**31: its bit 30 is the decision (a mask from it is cheaper than a compare and select)
        r = torch.where(tiny, q_word & -((frac + rbits) >> RAND_BITS), r)

    # -- overflow, infinities, NaN
    if overflow == 2:
        # saturate: every mode stops at max_finite, infinities too; a NaN stays (its rounded word may even have
        # wrapped past the sign bit: it is replaced)
        return torch.where(a > EXP_INF, a, torch.minimum(r, max_word)) | sign
    big = EXP_INF if overflow == 0 else 0x7FC00000
    if mode == 1:
        r = torch.minimum(r, max_word)  # truncation of a finite value stays at max_finite
        r = torch.where(a >= EXP_INF, a if overflow == 0 else big, r)
    elif mode == 0:
        over = a >= ovf_nearest  # NaN and infinities too
        r = torch.where(over, torch.clamp(a, min=EXP_INF) if overflow == 0 else big, r)  # inf, or the NaN itself
    elif mode == 4:
        over = r > max_word  # a NaN's r is above infinity's word (see a_r)
        r = torch.where(over, torch.clamp(a, min=EXP_INF) if overflow == 0 else big, r)
    else:
        # IEEE 754: directed rounding toward zero keeps a finite overflow at max_finite
        r = torch.where(r > max_word, torch.where(away, big, max_word), r)
        r = torch.where(a >= EXP_INF, a if overflow == 0 else big, r)
    return r | sign


# -- fixed point ------------------------------------------------------------------------------------------------
def fixed_params(fmt: FixedPointFormat, device: torch.device, frac_bits: int | None = None) -> torch.Tensor:
    return torch.tensor(fixed_fields(fmt, frac_bits), dtype=torch.float32, device=device)


def fixed_fields(fmt: FixedPointFormat, frac_bits: int | None = None) -> tuple[float, float, float, float]:
    """The fixed-point kernel's parameters (scale, 1 / scale, qmin, qmax), each exact in float32."""
    f = fmt.frac_bits if frac_bits is None else frac_bits
    return math.ldexp(1.0, f), math.ldexp(1.0, -f), float(fmt.qmin), float(fmt.qmax)


def round_to_integer(y: torch.Tensor, rbits: torch.Tensor | None, mode: int) -> torch.Tensor:
    """Round float32 ``y`` to an integer-valued float32 with the given mode (ties to even for nearest)."""
    if mode == 0:
        return torch.round(y)
    if mode == 1:
        return torch.trunc(y)
    if mode == 2:
        return torch.ceil(y)
    if mode == 3:
        return torch.floor(y)
    lo = torch.floor(y)
    frac = (y - lo) * float(1 << RAND_BITS)  # exact: y - floor(y) is exact and a power-of-two scale is exact
    up = (frac.to(torch.int32) + rbits) >= (1 << RAND_BITS)
    return lo + up.to(y.dtype)


def round_fixed(x: torch.Tensor, params: torch.Tensor, seed: torch.Tensor, mode: int) -> torch.Tensor:
    rbits = rand_like(seed, x) if mode == 4 else None
    return round_fixed_bits(x, params, rbits, mode)


def round_fixed_bits(x: torch.Tensor, params: torch.Tensor, rbits: torch.Tensor | None, mode: int) -> torch.Tensor:
    scale, inv, qmin, qmax = params[0], params[1], params[2], params[3]
    y = x * scale  # exact (power of two) unless it overflows (saturated below) or underflows:
    if mode in (2, 3):
        y = torch.where(y == 0, x, y)  # a nonzero value under one step still rounds away from zero when directed
    # Saturate before rounding: qmin and qmax are integers, so every mode stays in range, and infinities too.
    # (x != x tests NaN: a comparison vectorizes where isnan does not in compiled CPU code.)
    q = round_to_integer(torch.minimum(torch.maximum(y, qmin), qmax), rbits, mode)
    # Fixed point has one zero: +0 (as torch.fake_quantize_* gives), also for a negative value rounded to 0.
    return torch.where(x != x, x, torch.where(q == 0, 0.0, q * inv))


# -- compilation ------------------------------------------------------------------------------------------------
# Below this many elements the eager kernel runs, so that rounding a few numbers never waits for a compilation.
# Above it the compiled kernel, called directly (compiled_call.py), wins at every size (CPU, one thread, quantize:
# 1,024 elements e4m3fn nearest 66 us eager, 22 us compiled; stochastic 157 -> 51 us; fixed8.4 25 -> 21 us).
COMPILE_MIN_NUMEL = int(os.environ.get("BOUNDFINDER_COMPILE_MIN_NUMEL", 1 << 10))
_compile_failed: set[str] = set()
# A lower limit where compilation pays for itself anyway (see ``compile_from``).
_min_numel: contextvars.ContextVar[int | None] = contextvars.ContextVar("boundfinder_compile_from", default=None)


@contextlib.contextmanager
def compile_from(numel: int) -> Iterator[None]:
    """Within the block, kernels run compiled from ``numel`` elements on, if that is below COMPILE_MIN_NUMEL.

    For long-running callers (emulation rounds the same small tensors, a layer's bias or logits, at every step):
    a compiled call costs ~20-40 us at any size against ~60-150 us for the eager kernel's ~40 ops, and the one
    compilation is paid once. Sizes 0 and 1 stay eager (dynamo would compile a graph for each).
    """
    token = _min_numel.set(max(int(numel), 2))
    try:
        yield
    finally:
        _min_numel.reset(token)


def _compile_enabled() -> bool:
    return os.environ.get("BOUNDFINDER_COMPILE", "1") != "0"


@functools.cache
def _compiled(kernel: Callable, static: tuple) -> Callable:
    # One compiled function per (kernel, static arguments): each has its own small set of graphs, so a run
    # through every mode and overflow policy never reaches dynamo's recompile limit. The static arguments are
    # literals in its code (constants to dynamo, never symbolic integers), and the code object has its own name:
    # dynamo keys its graph cache (and its recompile limit) on the code object.
    name = f"{kernel.__name__}_{'_'.join(str(int(v)) for v in static)}".replace("-", "m")
    namespace = {"kernel": kernel}
    literals = "".join(f", {int(v)!r}" for v in static)
    exec(f"def {name}(x, *tensors):\n    return kernel(x, *tensors{literals})\n", namespace)
    return DirectCompiled(namespace[name])  # torch.compile(fn, dynamic=True, fullgraph=True), called cheaply


def compiles(kernel: Callable, numel: int) -> bool:
    """Whether ``run`` would call the compiled ``kernel`` on ``numel`` elements here and now."""
    low = _min_numel.get()
    return (numel >= (COMPILE_MIN_NUMEL if low is None else min(low, COMPILE_MIN_NUMEL)) and _compile_enabled()
            and kernel.__name__ not in _compile_failed and not _in_dispatch_mode())


def _in_dispatch_mode() -> bool:
    """Inside a TorchDispatchMode, or its handler (which runs with Python dispatch disabled, as op-level
    emulation's does), or a torch.func transform (vmap, grad), compiled code cannot run; that is no reason to
    give up compiling elsewhere."""
    return (_python_dispatch._get_current_dispatch_mode() is not None
            or torch._C._dispatch_tls_is_dispatch_key_excluded(torch._C.DispatchKey.Python)
            or torch._C._functorch.peek_interpreter_stack() is not None)


def run(kernel: Callable, x: torch.Tensor, tensors: tuple, static: tuple, *, elementwise: bool = False,
        lanes: bool = False) -> torch.Tensor:
    """Run ``kernel(x, *tensors, *static)`` compiled when possible. Tiny tensors run eagerly (no compilation
    for a few numbers); a failed compilation falls back to the identical eager kernel, once per kernel, with
    one log line. ``elementwise`` kernels see ``x`` flattened, so one compiled graph serves every shape; with
    ``lanes`` (kernels drawing random bits), a CPU tensor whose size is a multiple of LANES is seen as rows of
    LANES elements instead (see ``rand_like``): two graphs at most."""
    if elementwise:
        shape = (-1, LANES) if lanes and x.device.type == "cpu" and x.numel() % LANES == 0 else (-1,)
        flat = x.reshape(shape)
        if flat.shape != x.shape:
            return run(kernel, flat, tensors, static).view(x.shape)
    name = kernel.__name__
    if not compiles(kernel, x.numel()):
        return kernel(x, *tensors, *static)
    try:
        return _compiled(kernel, static)(x, *tensors)
    except Exception as exc:  # noqa: BLE001 - any backend failure means: use the identical eager kernel
        _compile_failed.add(name)
        log.warning("boundfinder: torch.compile of %s failed (%s: %s); running the eager kernel, which gives "
                    "identical results more slowly.", name, type(exc).__name__, str(exc).splitlines()[0][:200])
        return kernel(x, *tensors, *static)



# -- integer affine ---------------------------------------------------------------------------------------------
def fake_quant_affine(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, seed: torch.Tensor,
                      qmin: int, qmax: int, mode: int) -> torch.Tensor:
    """``(clamp(round(x * (1/scale)) + zp, qmin, qmax) - zp) * scale`` in float32, the operation order of
    ``torch.fake_quantize_per_tensor_affine`` (the zero point is added after rounding, so it is exact), for
    ``nearest``. The directed modes round to the neighbouring dequantized value ``(q - zp) * scale`` on their
    side (a representable value is its own result); stochastic picks one of the two neighbours."""
    rbits = rand_like(seed, x) if mode == 4 else None
    inv = 1.0 / scale
    # clamp(round(y) + zp, qmin, qmax) == round(clamp(y, qmin - zp, qmax - zp)) + zp: the bounds are integers
    y = x * inv
    lo_j, hi_j = qmin - zero_point, qmax - zero_point
    y = torch.minimum(torch.maximum(y, lo_j), hi_j)
    if mode == 0:
        q = round_to_integer(y, rbits, mode) + zero_point
        return torch.where(x != x, x, (q - zero_point) * scale)
    # The other modes round to the representable values j * scale (j = q - zp) themselves: x * (1/scale) is
    # off by up to ~2**-23 relative, so the floor (ceil) of y may be one code off: a representable x = j *
    # scale can give y = j - 1 ulp, and floor(y) = j - 1 below x. The error is under one code (|y| < 2**17),
    # so one comparison with each neighbour's dequantized value fixes the floor.
    j = torch.floor(y)
    j = torch.where(j * scale > x, j - 1, torch.where((j + 1) * scale <= x, j + 1, j))
    j = torch.minimum(torch.maximum(j, lo_j), hi_j)  # largest code at or below x (the lowest one below all)
    at = j * scale
    exact = at == x
    if mode == 4:
        # stochastic: up with probability (x - at) / scale, from y as before; a representable x never moves
        frac = torch.clamp(y - j, min=0.0, max=1.0)
        up = (((frac * float(1 << RAND_BITS)).to(torch.int32) + rbits) >= (1 << RAND_BITS)) & ~exact
    elif mode == 2:
        up = ~exact
    elif mode == 3:
        up = torch.zeros_like(exact)
    else:
        up = (x < 0) & ~exact  # toward zero
    up = up & (x > at)  # below the lowest code (or -inf) stays at the lowest code; NaN is replaced below
    out = torch.minimum(j + up.to(j.dtype), hi_j) * scale  # (a tiny x whose y underflows is handled too)
    return torch.where(x != x, x, torch.where(out == 0, 0.0, out))  # one zero, +0, as for nearest


# -- binary -----------------------------------------------------------------------------------------------------
def mean_abs(x: torch.Tensor) -> torch.Tensor:
    """mean |x| accumulated in float64 (a float32 sum overflows near float32's maximum), rounded once. The sum is
    divided by a tensor: ``mean()`` and division by a Python number multiply by 1 / n on CUDA (not correctly
    rounded); on the CPU both divide, so the results there are ``mean()``'s."""
    total = x.abs().to(torch.float64).sum()
    return (total / torch.full_like(total, x.numel())).to(torch.float32)


def binary_sign(x: torch.Tensor, scale: torch.Tensor, seed: torch.Tensor, mode: int) -> torch.Tensor:
    """``scale * sign(x)`` with sign(0) = +1 (BinaryNet); stochastic: +1 with probability clamp((x + 1) / 2, 0,
    1), resolved to 2**-30. NaN stays NaN."""
    if mode == 4:
        rbits = rand_like(seed, x)
        p = torch.clamp((x + 1.0) * 0.5, 0.0, 1.0)
        s = torch.where(rbits < (p * float(1 << RAND_BITS)).to(torch.int32), 1.0, -1.0)
    else:
        s = torch.where(x >= 0, 1.0, -1.0)
    return torch.where(x != x, x, s * scale)


# -- block (MX) -------------------------------------------------------------------------------------------------
def round_block(blocks: torch.Tensor, params: torch.Tensor, seed: torch.Tensor, mode: int, emax: int,
                fixed: bool) -> torch.Tensor:
    """Quantize a (n_blocks, block_size) float32 tensor: shared power-of-two scale per row, then elements.

    Used for fixed-point elements (mxint8); float elements run ``round_block_words``, which gives the same
    results with integer operations only (this float version is kept as its reference in tests).
    """
    amax = blocks.abs().amax(dim=1, keepdim=True)
    _, e = torch.frexp(amax)
    shared = torch.clamp(e - 1 - emax, min=-127, max=127).to(torch.float32)
    scale = torch.exp2(shared)
    scaled = (blocks * torch.exp2(-shared)).reshape(-1)  # a power-of-two product is exact; a GPU division may not be
    if mode in (2, 3):
        # unless it underflows: far below the element's quantum, but it must still round away from zero
        flat = blocks.reshape(-1)
        scaled = torch.where((scaled == 0) & (flat != 0), torch.sign(flat) * 2.0**-126, scaled)
    rbits = rand_like(seed, scaled) if mode == 4 else None
    if fixed:
        q = round_fixed_bits(scaled, params, rbits, mode)
    else:
        q = round_float_bits(scaled, params, rbits, mode, OVERFLOW["saturate"])
    out = q.view(blocks.shape) * scale
    return torch.where(amax < float("inf"), out, float("nan"))  # an inf or NaN in the block: all NaN


def _floor_log2(v: torch.Tensor) -> torch.Tensor:
    """floor(log2(v)) of positive int32 values below 2**23 (0 for 0), by binary search: integer operations."""
    e = torch.zeros_like(v)
    for b in (16, 8, 4, 2, 1):
        hi = v >> b
        c = hi > 0
        v = torch.where(c, hi, v)
        e = torch.where(c, e + b, e)
    return e


def round_block_words(w: torch.Tensor, params: torch.Tensor, seed: torch.Tensor, mode: int,
                      emax: int) -> torch.Tensor:
    """``round_block`` for float elements on float32 words (n_blocks, block_size), integer operations only.

    The shared exponent comes from the block's largest magnitude word; scaling by a power of two moves the
    exponent field (float32 subnormals are normalised first). A scaled value under float32's smallest normal is
    exact where the scale is 2**k with k >= 0 (a float32 subnormal scaled up: its word shifted left); where k < 0
    it is far below the element's smallest value (BlockFormat requires that smallest value to be at least 2**-95
    for elements that such blocks can reach) and 2**-126 stands in, so that every rounding mode sees a nonzero
    value under half a quantum. The element rounding is ``round_float_words`` (saturating); scaling back rounds
    to nearest even where the result is a float32 subnormal, as a float multiplication would.
    """
    a = w & ABS_MASK
    sign = w ^ a
    amax = a.amax(dim=1, keepdim=True)
    # the biased exponent of the block's maximum (<= 0 for a float32 subnormal: its floor(log2) + 127)
    e_amax = torch.where((amax >> 23) == 0, _floor_log2(amax) - 22, amax >> 23)
    k = -torch.clamp(e_amax - (127 + emax), min=-127, max=127)  # scaled = x * 2**k
    expf = a >> 23
    sub = expf == 0
    e_a = _floor_log2(a)  # used for float32 subnormals: a = 2**e_a * (1 + fraction)
    ext_exp = torch.where(sub, e_a - 22, expf)  # the exponent field a normalised float32 would have (may be <= 0)
    frac = torch.where(sub, (a << (23 - e_a)) & 0x7FFFFF, a & 0x7FFFFF)
    se = ext_exp + k
    below = torch.where(k >= 0, a << torch.clamp(k, min=0, max=31), 1 << 23)  # (k >= 0: a subnormal's own word)
    scaled = torch.where(a == 0, 0, torch.where(se >= 1, (se << 23) | frac, below))
    rbits = rand_like(seed, w) if mode == 4 else None
    r = round_float_words(scaled | sign, params, rbits, mode, OVERFLOW["saturate"]) & ABS_MASK
    # scale back by 2**-k; below float32's smallest normal, shift the significand right with ties to even (r is
    # itself a float32 subnormal only for elements with 8 exponent bits, whose blocks have k >= 0)
    er = r >> 23
    ne = torch.clamp(er, min=1) - k
    m24 = torch.where(er == 0, r, (r & 0x7FFFFF) | 0x800000)
    s = torch.clamp(1 - ne, min=1, max=31)
    denormal = (m24 + ((1 << (s - 1)) - 1) + ((m24 >> s) & 1)) >> s
    out = torch.where(r == 0, 0, torch.where(ne >= 1, r - (k << 23), denormal))
    return torch.where(amax >= EXP_INF, 0x7FC00000, out | sign)  # an inf or NaN in the block: all NaN


# -- dynamic fixed point ----------------------------------------------------------------------------------------
N_BINS = 277  # floor(log2|x|) + 149 for every finite nonzero float32: 0 (2**-149) .. 276 (2**127)


def exponent_bins(w: torch.Tensor) -> torch.Tensor:
    """floor(log2|x|) + 149 of float32 words ``w`` (int32), in [0, N_BINS); N_BINS for zeros, inf and NaN."""
    a = w & ABS_MASK
    expf = a >> 23
    bins = torch.where(expf == 0, _floor_log2(a), expf + 22)  # a subnormal's value is a * 2**-149
    return torch.where((a == 0) | (expf == 255), N_BINS, bins)


def exponent_histogram(bins: torch.Tensor, *, scatter: bool = False) -> torch.Tensor:
    """Counts of each bin in [0, N_BINS) (bin N_BINS is dropped): ``bincount``, or a scatter-add, which torch
    also runs where deterministic algorithms are required on CUDA."""
    if scatter:
        ones = torch.ones((), dtype=torch.int64, device=bins.device).expand(bins.numel())
        hist = torch.zeros(N_BINS + 1, dtype=torch.int64, device=bins.device).scatter_add_(0, bins.long(), ones)
    else:
        hist = torch.bincount(bins, minlength=N_BINS + 1)
    return hist[:N_BINS]


def dynamic_frac_bits(w: torch.Tensor, allowed: torch.Tensor | int, word_bits: int) -> torch.Tensor:
    """Courbariaux's overflow-rate rule: the largest fraction length F such that at most ``allowed`` (an int or a
    0-d tensor) finite elements of the float32 words ``w`` have |x| >= 2**(word_bits - 1 - F); among the lengths
    the rule admits, the one whose range reaches down to the smallest nonzero element (126 when there is none).

    From a histogram of the binary exponents (one compiled pass for the bins, one counting pass), so the whole
    float32 range is searched; no host synchronisation. Returns a 0-d int32 tensor on the words' device.
    (The native extension's ``dynamic_frac_bits`` applies the same rule on the CPU, the Triton kernels of
    ``triton_scales`` count the histogram on a GPU.)
    """
    bins = run(exponent_bins, w.reshape(-1), (), (), elementwise=True)
    # bincount has no deterministic CUDA kernel (integer counts are exact anyway, but torch refuses it there)
    hist = exponent_histogram(bins, scatter=w.is_cuda and torch.are_deterministic_algorithms_enabled())
    return frac_bits_from_histogram(hist, allowed, word_bits)


def frac_bits_from_histogram(hist: torch.Tensor, allowed: torch.Tensor | int, word_bits: int) -> torch.Tensor:
    """``dynamic_frac_bits`` from the counts of each exponent bin (``exponent_histogram``'s N_BINS counts)."""
    at_or_above = torch.cat([hist.flip(0).cumsum(0).flip(0), hist.new_zeros(1)])  # count(bin >= i), i <= N_BINS
    present = hist > 0
    lowest = torch.argmax(present.to(torch.int8))  # the first (smallest) occupied binade
    first_ok = torch.argmax((at_or_above <= allowed).to(torch.int8))  # counts only fall as i grows
    t = torch.maximum(lowest, first_ok) - 149  # |x| >= 2**t overflows
    frac = torch.clamp(word_bits - 1 - t, min=-126, max=126)
    return torch.where(present.any(), frac, 126).to(torch.int32)
