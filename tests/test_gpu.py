"""CUDA equals CPU bit for bit (skipped without a GPU; benchmarks/gpu_check.py is the full check)."""

from __future__ import annotations

import pytest
import torch

from boundfinder import quantize
from tests.bits import bits_equal

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", ["e4m3fn", "bf16", "e2m1fn", "fixed8.4", "int8", "mxfp8_e4m3"])
@pytest.mark.parametrize("rounding", ["nearest", "truncate", "stochastic"])
def test_cuda_matches_cpu(name, rounding):
    x = torch.randn(1 << 18) * 4
    torch.manual_seed(0)
    cpu = quantize(x, name, rounding)
    torch.manual_seed(0)
    gpu = quantize(x.cuda(), name, rounding)
    assert gpu.device.type == "cuda"
    assert bits_equal(cpu, gpu.cpu())


def _edge_inputs(n_random: int = 1 << 16) -> torch.Tensor:
    """Random float32 words (every binade, NaN payloads, subnormals), bf16-grid words and their neighbours,
    scaled normals and corners; an odd count, so the kernels' masked tail runs."""
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -1e-45, 448.0, 464.0,
                            480.0, 65504.0, 65520.0, 3.4028235e38])
    words = torch.randint(-(2**31), 2**31 - 1, (n_random,), generator=g, dtype=torch.int32)
    grid = torch.randint(-(2**15), 2**15, (n_random // 4,), generator=g, dtype=torch.int32) << 16
    near = torch.cat([grid | 0x8000, grid | 0x7FFF, grid + 0x8001])
    normal = torch.randn(n_random, generator=g) * 8
    x = torch.cat([special, words.view(torch.float32), near.view(torch.float32), normal, normal * 2**-130])
    return x[: x.numel() // 2 * 2 - 1]


TRITON_FORMATS = ["e4m3fn", "e5m2", "bf16", "fp16", "e3m2fn", "e2m1fn", "e8m3", "e5m23", "e3m0", "fixed16.8",
                  "ufixed8.8", "fixed24.0"]


@pytest.mark.parametrize("rounding", ["nearest", "truncate", "up", "down", "stochastic"])
def test_triton_kernels_match_the_cpu_reference(rounding, monkeypatch):
    pytest.importorskip("triton")
    from boundfinder import gpu
    from boundfinder.emulation._round import make_rounder

    x = _edge_inputs()
    xc = x.cuda()
    assert gpu.usable(xc), "the Triton path is not in use on this machine"
    for name in TRITON_FORMATS:
        for size in (x.numel(), 1 << 16):  # a masked tail, and whole blocks
            monkeypatch.setenv("BOUNDFINDER_COMPILE", "0")  # the CPU side: the eager reference kernels
            torch.manual_seed(0)
            cpu = quantize(x[:size], name, rounding)
            monkeypatch.delenv("BOUNDFINDER_COMPILE")
            torch.manual_seed(0)
            assert bits_equal(cpu, quantize(xc[:size], name, rounding).cpu()), (name, size)
            torch.manual_seed(0)
            t = xc[:size].clone()
            make_rounder(name, rounding).in_place(t)
            assert bits_equal(cpu, t.cpu()), (name, size, "in place")


@pytest.mark.parametrize("rounding", ["nearest", "truncate", "up", "stochastic"])
def test_triton_kernels_take_16_bit_tensors_and_dense_layouts(rounding, monkeypatch):
    """bfloat16 / float16 tensors and channels_last / transposed ones: one pass in their own dtype and layout,
    equal to the CPU's eager reference (which rounds through float32 and casts back)."""
    pytest.importorskip("triton")
    x = _edge_inputs()[: 64 * 8 * 16 * 16]
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        four = x.view(64, 8, 16, 16).to(dtype)
        for t in (x.to(dtype), four.contiguous(memory_format=torch.channels_last), four[0, 0].t()):
            for name in ("e4m3fn", "e2m1fn", "fp16", "bf16", "fixed16.8", "fixed24.24"):
                monkeypatch.setenv("BOUNDFINDER_COMPILE", "0")
                torch.manual_seed(0)
                cpu = quantize(t, name, rounding)
                monkeypatch.delenv("BOUNDFINDER_COMPILE")
                torch.manual_seed(0)
                got = quantize(t.cuda(), name, rounding)
                assert got.dtype == dtype and got.stride() == t.stride(), (name, dtype)
                assert bits_equal(cpu.float(), got.cpu().float()), (name, dtype, t.stride())


@pytest.mark.parametrize("rounding", ["nearest", "truncate", "up", "down", "stochastic"])
def test_triton_block_kernel_matches_the_cpu_reference(rounding, monkeypatch):
    """MX formats: one pass, each block's scale in registers; rows padded where the block size does not divide
    them; float32 and bfloat16 tensors."""
    pytest.importorskip("triton")
    x = _edge_inputs()
    for name in ("mxfp8_e4m3", "mxfp4_e2m1", "mxfp6_e3m2_k16", "mxint8"):
        for t in (x, x[: 48 * 449].view(48, 449), x[: 1 << 16].to(torch.bfloat16)):
            monkeypatch.setenv("BOUNDFINDER_COMPILE", "0")
            torch.manual_seed(0)
            cpu = quantize(t, name, rounding)
            monkeypatch.delenv("BOUNDFINDER_COMPILE")
            torch.manual_seed(0)
            assert bits_equal(cpu.float(), quantize(t.cuda(), name, rounding).cpu().float()), (name, t.shape)


@pytest.mark.parametrize("rounding", ["nearest", "truncate", "up", "down", "stochastic"])
def test_triton_reduction_kernels_match_the_cpu_reference(rounding, monkeypatch):
    """Integer affine (per tensor; per channel by element and by row), binary and dynamic fixed point: the
    reduction and one rounding kernel, equal to the CPU's eager reference; tensors with and without inf and NaN,
    float32 and bfloat16 (with a NaN: its tensor's or channel's results are all NaN)."""
    pytest.importorskip("triton")
    x = _edge_inputs()
    finite = torch.nan_to_num(x[: 48 * 1024], nan=0.0, posinf=1e30, neginf=-1e30) * 1e-20
    # bfloat16 with a NaN: the NaN scale's results are NaN computed on the GPU (0x7FFFFFFF), stored as NaN
    nan16 = finite.view(48, 1024).to(torch.bfloat16)
    nan16[3, 7] = float("nan")
    tensors = (x, finite, finite.view(48, 1024), finite.view(48, 8, 128), finite.to(torch.bfloat16), nan16)
    names = ["int8", "uint8_sym", "int8_ch0", "uint8_ch1", "int4_chm1", "dfixed8", "dfixed16_r0.01"]
    if rounding in ("nearest", "stochastic"):
        names += ["binary", "binary_mean"]
    for name in names:
        for t in tensors:
            if "_ch" in name and t.dim() < 3 and name != "int8_ch0":
                continue
            monkeypatch.setenv("BOUNDFINDER_COMPILE", "0")
            torch.manual_seed(0)
            cpu = quantize(t, name, rounding)
            monkeypatch.delenv("BOUNDFINDER_COMPILE")
            torch.manual_seed(0)
            assert bits_equal(cpu.float(), quantize(t.cuda(), name, rounding).cpu().float()), (name, t.shape, t.dtype)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_kernels_run_on_the_tensors_device():
    x = torch.randn(1 << 16)
    with torch.cuda.device(0):
        got = quantize(x.to("cuda:1"), "e4m3fn", "stochastic", generator=torch.Generator().manual_seed(0))
    assert got.device == torch.device("cuda:1")
    assert bits_equal(quantize(x, "e4m3fn", "stochastic", generator=torch.Generator().manual_seed(0)), got.cpu())
