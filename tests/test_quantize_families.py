"""Fixed point, dynamic fixed point, integer affine, binary and MX block formats against independent oracles."""

from __future__ import annotations

from fractions import Fraction

import gfloat
import numpy as np
import pytest
import torch
from gfloat.formats import all_block_formats

from boundfinder import (
    FixedPointFormat,
    FormatError,
    affine_qparams,
    fake_quantize_affine,
    parse_format,
    quantize,
    quantize_ste,
    reference,
)
from boundfinder import kernels as K
from tests.bits import bits_equal, mismatches
from tests.oracles import GFLOAT_MODES

MODES = ["nearest", "truncate", "up", "down"]


def _fixed_inputs(fmt: FixedPointFormat, seed=0) -> np.ndarray:
    q = fmt.quantum
    grid = np.arange(fmt.qmin - 2, fmt.qmax + 3, dtype=np.float64)
    k = grid if grid.size < 5000 else np.random.default_rng(seed).choice(grid, 5000)
    mids = (k + 0.5) * q
    m32 = mids.astype(np.float32)
    vals = np.concatenate([k * q, mids, np.nextafter(m32, np.float32(np.inf)), np.nextafter(m32, np.float32(-np.inf)),
                           [0.0, -0.0, np.inf, -np.inf, 1e30]])
    rnd = np.random.default_rng(seed).normal(0, fmt.max_finite / 2, 3000)
    return np.concatenate([vals, rnd, [np.nan]]).astype(np.float32)


def _exact_fixed(x: float, fmt: FixedPointFormat, rounding: str) -> float:
    """Exact rational arithmetic: the nearest / directed grid point, then saturation."""
    if np.isnan(x):
        return float("nan")
    if np.isinf(x):
        return fmt.max_finite if x > 0 else fmt.qmin * fmt.quantum
    y = Fraction(float(x)) / Fraction(fmt.quantum)
    lo = y.numerator // y.denominator
    frac = y - lo
    if rounding == "nearest":
        k = lo + (frac > Fraction(1, 2) or (frac == Fraction(1, 2) and lo % 2 == 1))
    elif rounding == "truncate":
        k = lo if y >= 0 else -((-y.numerator) // y.denominator)
    elif rounding == "up":
        k = lo + (frac > 0)
    else:
        k = lo
    k = min(max(k, fmt.qmin), fmt.qmax)
    return float(Fraction(k) * Fraction(fmt.quantum))


@pytest.mark.parametrize("name", ["fixed16.8", "fixed8.4", "fixed8.0", "ufixed8.8", "fixed12.-2", "fixed24.20"])
@pytest.mark.parametrize("rounding", MODES)
def test_fixed_point_matches_exact_rational_arithmetic(name, rounding):
    fmt = parse_format(name)
    x = _fixed_inputs(fmt)
    got = quantize(torch.from_numpy(x), fmt, rounding).numpy()
    want = np.array([_exact_fixed(v, fmt, rounding) for v in x], dtype=np.float32)
    ok = (np.abs(got) == np.abs(want)) | (np.isnan(got) & np.isnan(want))  # sign of zero: see the reference
    assert ok.all(), mismatches(got, want, x)
    # fixed point has no signed zero (and compiled kernels may not keep one): compare with zeros made positive
    assert bits_equal(got + 0.0, reference.round_fixed(x, fmt, rounding) + 0.0)


def test_fixed_point_stochastic_matches_reference_given_bits():
    fmt = parse_format("fixed8.4")
    x = _fixed_inputs(fmt)
    rbits = np.random.default_rng(0).integers(0, 2**30, x.size)
    t = torch.from_numpy(x)
    got = K.round_fixed_bits(t, K.fixed_params(fmt, t.device), torch.from_numpy(rbits.astype(np.int32)), 4)
    assert bits_equal(got.numpy() + 0.0, reference.round_fixed(x, fmt, "stochastic", rbits) + 0.0)


def test_dynamic_fixed_point_follows_the_overflow_rate():
    x = torch.randn(100_000) * 3.0
    fmt = parse_format("dfixed8")  # overflow_rate 1e-4: at most 10 of 100000 elements may saturate
    frac = reference.dynamic_frac_bits(x.numpy(), 8, 1e-4)
    y = quantize(x, fmt)
    assert bits_equal(y, quantize(x, FixedPointFormat(word_bits=8, frac_bits=frac)))
    limit = 2.0 ** (7 - frac)
    assert (x.abs() >= limit).sum() <= 10  # the rule holds ...
    assert (x.abs() >= limit / 2).sum() > 10  # ... and one more fraction bit would break it
    # scale follows the tensor: ten times larger data, about log2(10) fewer fraction bits
    assert reference.dynamic_frac_bits(x.numpy() * 10, 8, 1e-4) in (frac - 4, frac - 3)
    # tensors of other sizes reuse the compiled kernel: the allowance is data, not a compile-time constant
    before = K._compiled.cache_info().currsize
    for n in (5_000, 70_000, 123_457):
        quantize(torch.randn(n), fmt)
    assert K._compiled.cache_info().currsize <= before + 1


@pytest.mark.parametrize("rate", [0.0, 1e-4, 0.01, 0.3])
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_dynamic_fixed_point_fraction_bits_match_the_histogram_reference(rate, scale):
    g = torch.Generator().manual_seed(int(rate * 1e4))
    x = torch.randn(50_000, generator=g) * torch.exp2(torch.randint(-8, 8, (50_000,), generator=g).float()) * scale
    x[:3] = torch.tensor([0.0, float("inf"), float("nan")])
    fast = int(K.dynamic_frac_bits(x.view(torch.int32), torch.tensor(int(rate * x.numel())), 8))
    assert fast == reference.dynamic_frac_bits(x.numpy(), 8, rate)


@pytest.mark.parametrize("name", ["int8", "uint8", "int8_sym", "uint8_sym", "int4", "uint4"])
def test_int_affine_matches_torch_fake_quantize_per_tensor(name):
    from torch.ao.quantization.observer import MinMaxObserver

    fmt = parse_format(name)
    x = torch.cat([torch.randn(20000) * 3 + 1, torch.tensor([0.0, -0.0])])
    dtype = torch.qint8 if fmt.signed else torch.quint8
    scheme = torch.per_tensor_symmetric if fmt.symmetric else torch.per_tensor_affine
    # 8-bit: torch's default ranges (a custom range would move uint8's symmetric zero point from 128 to 127)
    qrange = {} if fmt.bits == 8 else {"quant_min": fmt.qmin, "quant_max": fmt.qmax}
    obs = MinMaxObserver(dtype=dtype, qscheme=scheme, **qrange)
    obs(x)
    scale, zp = obs.calculate_qparams()
    my_scale, my_zp = affine_qparams(x.min(), x.max(), fmt)
    assert torch.equal(my_scale, scale.reshape(())) and int(my_zp) == int(zp)
    want = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), fmt.qmin, fmt.qmax)
    assert bits_equal(quantize(x, fmt), want)
    assert bits_equal(fake_quantize_affine(x, my_scale, my_zp, fmt), want)


