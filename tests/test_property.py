"""Property tests: for any float format hypothesis can build, the fast kernel equals the slow float64 reference
(itself checked against gfloat and ml_dtypes on a grid) on adversarial float32 inputs, in every rounding mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boundfinder import FloatFormat, FormatError, parse_format, quantize, reference
from boundfinder import kernels as K
from tests.bits import bits_equal, mismatches

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


# ================================================================================================================
# Non-float families against independent oracles: torch's fake_quantize and observers (integer affine), the
# histogram reference (dynamic fixed point), float64 arithmetic (binary), gfloat (MX blocks).
# ================================================================================================================
import math  # noqa: E402

import gfloat  # noqa: E402
from gfloat.block import BlockFormatInfo  # noqa: E402
from gfloat.formats import all_block_formats  # noqa: E402

from boundfinder import (  # noqa: E402
    BinaryFormat,
    BlockFormat,
    DynamicFixedPointFormat,
    FixedPointFormat,
    IntFormat,
    affine_qparams,
    fake_quantize_affine,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple)
KINDS = ["normal", "wide", "constant", "zeros", "subnormal", "huge", "tiny_and_big"]


def _values(kind: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """float32 data of a shape: ordinary, spread over many binades, all equal, all zero, float32 subnormals,
    near float32's maximum, or a few large values among tiny ones."""
    n = int(np.prod(shape))
    if kind == "normal":
        v = rng.normal(rng.normal(0, 1), 10.0 ** rng.uniform(-3, 3), n)
    elif kind == "wide":
        v = rng.normal(0, 1, n) * np.exp2(rng.integers(-60, 60, n))
    elif kind == "constant":
        v = np.full(n, rng.normal(0, 100))
    elif kind == "zeros":
        v = np.where(rng.random(n) < 0.5, 0.0, -0.0)
    elif kind == "subnormal":
        v = rng.integers(-(2**23), 2**23, n) * 2.0**-149
    elif kind == "huge":
        v = rng.uniform(-3.4e38, 3.4e38, n)
    else:
        v = rng.normal(0, 1e-30, n)
        v[rng.random(n) < 0.2] = rng.normal(0, 1e20)
    return v.astype(np.float32).reshape(shape)


@st.composite
def int_formats(draw, per_channel: bool | None = None) -> IntFormat:
    signed = draw(st.booleans())
    bits = draw(st.integers(2 if signed else 1, 16))
    if signed is False and bits == 1:
        bits = 2  # torch's observers need quant_min < quant_max with room for the zero point
    axis = None
    if per_channel is not False and (per_channel or draw(st.booleans())):
        axis = draw(st.integers(-4, 3))
    return IntFormat(bits=bits, signed=signed, symmetric=draw(st.booleans()), axis=axis)


def _torch_qparams(x: torch.Tensor, fmt: IntFormat, axis: int | None):
    """Scale and zero point from torch.ao's MinMaxObserver / PerChannelMinMaxObserver. 8-bit formats use
    torch's default ranges (uint8 symmetric: zero point 128); other widths a custom range, with qint32 as the
    observer dtype above 8 bits."""
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    if fmt.bits == 8:
        dtype, qrange = (torch.qint8 if fmt.signed else torch.quint8), {}
    else:
        dtype = torch.qint32 if fmt.bits > 8 else (torch.qint8 if fmt.signed else torch.quint8)
        qrange = {"quant_min": fmt.qmin, "quant_max": fmt.qmax}
    if axis is None:
        scheme = torch.per_tensor_symmetric if fmt.symmetric else torch.per_tensor_affine
        obs = MinMaxObserver(dtype=dtype, qscheme=scheme, **qrange)
    else:
        scheme = torch.per_channel_symmetric if fmt.symmetric else torch.per_channel_affine
        obs = PerChannelMinMaxObserver(ch_axis=axis, dtype=dtype, qscheme=scheme, **qrange)
    obs(x[:, None] if axis is not None and x.dim() == 1 else x)  # torch's per-channel observer needs 2-D
    scale, zp = obs.calculate_qparams()
    return scale.to(torch.float32), zp.to(torch.int32)


