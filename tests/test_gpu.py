"""CUDA equals CPU bit for bit (skipped without a GPU; benchmarks/gpu_check.py is the full check)."""

from __future__ import annotations

import pytest
import torch

from boundfinder import quantize
from tests.oracles import bits_equal

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
