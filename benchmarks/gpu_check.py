"""One-shot GPU check: CUDA results equal the CPU results bit for bit, and CUDA throughput vs a device copy.

    python -m benchmarks.gpu_check --log2n 28            # every format family and mode
    python -m benchmarks.gpu_check --quick               # the cases the issue's targets name, fewer compilations

Prints each row as soon as it is measured (a run cut short keeps what it measured); exits non-zero if any
result differs from the CPU path, after printing the first differing inputs. Stochastic rounding is included:
its random bits come from a counter-based hash, so CPU and GPU draw the same bits for the same seed.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.bench_rounding import ROWS, paired_times
from boundfinder import quantize

CASES = ["e4m3fn", "e5m2", "bf16", "fp16", "e3m2fn", "e2m1fn", "e8m3", "e4m3_nosub", "fixed16.8", "dfixed8",
         "int8", "uint8_ch0", "binary_mean", "mxfp8_e4m3", "mxfp4_e2m1", "mxint8"]
MODES = ["nearest", "truncate", "up", "down", "stochastic"]
QUICK = {"e4m3fn": MODES, "bf16": ["nearest", "truncate", "stochastic"], "fp16": ["nearest", "stochastic"],
         "e3m2fn": ["nearest", "stochastic"], "fixed16.8": ["nearest", "up", "stochastic"],
         "dfixed8": ["nearest"], "int8": ["nearest", "down", "stochastic"],
         "mxfp8_e4m3": ["nearest", "up", "stochastic"], "mxint8": ["nearest"], "binary_mean": ["nearest"]}


def _words(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(t), float("nan"), t).view(torch.int32)  # one NaN word for every NaN


def correctness(n: int, quick: bool) -> int:
    g = torch.Generator().manual_seed(0)
    words = torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int32).view(torch.float32)
    x = torch.where(torch.rand(n, generator=g) < 0.5, words, torch.randn(n, generator=g) * 8).view(256, -1)
    cases = QUICK if quick else {c: MODES if not c.startswith("binary") else ["nearest", "stochastic"] for c in CASES}
    bad = 0
    print("| format | mode | CPU == CUDA |\n|---|---|---|", flush=True)
    for name, modes in cases.items():
        for mode in modes:
            torch.manual_seed(1)
            cpu = quantize(x, name, mode)
            torch.manual_seed(1)
            gpu = quantize(x.cuda(), name, mode).cpu()
            diff = _words(cpu) != _words(gpu)
            bad += bool(diff.any())
            print(f"| {name} | {mode} | {'yes' if not diff.any() else f'NO ({int(diff.sum())} differ)'} |", flush=True)
            for i in diff.flatten().nonzero()[:5].flatten().tolist():
                xi, ci, gi = x.flatten()[i], cpu.flatten()[i], gpu.flatten()[i]
                print(f"    x={xi.item()!r} (word {xi.view(torch.int32).item():#x}) cpu={ci.item()!r} "
                      f"gpu={gi.item()!r}", flush=True)
    return bad


def _streamed(fn, k: int):
    """``fn`` called ``k`` times back to back, then one synchronisation: the host's per-call work overlaps the
    device's kernels, as in a training loop."""

    def run() -> None:
        for _ in range(k):
            fn()

    return run


def throughput(log2n: int, repeats: int, quick: bool, dev: torch.device, k: int = 10) -> None:
    x = torch.randn(1 << log2n, device=dev) * 3
    nbytes = 2 * x.numel() * x.element_size()
    print(f"\n## {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, n = 2**{log2n} float32, "
          f"median of {repeats}\n", flush=True)
    print("One call: synchronised before and after each call (host work and kernel in series). Streamed: "
          f"{k} calls back to back, then one synchronisation (GB/s of the kernels).\n", flush=True)
    print("| case | one call GB/s | one call ratio to copy | streamed GB/s | streamed ratio to copy |\n"
          "|---|---:|---:|---:|---:|", flush=True)
    for label, fmt, modes in ROWS:
        for mode in modes:
            if quick and mode not in QUICK.get(fmt, ()):
                continue
            xx = x.view(1 << 10, -1) if fmt.endswith("_ch0") else x
            fn = lambda xx=xx, fmt=fmt, mode=mode: quantize(xx, fmt, mode)  # noqa: E731
            t, t_copy = paired_times(fn, x.clone, dev, repeats)
            ts, ts_copy = paired_times(_streamed(fn, k), _streamed(x.clone, k), dev, repeats)
            print(f"| {label} {mode} | {nbytes / t / 1e9:.0f} | {t_copy / t:.2f}x | {k * nbytes / ts / 1e9:.0f} | "
                  f"{ts_copy / ts:.2f}x |", flush=True)
    t_copy, _ = paired_times(x.clone, x.clone, dev, repeats)
    ts_copy, _ = paired_times(_streamed(x.clone, k), _streamed(x.clone, k), dev, repeats)
    print(f"| clone() | {nbytes / t_copy / 1e9:.0f} | 1.00x | {k * nbytes / ts_copy / 1e9:.0f} | 1.00x |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log2n", type=int, default=28)
    ap.add_argument("--check-log2n", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="only the cases the targets name (fewer compilations)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    bad = correctness(1 << args.check_log2n, args.quick)
    print(f"\n{bad} mismatching cases", flush=True)
    throughput(args.log2n, args.repeats, args.quick, torch.device("cuda"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