def _rows(x: np.ndarray, axis: int | None) -> np.ndarray:
    return x.reshape(1, -1) if axis is None else np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def _unrows(rows: np.ndarray, shape: tuple, axis: int | None) -> np.ndarray:
    if axis is None:
        return rows.reshape(shape)
    moved = np.moveaxis(np.empty(shape, np.float32), axis, 0).shape
    return np.moveaxis(rows.reshape(moved), 0, axis)


def _with_ties(x: np.ndarray, fmt: IntFormat, axis, scale, zp, rng) -> np.ndarray:
    """Overwrite some elements (not the extremes) with midpoints between codes, and one float32 ulp off them:
    values strictly inside the channel's calibrated range, so the scale and zero point stay as they are."""
    rows = _rows(x, axis).copy()
    s = np.atleast_1d(scale.numpy()).astype(np.float32)
    z = np.atleast_1d(zp.numpy()).astype(np.int64)
    lo_k, hi_k = fmt.qmin + 1, fmt.qmax - 2
    if hi_k < lo_k or not np.isfinite(s).all():
        return x
    for r in range(rows.shape[0]):
        row = rows[r]
        keep = {int(np.argmin(row)), int(np.argmax(row))}
        idx = [i for i in range(row.size) if i not in keep and rng.random() < 0.6]
        if not idx:
            continue
        k = rng.integers(lo_k, hi_k + 1, len(idx))
        t = ((k - z[r] + 0.5) * np.float64(s[r])).astype(np.float32)
        shift = rng.integers(-1, 2, len(idx))
        t = np.where(shift > 0, np.nextafter(t, np.float32(np.inf)), np.where(shift < 0, np.nextafter(
            t, np.float32(-np.inf)), t))
        inside = (t > row.min()) & (t < row.max())
        row[np.array(idx)[inside]] = t[inside]
    return _unrows(rows, x.shape, axis)


@FAST
@given(fmt=int_formats(), shape=shapes, kind=st.sampled_from(KINDS), seed=st.integers(0, 2**32 - 1))
def test_int_affine_nearest_equals_torch_observer_and_fake_quantize(fmt, shape, kind, seed):
    rng = np.random.default_rng(seed)
    if fmt.axis is not None and not -len(shape) <= fmt.axis < len(shape):
        fmt = IntFormat(bits=fmt.bits, signed=fmt.signed, symmetric=fmt.symmetric, axis=fmt.axis % len(shape))
    axis = None if fmt.axis is None else fmt.axis % len(shape)
    x = _values(kind, shape, rng)
    scale, zp = _torch_qparams(torch.from_numpy(x), fmt, axis)
    x = _with_ties(x, fmt, axis, scale, zp, rng)
    t = torch.from_numpy(x)
    scale, zp = _torch_qparams(t, fmt, axis)
    lo, hi = (torch.aminmax(t) if axis is None else torch.aminmax(torch.from_numpy(_rows(x, axis)), dim=1))
    my_scale, my_zp = affine_qparams(lo, hi, fmt)
    assert bits_equal(my_scale.reshape(-1), scale.reshape(-1))
    if fmt.symmetric and not fmt.signed and fmt.bits != 8:
        # documented choice: the mid code 2**(bits-1) (torch's default for uint8); torch's observer takes
        # (quant_min + quant_max) // 2 = 2**(bits-1) - 1 for a custom range, and 0 for qint32
        assert (my_zp == 2 ** (fmt.bits - 1)).all()
        zp = my_zp.reshape(zp.shape)
    else:
        assert torch.equal(my_zp.reshape(-1), zp.reshape(-1))
    if axis is None:
        want = torch.fake_quantize_per_tensor_affine(t, float(scale), int(zp), fmt.qmin, fmt.qmax)
    else:
        want = torch.fake_quantize_per_channel_affine(t, scale, zp, axis, fmt.qmin, fmt.qmax)
    got = quantize(t, fmt)
    assert bits_equal(got, want), f"{fmt} {kind}: " + mismatches(got, want, x)
    assert bits_equal(fake_quantize_affine(t, my_scale, my_zp, fmt), want)


@FAST
@given(fmt=int_formats(per_channel=False), seed=st.integers(0, 2**32 - 1),
       scale=st.floats(2.0**-20, 2.0**14, width=32), zp_pos=st.floats(0, 1))
