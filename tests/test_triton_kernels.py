"""The Triton kernels (boundfinder/triton_kernels.py) equal the reference kernels bit for bit, run on the CPU by
Triton's interpreter (TRITON_INTERPRET=1, set before Triton compiles anything: hence a child process). Skipped
where Triton is not installed; on a GPU, tests/test_gpu.py checks the compiled kernels against the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton installed")

_CHILD = r'''
import json, logging, os, sys
import torch
from boundfinder import FloatFormat, gpu, quantize
from boundfinder.emulation._round import make_rounder

gpu.DEVICE_TYPE = "cpu"  # the interpreter runs the kernels on CPU tensors
g = torch.Generator().manual_seed(0)
# random float32 words (every binade, NaN payloads, subnormals), bf16-grid words and their neighbours (the
# midpoints and midpoints +- 1 ulp of every format with up to 7 fraction bits), scaled normals, and corners
special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -1e-45, 1e-40, 448.0, 464.0,
                        480.0, 57344.0, 61440.0, 65504.0, 65520.0, 3.4028235e38, -3.4028235e38, 2**-10, 3 * 2**-10])
words = torch.randint(-(2**31), 2**31 - 1, (4096,), generator=g, dtype=torch.int32)
grid = torch.randint(-(2**15), 2**15, (2048,), generator=g, dtype=torch.int32) << 16
near = torch.cat([grid, grid | 0x8000, grid | 0x7FFF, grid + 0x8001])
normal = torch.randn(4096, generator=g) * 8
x = torch.cat([special, words.view(torch.float32), near.view(torch.float32), normal, normal * 2**-120,
               normal * 2**-136])
x = x[:-(x.numel() % 16) - 1]  # not a multiple of the block: the masked tail runs too

def word(t):
    return torch.where(t.isnan(), float("nan"), t).view(torch.int32)

def reference(fmt, mode):
    os.environ["BOUNDFINDER_TRITON"] = "0"
    try:
        torch.manual_seed(5)
        return quantize(x, fmt, mode)
    finally:
        os.environ["BOUNDFINDER_TRITON"] = "1"

tk = gpu.load()
launches = []
for name in ("_round_float", "_round_fixed"):
    kern = getattr(tk, name)
    class Counting:
        def __init__(self, kern):
            self.kern = kern
        def __getitem__(self, grid):
            launches.append(grid)
            return self.kern[grid]
    setattr(tk, name, Counting(kern))

formats = sys.argv[1].split(",")
formats = [FloatFormat(exp_bits=4, man_bits=3, subnormals=False) if f == "e4m3_nosub"
           else FloatFormat(exp_bits=8, man_bits=3, overflow="saturate") if f == "e8m3_sat" else f for f in formats]
bad = []
for fmt in formats:
    for mode in ("nearest", "truncate", "up", "down", "stochastic"):
        ref = reference(fmt, mode)
        torch.manual_seed(5)
        got = quantize(x, fmt, mode)
        torch.manual_seed(5)
        rounder = make_rounder(fmt, mode)
        by_rounder = rounder(x)
        torch.manual_seed(5)
        in_place = x.clone()
        rounder.in_place(in_place)
        for what, t in (("quantize", got), ("rounder", by_rounder), ("in_place", in_place)):
            if not torch.equal(word(ref), word(t)):
                bad.append([str(fmt), mode, what, int((word(ref) != word(t)).sum())])

# a kernel that fails: one log line, the identical torch path from then on
records = []
logging.getLogger("boundfinder").addHandler(type("H", (logging.Handler,), {"emit": lambda s, r: records.append(r)})())
def broken(*args, **kwargs):
    raise RuntimeError("no ptxas")
tk.round_float = broken
after = quantize(x, "e4m3fn")
fallback_ok = torch.equal(word(after), word(reference("e4m3fn", "nearest"))) and gpu.load() is None
print(json.dumps({"bad": bad, "launches": len(launches), "fallback_ok": fallback_ok,
                  "messages": [r.getMessage() for r in records]}))
'''

FORMATS = {
    "float": "e4m3fn,e5m2,bf16,fp16,e3m2fn,e2m3fn,e2m1fn,e8m0,e6m3,e8m22,e4m3_nosub,e8m3_sat",
    "fixed": "fixed16.8,fixed8.4,ufixed8.8,fixed24.0,fixed24.24,ufixed24.3,fixed2.1",
}


@pytest.mark.parametrize("family", sorted(FORMATS))
def test_triton_kernels_match_the_reference(family):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _CHILD, FORMATS[family]], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bad"] == []
    n_cases = 5 * len(FORMATS[family].split(","))
    assert result["launches"] >= 3 * n_cases  # the kernels ran (quantize, rounder, in place), not a fallback
    assert result["fallback_ok"]
    assert sum("Triton rounding kernel failed" in m and "no ptxas" in m for m in result["messages"]) == 1
