"""Float formats: bit-exact against ml_dtypes (named formats) and gfloat (generic formats, every rounding mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boundfinder import FloatFormat, parse_format, quantize, reference
from boundfinder import kernels as K
from tests.bits import bits_equal, mismatches
from tests.oracles import ML_DTYPES, corner_inputs, gfloat_round

MODES = ["nearest", "truncate", "up", "down"]


def _eager_bits(x: np.ndarray, fmt: FloatFormat, rounding: str, rbits: np.ndarray | None = None) -> np.ndarray:
    """The kernel run eagerly with explicit random bits, so oracles can be handed the same bits."""
    t = torch.from_numpy(x.copy())
    rb = None if rbits is None else torch.from_numpy(rbits.astype(np.int32))
    out = K.round_float_bits(t, K.float_params(fmt, t.device), rb, K.MODE[rounding], K.OVERFLOW[fmt.overflow],
                            K.float_variant(fmt))
    return out.numpy()


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_named_formats_match_ml_dtypes_bit_for_bit(name):
    fmt = parse_format(name)
    x = corner_inputs(fmt)
    if fmt.encoding == "finite":  # ml_dtypes has no NaN there and returns an arbitrary code; tested below
        x = x[~np.isnan(x)]
    want = x.astype(ML_DTYPES[name]).astype(np.float32)
    got = quantize(torch.from_numpy(x), fmt).numpy()
    assert bits_equal(got, want), mismatches(got, want, x)


@pytest.mark.parametrize("name", ["e3m2fn", "e2m3fn", "e2m1fn"])
def test_nan_stays_nan_in_formats_without_nan(name):
    x = torch.tensor([float("nan"), 1.0])
    assert torch.isnan(quantize(x, name)[0]) and quantize(x, name)[1] == 1.0


GRID = [(e, m) for e in (2, 3, 4, 5, 8) for m in (0, 1, 2, 3, 5, 10)] + [(6, 9), (7, 4), (7, 8)]


@pytest.mark.parametrize(("e", "m"), GRID)
@pytest.mark.parametrize("rounding", MODES)
def test_generic_formats_match_gfloat(e, m, rounding):
    fmt = FloatFormat(exp_bits=e, man_bits=m)
    x = corner_inputs(fmt, n_random=1500)
    want = gfloat_round(x, fmt, rounding)
    got = _eager_bits(x, fmt, rounding)
    assert bits_equal(got, want), mismatches(got, want, x)
    assert bits_equal(reference.round_float(x, fmt, rounding), want)


@pytest.mark.parametrize(
    "fmt",
    [FloatFormat(exp_bits=4, man_bits=3, encoding="fn"), FloatFormat(exp_bits=4, man_bits=3, encoding="fn",
                                                                      overflow="saturate"),
     FloatFormat(exp_bits=3, man_bits=2, encoding="finite"), FloatFormat(exp_bits=5, man_bits=2, overflow="saturate"),
     FloatFormat(exp_bits=5, man_bits=2, bias=12), FloatFormat(exp_bits=2, man_bits=1, encoding="fn")],
    ids=str,
)
@pytest.mark.parametrize("rounding", [*MODES, "stochastic"])
def test_encodings_and_overflow_policies_match_gfloat(fmt, rounding):
    x = corner_inputs(fmt, n_random=1500)
    if fmt.encoding == "finite":
        x = x[~np.isnan(x)]
    rbits = np.random.default_rng(1).integers(0, 2**30, x.size)
    want = gfloat_round(x, fmt, rounding, rbits)
    got = _eager_bits(x, fmt, rounding, rbits)
    assert bits_equal(got, want), mismatches(got, want, x)


@pytest.mark.parametrize(("e", "m"), [(2, 1), (4, 3), (5, 2), (5, 10), (8, 7), (8, 0), (3, 5)])
def test_stochastic_matches_gfloat_given_the_same_random_bits(e, m):
    fmt = FloatFormat(exp_bits=e, man_bits=m)
    x = corner_inputs(fmt, n_random=1500)
    rbits = np.random.default_rng(2).integers(0, 2**30, x.size)
    want = gfloat_round(x, fmt, "stochastic", rbits)
    got = _eager_bits(x, fmt, "stochastic", rbits)
    assert bits_equal(got, want), mismatches(got, want, x)
    assert bits_equal(reference.round_float(x, fmt, "stochastic", rbits), want)


@pytest.mark.parametrize("fmt", ["e4m3_nosub", "e5m2_nosub", "e8m3_nosub"])
@pytest.mark.parametrize("rounding", [*MODES, "stochastic"])
def test_no_subnormals_matches_reference(fmt, rounding):
    # gfloat keeps full precision below min_normal when a format has no subnormals, so the reference decides.
    fmt = parse_format(fmt)
    x = corner_inputs(fmt, n_random=1500)
    rbits = np.random.default_rng(3).integers(0, 2**30, x.size)
    got = _eager_bits(x, fmt, rounding, rbits)
    assert bits_equal(got, reference.round_float(x, fmt, rounding, rbits)), mismatches(
        got, reference.round_float(x, fmt, rounding, rbits), x)
    tiny = got[np.isfinite(got) & (got != 0)]
    assert np.all(np.abs(tiny) >= fmt.min_normal)


@pytest.mark.parametrize("man_bits", range(0, 24))
def test_truncate_is_the_bitmask_filter_of_the_float32_word(man_bits):
    rng = np.random.default_rng(man_bits)
    words = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    x = words.view(np.float32)
    x = x[np.isfinite(x)]
    mask = np.uint32((0xFFFFFFFF << (23 - man_bits)) & 0xFFFFFFFF)
    want = (x.view(np.uint32) & mask).view(np.float32)
    got = quantize(torch.from_numpy(x), FloatFormat(exp_bits=8, man_bits=man_bits), "truncate").numpy()
    assert bits_equal(got, want), mismatches(got, want, x)


def test_seed_study_16_bit_filter_example():
    # 0 0111 1111 1111 1100 1100 ... (1.9875) & the 16-bit filter = 1.984375
    assert quantize(torch.tensor([1.9875]), "bf16", "truncate").item() == 1.984375


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_round_through_float32(dtype):
    x = torch.randn(5000).to(dtype)
    got = quantize(x, "e4m3fn")
    assert got.dtype == dtype
    want = quantize(x.float(), "e4m3fn").to(dtype)
    assert torch.equal(got, want)


def test_shape_dtype_device_and_input_untouched():
    x = torch.randn(3, 4, 5)
    before = x.clone()
    y = quantize(x, "e5m2")
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.equal(x, before) and y.data_ptr() != x.data_ptr()


def test_idempotent_and_representable_values_unchanged():
    x = torch.randn(10000) * 100
    for name in ["e4m3fn", "e5m2", "bf16", "e3m2fn", "e8m3"]:
        once = quantize(x, name)
        assert bits_equal(quantize(once, name), once)


@pytest.mark.parametrize("name", ["e4m3fn", "fixed8.4", "int8_ch1", "mxfp4_e2m1", "binary_mean", "dfixed8"])
def test_result_is_a_fresh_tensor_not_a_view(name):
    y = quantize(torch.randn(4, 64), name)
    assert y._base is None and not y._is_view()


@pytest.mark.parametrize(("e", "m", "bias"), [(3, 0, 2), (4, 0, 6), (2, 0, 0), (5, 0, 14), (5, 1, 14), (4, 3, 6)])
@pytest.mark.parametrize("rounding", [*MODES, "stochastic"])
def test_biases_of_either_parity_match_gfloat(e, m, bias, rounding):
    # With one code per binade (man_bits 0), ties to even pick the even biased exponent of the format, whose
    # parity differs from float32's when the biases differ by an odd number.
    fmt = FloatFormat(exp_bits=e, man_bits=m, bias=bias)
    x = corner_inputs(fmt, n_random=1500)
    rbits = np.random.default_rng(4).integers(0, 2**30, x.size)
    want = gfloat_round(x, fmt, rounding, rbits)
    got = _eager_bits(x, fmt, rounding, rbits)
    assert bits_equal(got, want), mismatches(got, want, x)
    if rounding != "stochastic":
        assert bits_equal(quantize(torch.from_numpy(x), fmt, rounding).numpy(), want)


def test_formats_with_23_fraction_bits_keep_every_float32_in_range():
    # e5m23: float32's precision with a narrower range; rounding drops no fraction bit (once added the last
    # bit of an odd word again).
    x = torch.tensor([1 + 2**-23, -(3 + 2**-22), 1.5 + 2**-23] * 2000)
    for rounding in [*MODES, "stochastic"]:
        assert torch.equal(quantize(x, "e5m23", rounding), x)


def test_constants_first_built_inside_a_dispatch_mode_are_not_changed_by_it():
    # Op-level emulation rounds the output of every float op. A first call of quantize from inside another
    # mode's handler (a user's spy above the emulation) runs under it; the kernel's cached constants (here the
    # word of half the smallest subnormal, which e4m3fn itself rounds to 0) must not be built through it.
    import importlib

    import ml_dtypes
    from torch.utils._python_dispatch import TorchDispatchMode

    from boundfinder.emulation._round import make_rounder
    from boundfinder.emulation.op import RoundingMode

    class Probe(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            quantize(torch.tensor([1.0]), "e4m3fn")
            return func(*args, **(kwargs or {}))

    importlib.import_module("boundfinder.quantize")._float_params.cache_clear()
    with RoundingMode(make_rounder("e4m3fn"), None), Probe():
        torch.ones(2) + 1
    x = torch.tensor([4.6e-5, -4.6e-5, 5.6e-4, 9.7e-4, 1.0e-3, 0.1])
    want = x.numpy().astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    assert bits_equal(quantize(x, "e4m3fn").numpy(), want)


@pytest.mark.parametrize("name", ["e4m3fn", "e3m2fn", "fixed8.4", "int8"])
def test_a_dense_layout_is_kept(name):
    # channels_last stays channels_last (also with a dimension of size 1, where it counts as contiguous too),
    # a transpose stays transposed; the values are those of the contiguous tensor's rounding
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(4, 3, 5, 5, generator=g).contiguous(memory_format=torch.channels_last),
              torch.randn(4, 1, 5, 5, generator=g).contiguous(memory_format=torch.channels_last),
              torch.randn(6, 7, generator=g).t()):
        got = quantize(x, name)
        assert got.stride() == x.stride()
        assert torch.equal(got, quantize(x.contiguous(), name))
