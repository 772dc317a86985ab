"""Slow, obvious reference rounding in float64 arithmetic, kept beside the fast kernels for tests.

Each value is written as ``significand * 2**exponent`` with numpy's frexp, the two neighbours on the format's
grid are found by floor, and the rounding mode picks one. No bit tricks, no shared code with ``kernels``
beyond the format objects and the random bits that stochastic rounding consumes.
"""

from __future__ import annotations

import math

import numpy as np

from boundfinder.formats import FixedPointFormat, FloatFormat

RAND_BITS = 30


def _pick_up(y: np.ndarray, lo: np.ndarray, neg: np.ndarray, rounding: str, rbits: np.ndarray | None,
             odd: np.ndarray | None = None) -> np.ndarray:
    """Whether to take the upper neighbour (lo + 1) of the nonnegative grid coordinate ``y``. ``odd`` says
    whether the lower neighbour's code is odd (default: lo is odd), for ties to even."""
    frac = y - lo
    if rounding == "nearest":
        odd = np.mod(lo, 2) == 1 if odd is None else odd
        return (frac > 0.5) | ((frac == 0.5) & odd)
    if rounding == "truncate":
        return np.zeros_like(frac, dtype=bool)
    if rounding == "up":  # toward +inf: away from zero for positive values
        return (frac > 0) & ~neg
    if rounding == "down":
        return (frac > 0) & neg
    if rounding == "stochastic":
        # round up iff floor(frac * 2**30) + r >= 2**30, r uniform in [0, 2**30)
        return np.floor(frac * 2.0**RAND_BITS) + rbits >= 2.0**RAND_BITS
    raise ValueError(rounding)


def round_float(x: np.ndarray, fmt: FloatFormat, rounding: str, rbits: np.ndarray | None = None) -> np.ndarray:
    """Round float32 values ``x`` to ``fmt``; returns float32."""
    x = np.asarray(x, dtype=np.float32)
    v = x.astype(np.float64)
    neg = np.signbit(v)
    mag = np.abs(v)
    finite = np.isfinite(mag)
    safe = np.where(finite & (mag > 0), mag, 1.0)
    _, e = np.frexp(safe)
    e = e - 1  # mag = m * 2**e with m in [1, 2)
    if fmt.subnormals:
        quantum_exp = np.maximum(e, fmt.emin) - fmt.man_bits
    else:
        # between 0 and the smallest normal the only values are 0 and min_normal: a quantum of min_normal
        quantum_exp = np.where(e >= fmt.emin, e - fmt.man_bits, fmt.emin)
    quantum = np.ldexp(1.0, quantum_exp)
    y = safe / quantum
    lo = np.floor(y)
    odd = np.mod(lo, 2) == 1
    if fmt.man_bits == 0:  # one code per binade: the code's last bit is the biased exponent's
        odd = np.where(lo >= 1, np.mod(quantum_exp + fmt.bias, 2) == 1, odd)
    up = _pick_up(y, lo, neg, rounding, None if rbits is None else np.asarray(rbits, dtype=np.float64), odd)
    res = (lo + up) * quantum
    res = np.where(mag == 0, 0.0, res)

    toward_zero = {"nearest": False, "stochastic": False, "truncate": True}.get(rounding)
    if toward_zero is None:
        toward_zero = neg if rounding == "up" else ~neg
    toward_zero = np.broadcast_to(toward_zero, res.shape)
    over = res > fmt.max_finite
    if fmt.overflow == "saturate":
        res = np.where(~finite | over, fmt.max_finite, res)
    else:
        big = math.inf if fmt.overflow == "inf" else math.nan
        res = np.where(over & toward_zero, fmt.max_finite, np.where(over, big, res))
        infinite_result = math.inf if fmt.has_inf else big
        res = np.where(~finite, infinite_result, res)
    res = np.where(np.isnan(v), np.nan, res)
    return np.where(neg, -res, res).astype(np.float32)


def round_fixed(x: np.ndarray, fmt: FixedPointFormat, rounding: str, rbits: np.ndarray | None = None,
                frac_bits: int | None = None) -> np.ndarray:
    """Round float32 values to fixed point with saturation; returns float32."""
    f = fmt.frac_bits if frac_bits is None else frac_bits
    v = np.asarray(x, dtype=np.float32).astype(np.float64)
    neg = np.signbit(v)
    y = np.abs(np.nan_to_num(v, nan=0.0, posinf=1e300, neginf=-1e300)) * 2.0**f
    lo = np.floor(y)
    # rounding a magnitude: "up"/"down" refer to the signed value
    up = _pick_up(y, lo, neg, rounding, None if rbits is None else np.asarray(rbits, dtype=np.float64))
    if rounding == "stochastic":
        # the fast path draws on the signed value: up means toward +inf for both signs
        ys = v * 2.0**f
        los = np.floor(np.nan_to_num(ys, nan=0.0, posinf=1e300, neginf=-1e300))
        up_s = np.floor((ys - los) * 2.0**RAND_BITS) + np.asarray(rbits, dtype=np.float64) >= 2.0**RAND_BITS
        k = los + up_s
    else:
        k = np.where(neg, -(lo + up), lo + up)
    k = np.clip(k, fmt.qmin, fmt.qmax)
    res = np.where(k == 0, 0.0, k * 2.0**-f)  # one zero, +0, as in two's complement
    res = np.where(np.isnan(v), np.nan, res)
    return res.astype(np.float32)


def dynamic_frac_bits(x: np.ndarray, word_bits: int, overflow_rate: float) -> int:
    """The overflow-rate rule from a full histogram of binary exponents: the largest fraction length F such
    that at most floor(rate * n) finite elements have |x| >= 2**(word_bits - 1 - F)."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    a = a[np.isfinite(a) & (a > 0)]
    allowed = int(overflow_rate * np.asarray(x).size)
    if a.size == 0:
        return 126
    e = np.floor(np.log2(a)).astype(int)  # |x| >= 2**t  <=>  e >= t
    for t in range(int(e.min()), int(e.max()) + 2):
        if np.count_nonzero(e >= t) <= allowed:
            return int(np.clip(word_bits - 1 - t, -126, 126))
    raise AssertionError("unreachable: no element is >= 2**(max + 1)")