def test_int_affine_fixed_parameters_with_ties_infinities_and_nan_equal_torch(fmt, seed, scale, zp_pos):
    """Given scale and zero point (any code), every finite and infinite value rounds as torch's
    fake_quantize_per_tensor_affine; NaN stays NaN (a documented choice: torch gives a saturated code)."""
    rng = np.random.default_rng(seed)
    zp = round(fmt.qmin + zp_pos * (fmt.qmax - fmt.qmin))
    k = rng.integers(fmt.qmin - 3, fmt.qmax + 3, 600) - zp
    mids = ((k + 0.5) * np.float64(scale)).astype(np.float32)
    x = np.concatenate([(k * np.float64(scale)).astype(np.float32), mids, np.nextafter(mids, np.float32(np.inf)),
                        np.nextafter(mids, np.float32(-np.inf)), rng.normal(0, scale * 2.0**fmt.bits, 300),
                        [0.0, -0.0, np.inf, -np.inf, 3e38, -3e38, 1e-45, -1e-45, 1e-40, np.nan]]).astype(np.float32)
    t = torch.from_numpy(x)
    want = torch.fake_quantize_per_tensor_affine(t, scale, zp, fmt.qmin, fmt.qmax)
    got = fake_quantize_affine(t, torch.tensor(scale), torch.tensor(zp, dtype=torch.int32), fmt)
    nan = torch.isnan(t)
    assert torch.isnan(got[nan]).all()
    assert bits_equal(got[~nan], want[~nan]), f"{fmt} s={scale} zp={zp}: " + mismatches(got[~nan], want[~nan],
                                                                                           x[~nan.numpy()])


def _grid_round(x: np.ndarray, grid: np.ndarray, rounding: str) -> np.ndarray:
    """Directed rounding to a sorted set of values (the format's dequantized codes), saturating at its ends:
    an oracle that never divides by the scale."""
    up_i = np.clip(np.searchsorted(grid, x, side="left"), 0, grid.size - 1)  # smallest g >= x (or the top)
    dn_i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, grid.size - 1)  # largest g <= x (or bottom)
    up, dn = grid[up_i], grid[dn_i]
    if rounding == "up":
        out = up
    elif rounding == "down":
        out = dn
    else:
        out = np.where(x < 0, up, dn)
    return np.where(np.isnan(x), np.nan, out).astype(np.float32)


@FAST
@given(fmt=int_formats(per_channel=False), rounding=st.sampled_from(["truncate", "up", "down", "stochastic"]),
       seed=st.integers(0, 2**32 - 1), scale=st.floats(2.0**-20, 2.0**14, width=32), zp_pos=st.floats(0, 1))
def test_int_affine_directed_and_stochastic_modes_round_to_the_dequantized_grid(fmt, rounding, seed, scale, zp_pos):
    """The representable values are float32((q - zp) * scale) for codes q in [qmin, qmax]; directed rounding
    picks the neighbour on its side (a representable value is its own result), stochastic one of the two."""
    rng = np.random.default_rng(seed)
    zp = round(fmt.qmin + zp_pos * (fmt.qmax - fmt.qmin))
    grid = ((np.arange(fmt.qmin, fmt.qmax + 1) - zp).astype(np.float32) * np.float32(scale)).astype(np.float32)
    k = rng.integers(0, grid.size, 800)
    x = np.concatenate([grid[k], ((grid[k] + grid[np.minimum(k + 1, grid.size - 1)]) / 2).astype(np.float32),
                        np.nextafter(grid[k], np.float32(np.inf)), np.nextafter(grid[k], np.float32(-np.inf)),
                        rng.normal(0, scale * 2.0**fmt.bits, 300),
                        [0.0, -0.0, np.inf, -np.inf, 3e38, -3e38, 1e-45, -1e-45, np.nan]]).astype(np.float32)
    t = torch.from_numpy(x)
    got = fake_quantize_affine(t, torch.tensor(scale), torch.tensor(zp, dtype=torch.int32), fmt, rounding).numpy()
    if rounding == "stochastic":
        lo, hi = _grid_round(x, grid, "down"), _grid_round(x, grid, "up")
        ok = (got == lo) | (got == hi) | (np.isnan(got) & np.isnan(x))
        assert ok.all(), f"{fmt} s={scale} zp={zp}: " + mismatches(got, lo, x)
        on_grid = np.isin(x, grid)
        assert (got[on_grid] == x[on_grid]).all(), "a representable value must round to itself"
        return
    want = _grid_round(x, grid, rounding)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{fmt} {rounding} s={scale!r} zp={zp}: " + mismatches(got, want, x)


