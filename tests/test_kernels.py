"""The compiled fast path gives the same bits as the eager kernel, and falls back to it with one log line."""

from __future__ import annotations

import logging

import pytest
import torch

from boundfinder import kernels as K
from boundfinder import native, quantize
from tests.bits import bits_equal


@pytest.fixture
def eager(monkeypatch):
    def run_eager(fn):
        monkeypatch.setattr(K, "COMPILE_MIN_NUMEL", 1 << 62)
        try:
            return fn()
        finally:
            monkeypatch.setattr(K, "COMPILE_MIN_NUMEL", 1 << 16)
    return run_eager


def _random_words(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int32).view(torch.float32)
    normal = torch.randn(n, generator=g) * 4
    return torch.where(torch.rand(n, generator=g) < 0.5, words, normal)


@pytest.mark.parametrize("name", ["e4m3fn", "e5m2_sat", "e2m1fn", "bf16", "e3m0_b2", "fixed8.4", "int8",
                                  "mxfp4_e2m1", "mxint8", "e3m4_nosub"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "down"])
def test_compiled_matches_eager_bit_for_bit(name, rounding, eager, monkeypatch):
    monkeypatch.setattr(native, "load", lambda: None)  # (MX blocks on the CPU would take the native kernel)
    x = _random_words(1 << 17, seed=len(name))
    torch.manual_seed(0)
    fast = quantize(x, name, rounding)
    torch.manual_seed(0)
    slow = eager(lambda: quantize(x, name, rounding))
    assert not K._compile_failed
    assert bits_equal(fast, slow)


def test_failed_compilation_falls_back_once_with_a_log_line(monkeypatch, caplog):
    calls = []

    def broken(kernel, static):
        calls.append(kernel)
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(K, "_compiled", broken)
    monkeypatch.setattr(K, "_compile_failed", set())
    x = torch.randn(1 << 17)
    with caplog.at_level(logging.WARNING, logger="boundfinder"):
        a = quantize(x, "e4m3fn")
        b = quantize(x, "e4m3fn")
    assert len(calls) == 1 and len([r for r in caplog.records if "eager kernel" in r.message]) == 1
    assert bits_equal(a, b)


def test_inside_a_dispatch_mode_quantize_runs_eagerly_without_marking_compilation_failed(monkeypatch):
    from boundfinder.emulation import emulate

    monkeypatch.setattr(K, "_compile_failed", set())
    model = torch.nn.Linear(100, 100)
    x = torch.randn(64, 100)
    with emulate(model, "e3m4", level="op"):  # op level rounds every op's output inside a TorchDispatchMode
        y = model(x)
    assert not K._compile_failed
    assert bits_equal(quantize(y, "e3m4"), y.detach())


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1",
                                  "mx_e8m3", "mx_e8m7", "mx_e4m1_b25", "mx_e2m1fn_b40"])
@pytest.mark.parametrize("rounding", ["nearest", "truncate", "up", "down", "stochastic"])
def test_mx_integer_kernel_equals_the_float_one(name, rounding):
    # round_block_words (integer operations, what quantize runs without the native extension) against
    # round_block (float scaling and a reinterpreted element rounding), bit for bit: random words, huge and tiny
    # blocks, elements far below their block's maximum, float32 subnormals, zeros of both signs. Elements with
    # 8 exponent bits keep float32 subnormals of a block near float32's maximum as they are (scaled by 2**0);
    # elements with a negative largest exponent scale a block of subnormals by its maximum's own exponent.
    import numpy as np

    from boundfinder import parse_format

    fmt = parse_format(name)
    rng = np.random.default_rng(5)
    blocks = rng.normal(0, 1, (600, 32)) * np.exp2(rng.integers(-149, 125, (600, 1)))
    blocks[:, :5] *= np.exp2(-rng.integers(0, 60, (600, 5)))
    words = rng.integers(0, 2**32, (100, 32), dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = torch.from_numpy(np.concatenate([blocks.astype(np.float32), words, -blocks.astype(np.float32)]))
    x[5, 3], x[6, 4] = 0.0, -0.0
    x[7] = torch.randint(1, 2**23, (32,), generator=torch.Generator().manual_seed(5)).float() * 2.0**-149
    x[7, 0] = 3e38  # float32 subnormals in a block at float32's top
    params = K.float_params(fmt.element, x.device)
    seed = K.seed_keys(1234)
    mode = K.MODE[rounding]
    want = K.round_block(x, params, seed, mode, fmt.element_emax, False)
    got = K.round_block_words(x.view(torch.int32), params, seed, mode, fmt.element_emax).view(torch.float32)
    assert bits_equal(got, want)


def test_exponent_histogram_by_scatter_equals_bincount():
    bins = torch.randint(0, K.N_BINS + 1, (100_000,), dtype=torch.int32)
    bins[:10] = K.N_BINS  # zeros, inf and NaN: dropped
    assert torch.equal(K.exponent_histogram(bins, scatter=True), K.exponent_histogram(bins))
    assert int(K.exponent_histogram(bins).sum()) == int((bins < K.N_BINS).sum())


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_compiled_binary_matches_eager_bit_for_bit(rounding, eager):
    x = _random_words(1 << 17, seed=3)
    torch.manual_seed(0)
    fast = quantize(x, "binary", rounding)
    torch.manual_seed(0)
    slow = eager(lambda: quantize(x, "binary", rounding))
    assert not K._compile_failed
    assert bits_equal(fast, slow)
    # with the mean scale, compiled and eager sum |x| in float64 in different orders: the float32 scale agrees
    y = torch.randn(1 << 17)
    assert bits_equal(quantize(y, "binary_mean", rounding).abs(), eager(lambda: quantize(y, "binary_mean")).abs())
