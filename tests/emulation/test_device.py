"""Emulation runs on the model's device (skipped without a GPU; benchmarks/bench_training.py measures it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from boundfinder import quantize
from boundfinder.emulation import emulate
from boundfinder.emulation._round import make_rounder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m10", "e8m3", "e3m4"])
def test_rounders_on_cuda_match_quantize_on_cpu(fmt):
    x = torch.randn(1 << 15) * 100
    assert torch.equal(make_rounder(fmt)(x.cuda()).cpu(), quantize(x, fmt))


@pytest.mark.parametrize("level", ["op", "layer", "batch"])
def test_levels_on_cuda(level, batch, zoo):
    model = zoo.lenet().cuda()
    x, y = (t.cuda() for t in batch)
    em = emulate(model, "e5m2", level=level)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with em.op_context():
        out = model(x)
        F.cross_entropy(out, y).backward()
    opt.step()
    em.after_optimizer_step(opt)
    assert out.device.type == "cuda"
    grads = [p.grad for p in model.parameters()]
    checked = list(model.parameters()) if level == "batch" else [out, *grads]
    assert all(torch.equal(quantize(t.detach(), "e5m2"), t.detach()) for t in checked)
    em.remove()
