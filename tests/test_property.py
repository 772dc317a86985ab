"""Property tests: for any float format hypothesis can build, the fast kernel equals the slow float64 reference
(itself checked against gfloat and ml_dtypes on a grid) on adversarial float32 inputs, in every rounding mode."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boundfinder import FloatFormat, FormatError, parse_format, quantize, reference
from boundfinder import kernels as K
from tests.oracles import bits_equal, mismatches

MODES = ["nearest", "truncate", "up", "down", "stochastic"]


@st.composite
def float_formats(draw) -> FloatFormat:
    e = draw(st.integers(1, 8))
    m = draw(st.integers(0, 23))
    encoding = draw(st.sampled_from(["ieee", "fn", "finite"]))
    overflow = draw(st.sampled_from({"ieee": ["inf", "saturate"], "fn": ["nan", "saturate"],
                                     "finite": ["saturate"]}[encoding]))
    default_bias = 2 ** (e - 1) - 1
    bias = draw(st.integers(default_bias - 3, default_bias + 3))
    try:
        return FloatFormat(exp_bits=e, man_bits=m, bias=bias, encoding=encoding, overflow=overflow,
                           subnormals=draw(st.booleans()))
    except FormatError:
        return FloatFormat(exp_bits=max(e, 2), man_bits=m)


def adversarial_inputs(fmt: FloatFormat, seed: int, n: int = 4000) -> np.ndarray:
    """Random words, and values at and around the format's own landmarks: the edges of its range, its
    quanta, ties between neighbours (and one float32 ulp either side), each with both signs."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    q = np.float32(np.ldexp(1.0, fmt.emin - (fmt.man_bits if fmt.subnormals else 0)))
    marks = np.array([fmt.max_finite, fmt.min_normal, q, q / 2, 3 * q / 2, fmt.max_finite * 1.0625, 1.0, 1.5],
                     dtype=np.float32)
    # values on a random binade's grid, shifted by half a spacing (ties) and by one float32 ulp either side
    k = rng.integers(fmt.emin - 3, fmt.emax + 2, n)
    spacing = np.ldexp(1.0, np.maximum(k, fmt.emin) - fmt.man_bits)
    on_grid = (np.ldexp(1.0, k) + spacing * rng.integers(0, 2 ** min(fmt.man_bits, 20), n)).astype(np.float32)
    ties = (on_grid + spacing / 2).astype(np.float32)
    x = np.concatenate([words, marks, on_grid, ties, np.nextafter(ties, np.float32(np.inf)),
                        np.nextafter(ties, np.float32(0)), [0.0, np.inf, np.nan]]).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.concatenate([x, -x]).astype(np.float32)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=float_formats(), rounding=st.sampled_from(MODES), seed=st.integers(0, 2**32 - 1))
def test_kernel_equals_the_reference_for_any_float_format(fmt, rounding, seed):
    x = adversarial_inputs(fmt, seed)
    rbits = np.random.default_rng(seed + 1).integers(0, 2**30, x.size)
    want = reference.round_float(x, fmt, rounding, rbits if rounding == "stochastic" else None)
    t = torch.from_numpy(x)
    rb = torch.from_numpy(rbits.astype(np.int32)) if rounding == "stochastic" else None
    got = K.round_float_bits(t, K.float_params(fmt, t.device), rb, K.MODE[rounding], K.OVERFLOW[fmt.overflow],
                             K.float_variant(fmt)).numpy()
    assert bits_equal(got, want), f"{fmt} {rounding}: " + mismatches(got, want, x)


@settings(max_examples=40, deadline=None)
@given(fmt=float_formats(), rounding=st.sampled_from(MODES[:4]))
def test_rounding_twice_changes_nothing_and_names_round_trip(fmt, rounding):
    assert parse_format(str(fmt)) == fmt
    x = torch.from_numpy(adversarial_inputs(fmt, 0, n=500))
    once = quantize(x, fmt, rounding)
    assert bits_equal(quantize(once, fmt, rounding).numpy(), once.numpy())


@settings(max_examples=100, deadline=None)
@given(w=st.integers(2, 24), f=st.integers(-8, 30), signed=st.booleans(), rounding=st.sampled_from(MODES),
       seed=st.integers(0, 2**32 - 1))
def test_fixed_point_kernel_equals_the_reference(w, f, signed, rounding, seed):
    from boundfinder import FixedPointFormat

    try:
        fmt = FixedPointFormat(word_bits=w, frac_bits=f, signed=signed)
    except FormatError:
        return
    rng = np.random.default_rng(seed)
    step = np.ldexp(1.0, -f)
    k = rng.integers(fmt.qmin - 3, fmt.qmax + 3, 3000)
    x = np.concatenate([k * step, (k + 0.5) * step, rng.normal(0, 2.0 ** (w - f - 1), 3000),
                        rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    x = x.astype(np.float32)
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), [np.inf, -np.inf, np.nan, 0.0, -0.0]])
    x = x.astype(np.float32)
    rbits = rng.integers(0, 2**30, x.size)
    want = reference.round_fixed(x, fmt, rounding, rbits if rounding == "stochastic" else None)
    t = torch.from_numpy(x)
    rb = torch.from_numpy(rbits.astype(np.int32)) if rounding == "stochastic" else None
    got = K.round_fixed_bits(t, K.fixed_params(fmt, t.device), rb, K.MODE[rounding]).numpy()
    assert bits_equal(got, want), f"{fmt} {rounding}: " + mismatches(got, want, x)
