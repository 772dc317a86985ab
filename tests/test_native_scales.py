"""The native kernels for formats whose scale is a reduction (csrc/scales.cpp), which ``quantize`` runs on float32
CPU tensors: per-channel integer affine quantization and dynamic fixed point's exponent histogram give the torch
kernels' results bit for bit (run eagerly here), in every rounding mode. The oracles (torch.fake_quantize_per_channel
_affine, the histogram rule's reference) meet these kernels in test_quantize_families.py and test_property.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boundfinder import kernels, native, parse_format, quantize
from tests.bits import bits_equal

ext = native.load()
pytestmark = pytest.mark.skipif(ext is None, reason="the native extension could not be built here")

MODES = ["nearest", "truncate", "up", "down", "stochastic"]


def _torch_kernels(x: torch.Tensor, fmt: str, rounding: str, monkeypatch) -> torch.Tensor:
    """quantize without the extension, its kernels run eagerly (the compiled ones equal them: test_kernels.py)."""
    with monkeypatch.context() as m:
        m.setattr(native, "load", lambda: None)
        m.setattr(kernels, "COMPILE_MIN_NUMEL", 1 << 62)
        torch.manual_seed(11)
        return quantize(x, fmt, rounding)


def _channels(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Channels (along axis 0) whose magnitudes range from float32's subnormals to 2**120, with zeros and
    elements 2**60 below the rest of their channel."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, shape) * np.exp2(rng.integers(-145, 120, (shape[0],) + (1,) * (len(shape) - 1)))
    flat = x.reshape(-1)
    flat[::37] = 0.0
    flat[::53] *= 2.0**-60
    x[0] = np.abs(x[0]) + 1.0  # a channel of positive values only (its range is widened to 0), and a negative one
    x[-1] = -np.abs(x[-1]) - 1.0
    return torch.from_numpy(x.astype(np.float32))


@pytest.mark.parametrize("name", ["int8_ch0", "uint8_ch0", "int8_sym_ch0", "uint8_sym_ch1", "int4_ch1", "int16_chm1",
                                  "uint2_ch0", "int2_sym_ch2"])
@pytest.mark.parametrize("shape", [(16, 300, 1), (7, 5, 16), (3, 1, 1)])
def test_per_channel_affine_equals_the_torch_kernels(name, shape, monkeypatch):
    fmt = parse_format(name)
    x = _channels(shape, seed=len(name) + len(shape))
    for rounding in MODES:
        torch.manual_seed(11)
        got = quantize(x, fmt, rounding)
        want = _torch_kernels(x, name, rounding, monkeypatch)
        assert bits_equal(got, want), f"{name} {shape} {rounding}"


def test_quantize_takes_the_native_kernels_for_finite_channels_and_dynamic_fixed_point(monkeypatch):
    import importlib

    def torch_path(*args, **kwargs):
        raise AssertionError("the torch kernels ran")

    monkeypatch.setattr(importlib.import_module("boundfinder.quantize"), "_fake_quant", torch_path)
    monkeypatch.setattr(kernels, "dynamic_frac_bits", torch_path)
    x = _channels((6, 200), seed=4)
    for rounding in MODES:
        assert quantize(x, "int8_ch0", rounding).shape == x.shape
        assert quantize(x, "uint4_sym_ch1", rounding).shape == x.shape
        assert quantize(x, "dfixed8", rounding).shape == x.shape


@pytest.mark.parametrize("special", [float("inf"), -float("inf"), float("nan")])
def test_channels_holding_an_infinity_or_nan_get_the_torch_kernels_results(special, monkeypatch):
    calls = []

    class Counting:
        def round_affine_rows(self, *args):
            calls.append(1)
            return ext.round_affine_rows(*args)

    x = _channels((6, 200), seed=3)
    x[2, 17] = special
    want = _torch_kernels(x, "int8_ch0", "up", monkeypatch)
    monkeypatch.setattr(native, "load", lambda: Counting())
    got = quantize(x, "int8_ch0", "up")
    assert calls == [1] and bits_equal(got, want)
    assert torch.isfinite(got[[0, 1, 3, 4, 5]]).all()  # (the other channels keep their own scales)


def _words(n: int, seed: int) -> torch.Tensor:
    """Random float32 words (every binade, subnormals, zeros, infinities, NaN) and normals."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int32).view(torch.float32)
    return torch.where(torch.rand(n, generator=g) < 0.5, words, torch.randn(n, generator=g) * 2.0**-130)


@pytest.mark.parametrize("n", [1, 1000, 300_000])  # (the largest spreads over torch's threads)
def test_exponent_histogram_equals_the_torch_kernels(n):
    x = _words(n, seed=n)
    x[:1] = 0.0
    want = kernels.exponent_histogram(kernels.exponent_bins(x.view(torch.int32)))
    got = ext.exponent_histogram(x)
    assert got.dtype == torch.int64 and torch.equal(got, want)


@pytest.mark.parametrize("rate", [0.0, 1e-4, 0.01, 0.3, 1.0])
@pytest.mark.parametrize("case", ["words", "normals", "zeros", "specials", "one"])
def test_dynamic_frac_bits_equals_the_torch_rule(rate, case):
    x = {"words": _words(5000, seed=1), "normals": torch.randn(5000) * 2.0**40, "zeros": torch.zeros(100),
         "specials": torch.tensor([0.0, float("inf"), float("nan"), -0.0]), "one": torch.tensor([3e-41])}[case]
    allowed = int(rate * x.numel())
    for word_bits in (2, 8, 24):
        want = int(kernels.dynamic_frac_bits(x.view(torch.int32), torch.tensor(allowed), word_bits))
        assert ext.dynamic_frac_bits(x, allowed, word_bits) == want, (word_bits, want)


@pytest.mark.parametrize("name", ["dfixed8", "dfixed16", "dfixed4_r0.1"])
def test_dynamic_fixed_point_equals_the_torch_kernels(name, monkeypatch):
    x = _words(20_000, seed=5)  # (infinities and NaN too: the rule counts finite elements only)
    for rounding in MODES:
        torch.manual_seed(11)
        assert bits_equal(quantize(x, name, rounding), _torch_kernels(x, name, rounding, monkeypatch)), rounding


def test_the_kernels_refuse_what_they_cannot_take():
    with pytest.raises(RuntimeError, match="contiguous 2-D float32 CPU tensor"):
        ext.round_affine_rows(torch.randn(8, 4).t(), -128, 127, False, 0, 0, 0)
    with pytest.raises(RuntimeError, match="`qmin < qmax`"):
        ext.round_affine_rows(torch.randn(8, 4), 5, 5, False, 0, 0, 0)
    with pytest.raises(RuntimeError, match="contiguous float32 CPU tensor"):
        ext.exponent_histogram(torch.randn(8, 4).t())
