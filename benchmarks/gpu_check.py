"""One-shot GPU check: CUDA results equal the CPU results bit for bit, and CUDA throughput vs a device copy.

    python benchmarks/gpu_check.py --log2n 28

Prints one table per part; exits non-zero if any result differs from the CPU path. Stochastic rounding is
included: its random bits come from a counter-based hash, so CPU and GPU draw the same bits for the same seed.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.bench_rounding import run as bench
from boundfinder import quantize

CASES = ["e4m3fn", "e5m2", "bf16", "fp16", "e3m2fn", "e2m1fn", "e8m3", "e4m3_nosub", "fixed16.8", "dfixed8",
         "int8", "uint8_ch0", "binary_mean", "mxfp8_e4m3", "mxfp4_e2m1", "mxint8"]
MODES = ["nearest", "truncate", "up", "down", "stochastic"]


def correctness(n: int) -> int:
    g = torch.Generator().manual_seed(0)
    words = torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int32).view(torch.float32)
    x = torch.where(torch.rand(n, generator=g) < 0.5, words, torch.randn(n, generator=g) * 8).view(256, -1)
    bad = 0
    print("| format | mode | CPU == CUDA |\n|---|---|---|")
    for name in CASES:
        for mode in MODES if not name.startswith("binary") else ["nearest", "stochastic"]:
            torch.manual_seed(1)
            cpu = quantize(x, name, mode)
            torch.manual_seed(1)
            gpu = quantize(x.cuda(), name, mode).cpu()
            same = torch.equal(torch.isnan(cpu), torch.isnan(gpu)) and torch.equal(
                cpu[~torch.isnan(cpu)].view(torch.int32), gpu[~torch.isnan(gpu)].view(torch.int32))
            bad += not same
            print(f"| {name} | {mode} | {'yes' if same else 'NO'} |")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log2n", type=int, default=28)
    ap.add_argument("--check-log2n", type=int, default=22)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    bad = correctness(1 << args.check_log2n)
    dev = torch.device("cuda")
    print(f"\n## {torch.cuda.get_device_name(dev)}, n = 2**{args.log2n} float32\n")
    print("| case | GB/s | ratio to device copy |\n|---|---:|---:|")
    for label, gbs, ratio in bench(dev, args.log2n, 20, with_anchors=False):
        print(f"| {label} | {gbs:.0f} | {ratio:.2f}x |")
    print(f"\n{bad} mismatching cases")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