@pytest.mark.parametrize("name", ["int8_ch0", "uint8_ch1", "int8_sym_ch0"])
def test_int_affine_matches_torch_fake_quantize_per_channel(name):
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    fmt = parse_format(name)
    x = torch.randn(16, 24, 3) * torch.linspace(0.1, 5, 16)[:, None, None]
    dtype = torch.qint8 if fmt.signed else torch.quint8
    scheme = torch.per_channel_symmetric if fmt.symmetric else torch.per_channel_affine
    obs = PerChannelMinMaxObserver(ch_axis=fmt.axis, dtype=dtype, qscheme=scheme)
    obs(x)
    scale, zp = obs.calculate_qparams()
    want = torch.fake_quantize_per_channel_affine(x, scale, zp.to(torch.int32), fmt.axis, fmt.qmin, fmt.qmax)
    assert bits_equal(quantize(x, fmt), want)


def test_int_affine_seed_table_example():
    # The study's uint8 table: code 0 <-> -10.0, code 255 <-> 30.0. Zero must be exact, so the zero point is
    # round(10 / (40/255)) = 64 and the end points move by less than one step (40/255).
    x = torch.tensor([-10.0, 0.0, 10.0, 30.0])
    scale, zp = affine_qparams(x.min(), x.max(), "uint8")
    assert int(zp) == 64 and abs(float(scale) - 40 / 255) < 1e-7
    y = quantize(x, "uint8")
    assert y[1] == 0.0 and (y - x).abs().max() < 40 / 255


