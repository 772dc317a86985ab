"""The emulation's fast rounders equal quantize bit for bit (NaN payloads aside: NaN stays NaN), with the native
extension (where it is built) and without it (the torch-op fast paths, which machines without it use)."""

from __future__ import annotations

import pytest
import torch

from boundfinder import native, quantize
from boundfinder.emulation._round import make_rounder


@pytest.fixture(autouse=True, params=["native", "python"])
def path(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(native, "load", lambda: None)
    return request.param


def _inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    words = torch.randint(-(2**31), 2**31 - 1, (1 << 13,), generator=g, dtype=torch.int64).to(torch.int32)
    x = words.view(torch.float32)  # every exponent, every sign, subnormals, infinities and NaNs
    corners = torch.tensor([
        float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38,
        448.0, 464.0, -464.0, 464.00003, 480.0, 2.0**-6, 2.0**-9, 1.5 * 2.0**-9, 2.5 * 2.0**-9,  # e4m3fn edges
        65504.0, 65520.0, 65519.996, 2.0**-24, 2.0**-25, 1.5 * 2.0**-24,  # fp16 overflow and subnormal ties
    ])  # fmt: skip
    dense = torch.linspace(-600.0, 600.0, 10001)  # every e4m3fn midpoint region, many ties
    # below quantize's compile threshold (65536 elements), so the reference runs eagerly
    return torch.cat([x, x * 1e-30, x * 1e30, corners, dense, dense * 2.0**-12])


@pytest.mark.parametrize(
    ("fmt", "rounding"),
    [("e4m3fn", "nearest"), ("e5m10", "nearest"), ("bf16", "nearest"), ("e5m2", "nearest"),
     ("e8m3", "nearest"), ("e8m3", "truncate"), ("e8m0", "nearest"), ("e8m22", "nearest"),
     ("fp32", "nearest"), ("e3m4", "nearest")],
)  # fmt: skip
def test_fast_rounder_matches_quantize(fmt, rounding):
    x = _inputs()
    expected = quantize(x, fmt, rounding)
    got = make_rounder(fmt, rounding)(x)
    same = (expected.view(torch.int32) == got.view(torch.int32)) | (expected.isnan() & got.isnan())
    assert bool(same.all()), x[~same][:5]


def test_large_fn_tensors_use_the_compiled_kernel_with_the_same_result(monkeypatch):
    """From FN_COMPILED_MIN_NUMEL elements on, the e4m3fn rounder calls quantize's compiled kernel; both
    paths give the same bits (checked by forcing the float arithmetic on the same tensor)."""
    from boundfinder import kernels
    from boundfinder.emulation import _round

    monkeypatch.setattr(native, "load", lambda: None)  # (the native kernel would take float32 CPU tensors)
    x = _inputs().repeat(_round.FN_COMPILED_MIN_NUMEL // _inputs().numel() + 1)
    assert x.numel() >= _round.FN_COMPILED_MIN_NUMEL
    calls = []
    real = kernels.run
    monkeypatch.setattr(kernels, "run", lambda *a, **k: calls.append(a[0].__name__) or real(*a, **k))
    compiled = make_rounder("e4m3fn")(x)
    assert calls == ["round_float"]
    monkeypatch.setattr(_round, "FN_COMPILED_MIN_NUMEL", 1 << 40)
    arithmetic = make_rounder("e4m3fn")(x)
    assert len(calls) == 1
    same = (compiled.view(torch.int32) == arithmetic.view(torch.int32)) | (compiled.isnan() & arithmetic.isnan())
    assert bool(same.all())


def test_non_float32_tensors_go_through_quantize():
    x = torch.randn(100).to(torch.bfloat16)
    assert torch.equal(make_rounder("e4m3fn")(x), quantize(x, "e4m3fn"))


@pytest.mark.parametrize("fmt", ["e5m10", "bf16", "e5m2"])
def test_in_place_cast_matches_quantize(fmt):
    x = _inputs()
    t = x.clone()
    make_rounder(fmt).in_place(t)
    expected = quantize(x, fmt)
    assert bool(((t.view(torch.int32) == expected.view(torch.int32)) | (t.isnan() & expected.isnan())).all())


@pytest.mark.parametrize("sync_free", [True, False])
def test_both_overflow_variants_of_the_fn_rounder(sync_free):
    from boundfinder import parse_format
    from boundfinder.emulation._round import _fn_float_rounder

    x = _inputs()
    got = _fn_float_rounder(parse_format("e4m3fn"), sync_free=sync_free)(x)
    expected = quantize(x, "e4m3fn")
    assert bool(((got.view(torch.int32) == expected.view(torch.int32)) | (got.isnan() & expected.isnan())).all())


def test_in_place_fn_rounder_matches_quantize():
    x = _inputs()
    t = x.clone()
    make_rounder("e4m3fn").in_place(t)
    expected = quantize(x, "e4m3fn")
    assert bool(((t.view(torch.int32) == expected.view(torch.int32)) | (t.isnan() & expected.isnan())).all())


@pytest.mark.parametrize("fmt", ["e5m10", "bf16", "e5m2", "e4m3fn", "e8m3", "e3m4"])
def test_batch_rounding_in_place_matches_quantize(fmt):
    """The batch level's grouped in-place rounding (foreach casts, one call on a concatenation, buffers kept
    between calls) equals quantize tensor by tensor, also on the second call (reused buffers)."""
    from boundfinder.emulation.batch import _round_in_place

    x = _inputs()
    r = make_rounder(fmt)
    scratch: dict = {}
    for _ in range(2):
        pieces = [x[:1000].reshape(10, 100).clone(), x[1000:1001].clone(), x[1001:].clone()]
        _round_in_place([(t, r) for t in pieces], scratch)
        for t, ref in zip(pieces, (x[:1000].reshape(10, 100), x[1000:1001], x[1001:]), strict=True):
            expected = quantize(ref, fmt)
            assert t.shape == ref.shape
            same = (t.view(torch.int32) == expected.view(torch.int32)) | (t.isnan() & expected.isnan())
            assert bool(same.all()), (fmt, ref[~same][:5])
    assert scratch  # small groups keep their buffers


def test_emulation_rounds_small_tensors_compiled_with_the_same_bits(monkeypatch):
    """quantize keeps tensors under COMPILE_MIN_NUMEL eager (no compilation for a few numbers); emulation's
    rounders, called at every step, compile from EMULATION_COMPILE_FROM elements on: same bits either way."""
    from boundfinder import kernels

    x = torch.randn(100) * 3
    real = kernels.compiles
    for fmt, rounding in [("fixed8.4", "nearest"), ("e4m3fn", "stochastic"), ("e5m2", "truncate")]:
        compiled_checks: list[bool] = []

        def spy(k, n, checks=compiled_checks):
            checks.append(real(k, n))
            return checks[-1]

        monkeypatch.setattr(kernels, "compiles", spy)
        got = make_rounder(fmt, rounding, torch.Generator().manual_seed(1))(x)
        assert compiled_checks and all(compiled_checks), fmt
        monkeypatch.setattr(kernels, "compiles", lambda k, n: False)
        want = quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(1))
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), fmt
    assert not real(kernels.round_float, 100)  # outside emulation, 100 elements stay eager
