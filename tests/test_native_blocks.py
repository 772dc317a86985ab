"""The native MX block kernel (csrc/blocks.cpp), which ``quantize`` runs on float32 CPU tensors: bit for bit the
torch kernels' results (kernels.round_block_words / round_block, run eagerly here), in every rounding mode, for
OCP and custom elements, block sizes and axes, across float32's whole range. The OCP formats also meet gfloat
through this kernel in test_quantize_families.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boundfinder import kernels, native, parse_format, quantize
from tests.bits import bits_equal

ext = native.load()
pytestmark = pytest.mark.skipif(ext is None, reason="the native extension could not be built here")

MODES = ["nearest", "truncate", "up", "down", "stochastic"]
FORMATS = [
    "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8",
    "mx_e3m4_nosub",  # no subnormals
    "mx_e3m0_b2",  # one code per binade, an odd bias difference (ties to even by the exponent)
    "mx_e7m2",  # the widest element that skips the scaling
    "mx_e8m3",  # quantum below 2**-95: every block takes the scaled path
    "mx_e4m1_b25",  # a negative largest exponent (-11): blocks of subnormals scale by their own exponent
    "mx_fixed6.3", "mx_ufixed8.6",  # fixed-point elements other than mxint8
    "mxfp8_e4m3_k1", "mxfp6_e2m3_k7", "mxfp4_e2m1_k64",  # block sizes other than 32 (the kernel's fixed one)
    "mxfp8_e4m3_ax0",
]


def _inputs(block: int, seed: int) -> torch.Tensor:
    """Rows of 3 blocks and 5 more elements (padded): block maxima from float32's subnormals to 2**124, elements
    up to 2**60 below their maximum, random float32 words (inf and NaN included), zeros of both signs."""
    rng = np.random.default_rng(seed)
    cols = 3 * block + 5
    rows = rng.normal(0, 1, (300, cols)) * np.exp2(rng.integers(-149, 125, (300, 1)))
    rows[:, ::3] *= np.exp2(-rng.integers(0, 60, (300, (cols + 2) // 3)))
    words = rng.integers(0, 2**32, (40, cols), dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([rows.astype(np.float32), words, -rows[:20].astype(np.float32)])
    x[0] = 0.0
    x[1, ::2] = -0.0
    x[2] = np.float32(1e-45) * rng.integers(0, 2**23, cols)  # a row of float32 subnormals
    x[3] = x[2]
    x[3, ::7] = 3e38  # and the same among values at float32's top
    return torch.from_numpy(x.copy())


def _torch_kernels(x: torch.Tensor, fmt, rounding: str, monkeypatch, seed: int) -> torch.Tensor:
    """quantize without the extension, its kernels run eagerly (the compiled ones equal them: test_kernels.py)."""
    with monkeypatch.context() as m:
        m.setattr(native, "load", lambda: None)
        m.setattr(kernels, "COMPILE_MIN_NUMEL", 1 << 62)
        torch.manual_seed(seed)
        return quantize(x, fmt, rounding)


@pytest.mark.parametrize("name", FORMATS)
def test_native_blocks_equal_the_torch_kernels(name, monkeypatch):
    fmt = parse_format(name)
    x = _inputs(fmt.block_size, seed=len(name))
    if fmt.axis == 0:
        x = x.t().contiguous()
    for rounding in MODES:
        torch.manual_seed(7)
        got = quantize(x, fmt, rounding)
        want = _torch_kernels(x, fmt, rounding, monkeypatch, seed=7)
        differ = int((got.view(torch.int32) != want.view(torch.int32)).sum())
        assert bits_equal(got, want), f"{name} {rounding}: {differ} words differ"


def test_quantize_runs_the_native_kernel_on_float32_cpu_blocks(monkeypatch):
    calls = []

    class Counting:
        def round_blocks(self, *args):
            calls.append(args[0].shape)
            return ext.round_blocks(*args)

    monkeypatch.setattr(native, "load", lambda: Counting())
    x = torch.randn(4, 70)
    quantize(x, "mxfp8_e4m3")  # rows of 70: blocks of 32, 32 and 6, without padding
    quantize(x.to(torch.bfloat16), "mxint8", "stochastic")  # (16-bit inputs are rounded through float32)
    quantize(x, "mxfp4_e2m1_ax0")  # (blocks along the first axis: rows of 4 after moving it last)
    assert calls == [(4, 70), (4, 70), (70, 4)]


def test_quantize_takes_no_torch_kernel_for_float32_cpu_blocks(monkeypatch):
    def torch_kernel(*args, **kwargs):
        raise AssertionError("a torch block kernel ran")

    monkeypatch.setattr(kernels, "round_block_words", torch_kernel)
    monkeypatch.setattr(kernels, "round_block", torch_kernel)
    x = torch.randn(3, 70)
    for name in ("mxfp8_e4m3", "mxint8", "mxfp6_e2m3_ax0"):
        for rounding in MODES:
            assert quantize(x, name, rounding).shape == x.shape


def test_the_kernel_refuses_what_it_cannot_take():
    fields = [float(f) for f in kernels.float_fields(parse_format("e4m3fn"))]
    with pytest.raises(RuntimeError, match="contiguous 2-D float32 CPU tensor"):
        ext.round_blocks(torch.randn(32, 4).t(), 32, fields, False, 0, 8, 0)
    with pytest.raises(RuntimeError, match="`block_size >= 1` must hold, got 0"):
        ext.round_blocks(torch.randn(4, 32), 0, fields, False, 0, 8, 0)
    with pytest.raises(RuntimeError, match="expected 4 element fields, got 8"):
        ext.round_blocks(torch.randn(4, 32), 32, fields, True, 0, 8, 0)
    with pytest.raises(RuntimeError, match=r"mode must be in 0\.\.4, got 5"):
        ext.round_blocks(torch.randn(4, 32), 32, fields, False, 5, 8, 0)