def test_binary_sign_scale_and_stochastic():
    x = torch.tensor([0.3, -0.2, 0.0, -0.0, 2.0, float("nan")])
    assert quantize(x, "binary")[:5].tolist() == [1.0, -1.0, 1.0, 1.0, 1.0]
    assert torch.isnan(quantize(x, "binary")[5])
    w = torch.randn(8, 5)
    y = quantize(w, "binary_mean_ch0")
    assert torch.allclose(y.abs(), w.abs().mean(dim=1, keepdim=True).expand_as(w))
    # stochastic: P(+1) = clip((x + 1) / 2, 0, 1)
    v = torch.full((200_000,), 0.5)
    p = (quantize(v, "binary", "stochastic") > 0).float().mean().item()
    assert abs(p - 0.75) < 0.005  # 5 sigma of a binomial proportion with n=2e5 is 0.0048
    with pytest.raises(FormatError, match="rounding must be one of"):
        quantize(v, "binary", "truncate")


def test_binary_ste_clips_gradient():
    w = torch.tensor([0.5, -1.5, 1.0], requires_grad=True)
    quantize_ste(w, "binary").sum().backward()
    assert w.grad.tolist() == [1.0, 0.0, 1.0]


def _assert_blocks_match_gfloat(x: np.ndarray, fmt, block_fi, rounding: str) -> None:
    """quantize(x, fmt, rounding) equals gfloat.quantize_block on each row of x (one block per row), bit for bit."""
    rnd = GFLOAT_MODES[rounding]
    want = np.stack([gfloat.quantize_block(block_fi, row.astype(np.float64), gfloat.compute_scale_amax, rnd)
                     for row in x]).astype(np.float32)
    got = quantize(torch.from_numpy(x), fmt, rounding).numpy()
    unsigned_zero = lambda v: np.where(v == 0, np.float32(0), v)  # noqa: E731 - gfloat's zeros may differ in sign
    assert bits_equal(unsigned_zero(got), unsigned_zero(want)), mismatches(got, want, x)


@pytest.mark.parametrize("block_fi", all_block_formats, ids=lambda b: b.name)
@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
def test_mx_block_formats_match_gfloat(block_fi, rounding):
    fmt = parse_format(block_fi.name)
    rng = np.random.default_rng(0)
    blocks = rng.normal(0, 1, (60, 32)) * np.exp2(rng.integers(-20, 20, (60, 1)))
    blocks[0] = 0.0
    blocks[1, :5] = [448.0, 1e-3, -2.5, 0.0, -0.0]
    x = blocks.astype(np.float32)
    _assert_blocks_match_gfloat(x, fmt, block_fi, rounding)


def test_block_axis_padding_and_nonfinite_blocks():
    x = torch.randn(3, 40)
    x[2, 35] = float("inf")
    y = quantize(x, "mxfp8_e4m3")
    assert y.shape == x.shape
    assert torch.isnan(y[2, 32:]).all() and torch.isfinite(y[2, :32]).all()  # the second block of row 2
    yt = quantize(x.t().contiguous(), parse_format("mxfp8_e4m3_ax0"))
    assert bits_equal(yt.t(), y)


@pytest.mark.parametrize("name", ["mx_e8m3", "mx_e8m7", "mx_e7m2", "mx_e3m0_b2", "mx_e4m3_b3_k8", "mx_e4m1_b25_k4",
                                  "mx_e3m4_b9_k8"])