# -- dynamic fixed point ------------------------------------------------------------------------------------------
@FAST
@given(w=st.integers(2, 24), rate=st.sampled_from([0.0, 1e-4, 0.001, 0.01, 0.1, 0.5]),
       shape=shapes, kind=st.sampled_from(KINDS), specials=st.booleans(),
       rounding=st.sampled_from(MODES[:4]), seed=st.integers(0, 2**32 - 1))
def test_dynamic_fixed_point_equals_histogram_rule_and_reference_rounding(w, rate, shape, kind, specials,
                                                                          rounding, seed):
    rng = np.random.default_rng(seed)
    x = _values(kind, shape, rng).reshape(-1)
    if specials:
        x[rng.integers(0, x.size, 2)] = rng.choice(np.array([np.inf, -np.inf, np.nan], np.float32), 2)
    x = x.reshape(shape)
    fmt = DynamicFixedPointFormat(word_bits=w, overflow_rate=rate)
    assert parse_format(str(fmt)) == fmt
    f = reference.dynamic_frac_bits(x, w, rate)
    got = quantize(torch.from_numpy(x), fmt, rounding).numpy()
    base = FixedPointFormat(word_bits=w, frac_bits=0)
    want = reference.round_fixed(x, base, rounding, frac_bits=f)
    fast = int(K.dynamic_frac_bits(torch.from_numpy(x).reshape(-1).view(torch.int32),
                                   torch.tensor(int(rate * x.size)), w))
    assert fast == f, f"dfixed{w} r={rate} {kind}: kernel frac {fast}, reference {f}"
    assert bits_equal(got + 0.0, want + 0.0), f"dfixed{w} r={rate} {rounding}: " + mismatches(got, want, x)


# -- binary ---------------------------------------------------------------------------------------------------------
def _within_one_ulp(got: np.ndarray, want64: np.ndarray) -> np.ndarray:
    """float32 ``got`` is float32(want64) or one of its float32 neighbours (inf/NaN must match exactly)."""
    w32 = want64.astype(np.float32)
    near = ((got == w32) | (got == np.nextafter(w32, np.float32(np.inf)))
            | (got == np.nextafter(w32, np.float32(-np.inf))))
    return near | (np.isnan(got) & np.isnan(w32))


@FAST
@given(mean=st.booleans(), axis=st.one_of(st.none(), st.integers(-4, 3)), shape=shapes,
       kind=st.sampled_from(KINDS), specials=st.sampled_from(["none", "inf", "nan"]), seed=st.integers(0, 2**32 - 1))
def test_binary_is_sign_times_float64_mean_of_magnitudes(mean, axis, shape, kind, specials, seed):
    """Asserts: sign(x) in {-1, +1} with sign(+-0) = +1; NaN stays NaN; binary_mean's magnitude is the mean of
    |x| (per tensor, or per channel along axis) computed in float64, rounded to float32, allowing one float32
    ulp either side (torch's float32 reduction); an infinite mean is +inf and a NaN in a channel makes it NaN."""
    rng = np.random.default_rng(seed)
    x = _values(kind, shape, rng).reshape(-1)
    if specials != "none" and x.size > 1:
        x[rng.integers(0, x.size)] = np.inf if specials == "inf" else np.nan
    x = x.reshape(shape)
    if axis is not None and not -x.ndim <= axis < x.ndim:
        axis = axis % x.ndim
    fmt = BinaryFormat(scale="mean" if mean else "none", axis=axis if mean else None)
    assert parse_format(str(fmt)) == fmt
    got = quantize(torch.from_numpy(x), fmt).numpy()
    sign = np.where(x >= 0, 1.0, -1.0)
    if not mean:
        assert bits_equal(got, np.where(np.isnan(x), np.nan, sign).astype(np.float32))
        return
    a = np.abs(x.astype(np.float64))
    m = a.mean() if axis is None else np.expand_dims(_rows(a, axis).mean(axis=1), tuple(
        i for i in range(x.ndim) if i != axis % x.ndim)) if x.ndim > 1 else _rows(a, axis).mean(axis=1)
    m = np.broadcast_to(m, x.shape)
    assert np.array_equal(np.isnan(got), np.isnan(x) | np.isnan(np.broadcast_to(m, x.shape))), "NaN pattern"
    ok = np.isnan(got) | (((got == 0) | (np.sign(got) == sign)) & _within_one_ulp(np.abs(got), m))
    assert ok.all(), f"{fmt} {kind}: " + mismatches(np.abs(got).ravel(), m.astype(np.float32).ravel(), x.ravel())


