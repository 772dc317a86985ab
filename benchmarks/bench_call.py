"""Per-call cost of ``quantize`` on small tensors: the compiled kernel called directly, through dynamo, and the
eager kernel, with ``clone()`` of the same tensor as the yardstick, measured side by side in one run.

    python benchmarks/bench_call.py              # 1 thread (the setting of the training benchmarks)

Each cell is the median over rounds of (calls timed back to back); the configurations alternate within a round,
so a noisy neighbour moves them alike. Small tensors are where a layer-level emulation spends its rounding
calls (biases, logits, small activations), and where the fixed cost per call, not the bandwidth, decides.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

from boundfinder import compiled_call, kernels, quantize

CASES = [("e4m3fn", "nearest"), ("e4m3fn", "stochastic"), ("fixed16.8", "nearest"), ("bf16", "stochastic")]


def per_call_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def make_configs(x: torch.Tensor, fmt: str, mode: str, min_numel: int) -> dict:
    """clone() of x, and quantize(x, fmt, mode): compiled and called directly, compiled through dynamo, eager."""

    def call(direct: bool, threshold: int) -> None:
        compiled_call.ENABLED = direct
        kernels.COMPILE_MIN_NUMEL = threshold
        quantize(x, fmt, mode)

    return {"clone": x.clone, "direct": lambda: call(True, min_numel), "dynamo": lambda: call(False, min_numel),
            "eager": lambda: call(True, 1 << 62)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 8192, 65536])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, threads={args.threads}, median of {args.rounds} rounds "
          f"of {args.calls} calls")
    print("\n| elements | format | mode | clone() us | direct us | via dynamo us | eager us | dynamo / direct |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    min_numel = kernels.COMPILE_MIN_NUMEL
    for n in args.sizes:
        x = torch.randn(n) * 3
        for fmt, mode in CASES:
            configs = make_configs(x, fmt, mode, min_numel)
            for fn in configs.values():  # warm-up, and the first compilation
                per_call_us(fn, 5)
            samples: dict[str, list[float]] = {k: [] for k in configs}
            for _ in range(args.rounds):
                for name, fn in configs.items():
                    samples[name].append(per_call_us(fn, args.calls))
            compiled_call.ENABLED = True
            kernels.COMPILE_MIN_NUMEL = min_numel
            med = {k: statistics.median(v) for k, v in samples.items()}
            print(f"| {n} | {fmt} | {mode} | {med['clone']:.1f} | {med['direct']:.1f} | {med['dynamo']:.1f} | "
                  f"{med['eager']:.1f} | {med['dynamo'] / med['direct']:.2f}x |")


if __name__ == "__main__":
    main()