@pytest.mark.parametrize("rounding", ["nearest", "truncate", "up", "down"])
def test_custom_mx_elements_match_gfloat(name, rounding):
    # Elements beyond the OCP ones, as gfloat block formats with the same element (saturating) and an e8m0
    # scale: block maxima from 1 to 2**127 with elements down to float32's subnormals, which the scale keeps
    # (elements reaching 2**127) or takes far under the element's grid; and blocks of float32 subnormals only,
    # whose scale elements with a negative largest exponent (e4m1_b25: 2**-11) take from the subnormal maximum's
    # own exponent. (gfloat encodes no block element without subnormals: mx_e3m4_nosub is checked against the torch
    # kernels in test_native_blocks.py.)
    from gfloat.block import BlockFormatInfo
    from gfloat.formats import format_info_ocp_e8m0

    from tests.oracles import gfloat_info

    fmt = parse_format(name)
    fi = BlockFormatInfo(name, gfloat_info(fmt.element), fmt.block_size, format_info_ocp_e8m0)
    rng = np.random.default_rng(2)
    blocks = rng.normal(0, 1, (200, fmt.block_size)) * np.exp2(rng.integers(0, 127, (200, 1)))
    blocks[:, 1::2] = rng.integers(1, 2**23, (200, fmt.block_size // 2)) * 2.0**-149  # float32 subnormals
    blocks[::4] = rng.integers(0, 2**23, (50, fmt.block_size)) >> rng.integers(0, 23, (50, 1))
    blocks[::4] *= 2.0**-149 * np.where(rng.random((50, fmt.block_size)) < 0.5, 1, -1)
    x = blocks.astype(np.float32)
    _assert_blocks_match_gfloat(x, fmt, fi, rounding)


def test_an_element_with_float32s_exponent_range_rounds_float32_subnormals_on_its_own_grid():
    # mx_e8m3: a block whose maximum is 3e38 has scale 2**0, and its element's smallest step is 2**-129:
    # 1e-39 is 0.68 of a step, 1e-42 under a thousandth (they used to come out as 2**-126)
    x = torch.zeros(32)
    x[:4] = torch.tensor([3e38, 1e-39, -1e-42, 1e-42])
    step = 2.0**-129
    assert quantize(x, "mx_e8m3")[1:4].tolist() == [step, -0.0, 0.0]
    assert quantize(x, "mx_e8m3", "truncate")[1:4].tolist() == [0.0, -0.0, 0.0]
    assert quantize(x, "mx_e8m3", "up")[1:4].tolist() == [step, -0.0, step]


@pytest.mark.parametrize(("x", "name", "words"), [
    (torch.ones(1).expand(2**31), "e4m3fn", ["at most 2**31 - 1 elements", "got 2147483648;", "in chunks"]),
    # 2,048 rows of one element, each padded to a block of 2**20: the random stream runs over the padded rows
    (torch.ones(2048, 1), "mxfp8_e4m3_k1048576", ["got 2147483648 with MX rows padded to whole blocks of 1048576",
                                                   "smaller block size"]),
])
def test_stochastic_rounding_beyond_the_random_streams_counter_is_refused(x, name, words):
    with pytest.raises(FormatError) as info:
        quantize(x, name, "stochastic")
    assert all(w in str(info.value) for w in words), str(info.value)
    assert quantize(x[:4], name, "stochastic").shape == x[:4].shape  # (a smaller call is fine)


@pytest.mark.parametrize("bad", [torch.arange(5), torch.ones(3, dtype=torch.float64), [1.0, 2.0]])
def test_non_float_input_is_rejected(bad):
    with pytest.raises(FormatError, match=r"float32, bfloat16 or float16|takes a torch\.Tensor"):
        quantize(bad, "e4m3fn")


def test_unknown_rounding_mode_lists_valid_ones():
    with pytest.raises(FormatError, match=r"rounding must be one of \('nearest', 'truncate'"):
        quantize(torch.ones(3), "e4m3fn", "nearest_away")


@pytest.mark.parametrize("name", ["e4m3fn", "fixed8.4", "dfixed8", "int8", "int8_ch0", "binary_mean", "mxfp4_e2m1"])
@pytest.mark.parametrize("shape", [(0,), (0, 3), (), (4, 3)])
def test_empty_scalar_and_non_contiguous_inputs(name, shape):
    x = torch.randn(shape[::-1]).t() if len(shape) == 2 else torch.randn(shape)  # (4, 3): a transposed view
    if shape == () and name == "int8_ch0":
        with pytest.raises(FormatError, match="at least one dimension"):
            quantize(x, name)
        return
    y = quantize(x, name, "stochastic" if name != "int8_ch0" else "nearest")
    assert y.shape == x.shape and y.dtype == x.dtype
    if x.numel():
        assert bits_equal(quantize(x, name), quantize(x.contiguous(), name))


@pytest.mark.parametrize("block_fi", all_block_formats, ids=lambda b: b.name)
@pytest.mark.parametrize("rounding", ["nearest", "truncate", "up", "down"])
def test_mx_blocks_across_float32s_whole_range_match_gfloat(block_fi, rounding):
    # Block maxima from float32's subnormals to 2**120, and elements up to 2**60 below their block's maximum
    # (scaled values that underflow float32 must still round away from zero when the mode says so).
    fmt = parse_format(block_fi.name)
    rng = np.random.default_rng(1)
    blocks = rng.normal(0, 1, (150, 32)) * np.exp2(rng.integers(-149, 120, (150, 1)))
    blocks[:, :3] *= np.exp2(-rng.integers(0, 60, (150, 3)))
    # and random float32 words: blocks near float32's maximum with elements that scaling takes below 2**-149
    words = rng.integers(0, 2**32, (150, 32), dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([blocks.astype(np.float32), words[np.isfinite(words).all(1)]])
    _assert_blocks_match_gfloat(x, fmt, block_fi, rounding)
