"""Independent oracles and input generators shared by the rounding tests."""

from __future__ import annotations

import gfloat
import ml_dtypes
import numpy as np
from gfloat.types import Domain, FormatInfo

from boundfinder import FloatFormat

ML_DTYPES = {
    "bf16": ml_dtypes.bfloat16,
    "fp16": np.float16,
    "e5m2": ml_dtypes.float8_e5m2,
    "e4m3fn": ml_dtypes.float8_e4m3fn,
    "e3m2fn": ml_dtypes.float6_e3m2fn,
    "e2m3fn": ml_dtypes.float6_e2m3fn,
    "e2m1fn": ml_dtypes.float4_e2m1fn,
}

GFLOAT_MODES = {
    "nearest": gfloat.RoundMode.TiesToEven,
    "truncate": gfloat.RoundMode.TowardZero,
    "up": gfloat.RoundMode.TowardPositive,
    "down": gfloat.RoundMode.TowardNegative,
    # round away iff delta + r * 2**-30 >= 1: the contract of boundfinder's stochastic rounding
    "stochastic": gfloat.RoundMode.StochasticFastest,
}


def gfloat_info(fmt: FloatFormat) -> FormatInfo:
    nans = {"ieee": 2**fmt.man_bits - 1, "fn": 1, "finite": 0}[fmt.encoding]
    return FormatInfo(
        name=str(fmt), k=fmt.bits, precision=fmt.man_bits + 1, bias=fmt.bias, is_signed=True,
        domain=Domain.Extended if fmt.encoding == "ieee" else Domain.Finite, has_nz=True,
        num_high_nans=nans, has_subnormals=fmt.subnormals, is_twos_complement=False,
    )


def gfloat_round(x: np.ndarray, fmt: FloatFormat, rounding: str, rbits: np.ndarray | None = None) -> np.ndarray:
    kwargs = {}
    if rounding == "stochastic":
        kwargs = {"srbits": rbits.astype(np.int64), "srnumbits": 30}
    out = gfloat.round_ndarray(gfloat_info(fmt), x.astype(np.float64), GFLOAT_MODES[rounding],
                               sat=fmt.overflow == "saturate", **kwargs)
    return np.asarray(out, dtype=np.float32)


def all_values(fmt: FloatFormat) -> np.ndarray:
    """Every finite nonnegative value of the format, ascending, decoded by gfloat (not by boundfinder)."""
    fi = gfloat_info(fmt)
    codes = np.arange(2 ** (fmt.bits - 1))  # sign bit clear
    vals = np.asarray(gfloat.decode_ndarray(fi, codes), dtype=np.float64)
    return np.unique(vals[np.isfinite(vals)])


def f32(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64).astype(np.float32)


def corner_inputs(fmt: FloatFormat, seed: int = 0, n_random: int = 4000) -> np.ndarray:
    """Every code, every midpoint and midpoint +-1 float32 ulp, max +- half ulp, subnormal edges, half the smallest
    subnormal, float32 subnormals, +-0, +-inf, NaN and random float32 bit patterns; both signs."""
    vals = all_values(fmt)
    mids = (vals[:-1] + vals[1:]) / 2  # exact in float64; rounded to float32 below where needed
    mids32 = f32(mids)
    up = np.nextafter(mids32, np.float32(np.inf))
    down = np.nextafter(mids32, np.float32(0))
    top = vals[-1]
    ulp_top = top - vals[-2]
    extra = [
        top + ulp_top / 2, top + ulp_top / 2 * 0.999, top + ulp_top / 2 * 1.001, top + ulp_top, top * 2, 3e38,
        vals[1] / 2, vals[1] / 2 * 1.001, vals[1] / 2 * 0.999, vals[1] / 4,  # half the smallest subnormal
        fmt.min_normal, fmt.min_normal * (1 - 2**-24), fmt.min_normal * (1 + 2**-23),
        1e-45, 1.2e-38, 5e-39, 1.17549435e-38, 0.0, np.inf,  # float32 subnormals, smallest normal, zero, inf
    ]
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**32, n_random, dtype=np.uint64).astype(np.uint32)
    rand = words.view(np.float32)
    pos = np.concatenate([f32(vals), mids32, up, down, f32(extra)])
    out = np.concatenate([pos, -pos, rand, f32([np.nan])])
    return out.astype(np.float32)