@FAST
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**31 - 2))
def test_binary_stochastic_draws_plus_one_with_hard_sigmoid_probability(n, seed):
    """Given the random bits r (30 bits, from the seed), +1 iff r < 2**30 * clamp((x + 1) / 2, 0, 1): checked
    against float64 arithmetic wherever r is more than 2**7 from that threshold (the kernel evaluates (x + 1) / 2
    in float32, an error under 2**-24, i.e. 2**6 in r's units)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(-1.5, 1.5, n), [-1.0, 1.0, 0.0, -0.0, np.inf, -np.inf, np.nan, 1e-8, -1e-8]])
    x = x.astype(np.float32)
    g = torch.Generator().manual_seed(seed)
    got = quantize(torch.from_numpy(x), "binary", "stochastic", generator=g).numpy()
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 2**31 - 1, (), generator=g, dtype=torch.int64).to(torch.int32)
    r = K.random_bits(s, x.size, torch.device("cpu")).numpy().astype(np.float64)
    p = np.clip((x.astype(np.float64) + 1) / 2, 0, 1)
    want = np.where(r < p * 2.0**30, 1.0, -1.0)
    clear = np.abs(r - p * 2.0**30) > 2**7
    assert np.isnan(got[np.isnan(x)]).all()
    fin = ~np.isnan(x)
    assert (got[fin & clear] == want[fin & clear]).all(), mismatches(got[fin & clear], want[fin & clear],
                                                                     x[fin & clear])
    assert set(np.unique(got[fin]).tolist()) <= {-1.0, 1.0}
    assert (got[x >= 1] == 1).all() and (got[x <= -1] == -1).all()


# -- MX blocks --------------------------------------------------------------------------------------------------
GFLOAT_DIRECTED = {"nearest": gfloat.RoundMode.TiesToEven, "truncate": gfloat.RoundMode.TowardZero,
                   "up": gfloat.RoundMode.TowardPositive, "down": gfloat.RoundMode.TowardNegative}
MX_BY_NAME = {b.name: b for b in all_block_formats}


def _gfloat_blocks(x: np.ndarray, block_fi, k: int, axis: int, rounding: str) -> np.ndarray:
    """gfloat.quantize_block on consecutive runs of k elements along axis (the last run may be shorter)."""
    fi = BlockFormatInfo(f"{block_fi.name}_k{k}", block_fi.etype, k, block_fi.stype)
    moved = np.moveaxis(x.reshape(1) if x.ndim == 0 else x, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1]).astype(np.float64)
    out = np.empty_like(rows)
    for i, row in enumerate(rows):
        for j in range(0, row.size, k):
            blk = row[j:j + k]
            if not np.isfinite(blk).all():
                out[i, j:j + k] = np.nan  # boundfinder's documented rule (gfloat raises): the block becomes NaN
                continue
            out[i, j:j + k] = gfloat.quantize_block(fi, blk, gfloat.compute_scale_amax, GFLOAT_DIRECTED[rounding])
    return np.moveaxis(out.reshape(moved.shape), -1, axis).reshape(x.shape).astype(np.float32)


@st.composite
def mx_cases(draw):
    name = draw(st.sampled_from(sorted(MX_BY_NAME)))
    k = draw(st.sampled_from([1, 2, 3, 8, 32]))
    shape = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3).filter(lambda s: math.prod(s) <= 400)
                 .map(tuple))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return name, k, shape, axis


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mx_cases(), rounding=st.sampled_from(["nearest", "truncate", "up", "down"]),
       seed=st.integers(0, 2**32 - 1), specials=st.booleans())
def test_mx_blocks_of_any_size_and_axis_equal_gfloat(case, rounding, seed, specials):
    """Random binade per element within a random block exponent anywhere in float32's range (subnormals too),
    elements far below the block maximum, zeros of both signs. Zeros' signs are not compared: gfloat decodes
    a negative value that rounds to zero as +0 for int8 elements (two's complement, no -0) and, for float
    elements, returns -0 or +0 depending on its code path, while boundfinder keeps the input's sign for float
    elements (IEEE: rounding keeps the sign) and gives +0 for mxint8."""
    name, k, shape, axis = case
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    top = rng.integers(-149, 128)
    x = rng.normal(0, 1, n) * np.exp2(top - rng.integers(0, 40, n) * (rng.random(n) < 0.3))
    x[rng.random(n) < 0.1] = 0.0
    x[rng.random(n) < 0.1] = -0.0
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    x[~np.isfinite(x)] = np.float32(3e38)
    if specials:
        x[rng.integers(0, n)] = rng.choice(np.array([np.inf, -np.inf, np.nan], np.float32))
    x = x.reshape(shape)
    fmt = parse_format(f"{name}" + ("" if k == 32 else f"_k{k}") + (
        "" if axis == -1 else (f"_ax{axis}" if axis >= 0 else f"_axm{-axis}")))
    assert isinstance(fmt, BlockFormat) and fmt.block_size == k and fmt.axis == axis
    assert parse_format(str(fmt)) == fmt
    want = _gfloat_blocks(x, MX_BY_NAME[name], k, axis, rounding)
    got = quantize(torch.from_numpy(x), fmt, rounding).numpy()
    unsigned_zero = lambda v: np.where(v == 0, np.float32(0), v)  # noqa: E731
    assert bits_equal(unsigned_zero(got), unsigned_zero(want)), f"{fmt} {rounding}: " + mismatches(got, want, x)
    if isinstance(fmt.element, FloatFormat):  # float elements keep the sign of a result that rounds to zero
        z = (got == 0) & np.isfinite(x)
        assert (np.signbit(got[z]) == np.signbit(x[z])).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mx_cases(), seed=st.integers(0, 2**32 - 1))
def test_mx_stochastic_picks_one_of_the_two_directed_results(case, seed):
    """gfloat has no stochastic block rounding: each element must be gfloat's toward-zero result or its
    away-from-zero neighbour (toward +inf for positive, -inf for negative values)."""
    name, k, shape, axis = case
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    x = (rng.normal(0, 1, n) * np.exp2(rng.integers(-140, 120))).astype(np.float32).reshape(shape)
    fmt = BlockFormat(element=parse_format(name).element, block_size=k, axis=axis)
    got = quantize(torch.from_numpy(x), fmt, "stochastic", generator=torch.Generator().manual_seed(seed)).numpy()
    toward = _gfloat_blocks(x, MX_BY_NAME[name], k, axis, "truncate")
    away = np.where(x < 0, _gfloat_blocks(x, MX_BY_NAME[name], k, axis, "down"),
                    _gfloat_blocks(x, MX_BY_NAME[name], k, axis, "up"))
    ok = (np.abs(got) == np.abs(toward)) | (np.abs(got) == np.abs(away))
    assert ok.all(), f"{fmt}: " + mismatches(got, toward, x)
    again = quantize(torch.from_numpy(x), fmt, "stochastic", generator=torch.Generator().manual_seed(seed)).numpy()
    assert bits_equal(got, again)


# -- API invariants for every family --------------------------------------------------------------------------------
FAMILY_NAMES = ["e4m3fn", "bf16", "fixed8.4", "ufixed8.8", "dfixed8", "dfixed12_r0.01", "int8", "uint4_sym",
                "int8_ch0", "int16_chm1", "binary", "binary_mean", "binary_mean_ch0", "mxfp8_e4m3", "mxfp4_e2m1_k8",
                "mxint8_k16", "mxfp6_e3m2_ax0"]
ELEMENTWISE = ["e4m3fn", "bf16", "fixed8.4", "ufixed8.8", "binary"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(FAMILY_NAMES), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       shape=st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple),
       rounding=st.sampled_from(MODES), seed=st.integers(0, 2**31 - 2))
def test_quantize_api_invariants_for_every_family(name, dtype, shape, rounding, seed):
    fmt = parse_format(name)
    if isinstance(fmt, BinaryFormat) and rounding not in ("nearest", "stochastic"):
        rounding = "nearest"
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 4).to(dtype)
    y = quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(seed))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    if x.numel() == 0:
        return
    assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    before = x.clone()
    y.add_(1)  # the result may be modified in place without touching the input
    assert torch.equal(x, before)
    y = quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(seed))
    again = quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(seed))
    assert bits_equal(y.float(), again.float())  # same seed, same result (deterministic modes trivially)
    # a narrower dtype is rounded through float32 and cast back
    want = quantize(x.float(), fmt, rounding, generator=torch.Generator().manual_seed(seed)).to(dtype)
    assert bits_equal(y.float(), want.float())
    if name in ELEMENTWISE and rounding != "stochastic" and dtype == torch.float32:
        assert bits_equal(quantize(y, fmt, rounding), y), "rounding twice must change nothing"


@pytest.mark.parametrize("rounding", ["truncate", "up", "down", "stochastic"])
def test_int_affine_directed_modes_keep_representable_values_compiled_and_eager(rounding):
    """Regression: 1/scale in float32 made x * (1/scale) one ulp below an integer for a representable x, so
    fake_quantize_affine([2707.], scale=2707, zp=0, 'uint2', 'truncate') gave 0 (and 'down' too; 'up' moved some
    values one code up). Checked above 4,096 elements too, where the compiled kernel runs."""
    fmt = parse_format("uint2")
    x = torch.tensor([2707.0, 5414.0, 8121.0])
    got = fake_quantize_affine(x, torch.tensor(2707.0), torch.tensor(0, dtype=torch.int32), fmt, rounding)
    assert got.tolist() == x.tolist()
    fmt = parse_format("int16")
    rng = np.random.default_rng(5)
    for scale in (2707.0, 0.1, 3.0e-5, 7.0):
        grid = ((np.arange(fmt.qmin, fmt.qmax + 1) - 17).astype(np.float32) * np.float32(scale)).astype(np.float32)
        xs = np.concatenate([grid[rng.integers(0, grid.size, 6000)], rng.normal(0, scale * 2**14, 6000)])
        xs = xs.astype(np.float32)
        t = torch.from_numpy(xs)
        got = fake_quantize_affine(t, torch.tensor(scale), torch.tensor(17, dtype=torch.int32), fmt, rounding).numpy()
        if rounding == "stochastic":
            assert np.isin(got, grid).all() and (got[:6000] == xs[:6000]).all()
        else:
            assert bits_equal(got, _grid_round(xs, grid, rounding)), mismatches(got, _grid_round(xs, grid, rounding),
                                                                               xs)


def test_binary_mean_of_values_near_float32s_maximum_is_finite():
    """Regression: the float32 sum of |x| overflowed, so binary_mean of [3e38, -3e38, 2e38] was [inf, -inf, inf]
    although mean |x| = 2.67e38 (float64 oracle)."""
    x = torch.tensor([3e38, -3e38, 2e38])
    m = np.float32(np.abs(x.numpy().astype(np.float64)).mean())
    assert quantize(x, "binary_mean").tolist() == [m, -m, m]
    assert quantize(x.reshape(1, 3), "binary_mean_ch0").reshape(-1).tolist() == [m, -m, m]


def test_dynamic_fixed_point_follows_the_rule_beyond_32_binades():
    # (an earlier kernel looked only 32 binades below the largest element and gave frac -61 here)
    x = np.concatenate([[1e30], np.full(50, 1e-10)]).astype(np.float32)
    f = reference.dynamic_frac_bits(x, 8, 0.05)  # 40: the single 1e30 may saturate (allowance 2)
    got = quantize(torch.from_numpy(x), "dfixed8_r0.05").numpy()
    assert bits_equal(got, reference.round_fixed(x, FixedPointFormat(word_bits=8, frac_bits=0), "nearest",
                                                 frac_bits=f))
