"""One-shot GPU check: CUDA results equal the CPU results bit for bit, and CUDA throughput vs a device copy.

    python -m benchmarks.gpu_check --log2n 28            # every format family and mode
    python -m benchmarks.gpu_check --quick               # the cases the issue's targets name, fewer compilations

Prints each row as soon as it is measured (a run cut short keeps what it measured); exits non-zero if any
result differs from the CPU path, after printing the first differing inputs. Stochastic rounding is included:
its random bits come from a counter-based hash, so CPU and GPU draw the same bits for the same seed.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from benchmarks.bench_rounding import ROWS, paired_times
from boundfinder import quantize

CASES = ["e4m3fn", "e5m2", "bf16", "fp16", "e3m2fn", "e2m1fn", "e8m3", "e4m3_nosub", "fixed16.8", "dfixed8",
         "int8", "uint8_ch0", "binary_mean", "mxfp8_e4m3", "mxfp4_e2m1", "mxint8"]
MODES = ["nearest", "truncate", "up", "down", "stochastic"]
QUICK = {"e4m3fn": MODES, "bf16": ["nearest", "truncate", "stochastic"], "fp16": ["nearest", "stochastic"],
         "e3m2fn": ["nearest", "stochastic"], "fixed16.8": ["nearest", "up", "stochastic"],
         "dfixed8": ["nearest", "stochastic"], "int8": ["nearest", "down", "stochastic"],
         "int8_ch0": ["nearest", "stochastic"], "mxfp8_e4m3": ["nearest", "up", "stochastic"], "mxint8": ["nearest"],
         "binary_mean": ["nearest", "stochastic"]}


def _words(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(t), float("nan"), t).view(torch.int32)  # one NaN word for every NaN


def _eager_cpu(x: torch.Tensor, name: str, mode: str) -> torch.Tensor:
    """``quantize`` by the CPU's eager kernels (the reference implementation), seeded as the GPU calls are."""
    torch.manual_seed(1)
    before = os.environ.get("BOUNDFINDER_COMPILE")
    os.environ["BOUNDFINDER_COMPILE"] = "0"
    try:
        return quantize(x, name, mode)
    finally:
        if before is None:
            del os.environ["BOUNDFINDER_COMPILE"]
        else:
            os.environ["BOUNDFINDER_COMPILE"] = before


def correctness(n: int, quick: bool, label: str = "CUDA") -> int:
    """CUDA against the CPU's eager kernels (the reference implementation, which the tests hold equal to the
    compiled CPU kernels): no CPU compilation is waited for."""
    g = torch.Generator().manual_seed(0)
    words = torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int32).view(torch.float32)
    x = torch.where(torch.rand(n, generator=g) < 0.5, words, torch.randn(n, generator=g) * 8).view(256, -1)
    cases = QUICK if quick else {c: MODES if not c.startswith("binary") else ["nearest", "stochastic"] for c in CASES}
    bad = 0
    print(f"| format | mode | CPU == {label} |\n|---|---|---|", flush=True)
    for name, modes in cases.items():
        for mode in modes:
            cpu = _eager_cpu(x, name, mode)
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


# (input, format, mode) of the 16-bit and layout table: one pass in the tensor's own dtype and layout
LAYOUT_CASES = [("bf16", "e4m3fn", "nearest"), ("bf16", "e4m3fn", "stochastic"), ("bf16", "fixed16.8", "nearest"),
                ("fp16", "e4m3fn", "nearest"), ("fp16", "e5m2", "stochastic"),
                ("fp32 channels_last", "e4m3fn", "nearest"), ("fp32 channels_last", "e4m3fn", "truncate")]


def _layout_input(kind: str, x: torch.Tensor) -> torch.Tensor:
    if kind == "fp32 channels_last":
        return x.view(-1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    return x.to(torch.bfloat16 if kind == "bf16" else torch.float16)


def layouts(log2n: int, check_log2n: int, repeats: int, dev: torch.device, k: int = 10) -> int:
    """bfloat16 and float16 inputs and a channels_last tensor: streamed ratio to a clone() of the same tensor, and
    equality with the CPU's eager reference (which rounds through float32 and casts back); returns the number of
    mismatching cases."""
    x = torch.randn(1 << log2n, device=dev) * 3
    g = torch.Generator().manual_seed(0)
    words = torch.randint(-(2**31), 2**31 - 1, (1 << check_log2n,), generator=g, dtype=torch.int32)
    xc = torch.where(torch.rand(words.numel(), generator=g) < 0.5, words.view(torch.float32),
                     torch.randn(words.numel(), generator=g) * 8)
    print(f"\n## 16-bit inputs and layouts, n = 2**{log2n}, streamed ({k} calls), ratio to clone() of the same "
          f"tensor; CPU == CUDA on 2**{check_log2n} inputs\n", flush=True)
    print("| input | case | streamed GB/s | ratio to clone() | CPU == CUDA |\n|---|---|---:|---:|---|", flush=True)
    bad = 0
    for kind, fmt, mode in LAYOUT_CASES:
        t = _layout_input(kind, x)
        fn = lambda t=t, fmt=fmt, mode=mode: quantize(t, fmt, mode)  # noqa: E731
        ts, ts_copy = paired_times(_streamed(fn, k), _streamed(t.clone, k), dev, repeats)
        small = _layout_input(kind, xc)
        cpu = _eager_cpu(small, fmt, mode)
        torch.manual_seed(1)
        got = quantize(small.to(dev), fmt, mode)
        same = got.stride() == cpu.stride() and torch.equal(_words(cpu.float()), _words(got.cpu().float()))
        bad += not same
        print(f"| {kind} | {fmt} {mode} | {k * 2 * t.numel() * t.element_size() / ts / 1e9:.0f} | "
              f"{ts_copy / ts:.2f}x | {'yes' if same else 'NO'} |", flush=True)
    return bad


# (elements per program, warps per program) tried by --sweep
CONFIGS = [(1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8), (8192, 16)]
SWEEP_CASES = [("e4m3fn", "nearest"), ("bf16", "nearest"), ("e4m3fn", "stochastic"), ("fixed16.8", "stochastic")]


def sweep(log2n: int, repeats: int, dev: torch.device, k: int = 10) -> tuple[int, int]:
    """Streamed ratio to clone() of the Triton kernels under each configuration of CONFIGS, and of a plain Triton
    copy (the ceiling of a Triton kernel here); returns the configuration with the best worst-case ratio and
    leaves it set."""
    import triton
    import triton.language as tl

    from boundfinder import gpu

    tk = gpu.load()
    if tk is None:
        print("no Triton: no sweep")
        return 0, 0

    @triton.jit
    def copy(x_ptr, out_ptr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, eviction_policy="evict_first"), eviction_policy="evict_first")

    x = torch.randn(1 << log2n, device=dev) * 3
    out = torch.empty_like(x)
    print(f"\n## Triton configurations, n = 2**{log2n}, streamed ({k} calls), ratio to clone()\n", flush=True)
    print("| block | warps | " + " | ".join(f"{f} {m}" for f, m in SWEEP_CASES) + " | Triton copy |\n"
          "|---:|---:|" + "---:|" * (len(SWEEP_CASES) + 1), flush=True)
    best, best_ratio = (tk.BLOCK, tk.NUM_WARPS), 0.0
    for block, warps in CONFIGS:
        tk.BLOCK, tk.NUM_WARPS = block, warps
        ratios = []
        for fmt, mode in SWEEP_CASES:
            fn = lambda fmt=fmt, mode=mode: quantize(x, fmt, mode)  # noqa: E731
            ts, ts_copy = paired_times(_streamed(fn, k), _streamed(x.clone, k), dev, repeats)
            ratios.append(ts_copy / ts)
        def plain_copy(block=block, warps=warps) -> None:
            copy[(x.numel() // block,)](x, out, BLOCK=block, num_warps=warps)

        ts, ts_copy = paired_times(_streamed(plain_copy, k), _streamed(x.clone, k), dev, repeats)
        print(f"| {block} | {warps} | " + " | ".join(f"{r:.3f}x" for r in ratios) + f" | {ts_copy / ts:.3f}x |",
              flush=True)
        if min(ratios) > best_ratio:
            best, best_ratio = (block, warps), min(ratios)
    tk.BLOCK, tk.NUM_WARPS = best
    print(f"\nbest worst-case: block {best[0]}, {best[1]} warps ({best_ratio:.3f}x); used below", flush=True)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log2n", type=int, default=28)
    ap.add_argument("--check-log2n", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="only the cases the targets name (fewer compilations)")
    ap.add_argument("--sweep", action="store_true", help="first time the Triton kernels' configurations and use "
                    "the best (see CONFIGS)")
    ap.add_argument("--also-compiled", action="store_true", help="last, check the torch.compile path "
                    "(BOUNDFINDER_TRITON=0) against the CPU too")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    dev = torch.device("cuda")
    if args.sweep:
        sweep(args.log2n, max(5, args.repeats // 2), dev)
    throughput(args.log2n, args.repeats, args.quick, dev)
    bad = correctness(1 << args.check_log2n, args.quick)
    print(f"\n{bad} mismatching cases", flush=True)
    bad += layouts(args.log2n, args.check_log2n, args.repeats, dev)
    if args.also_compiled:
        os.environ["BOUNDFINDER_TRITON"] = "0"
        bad_compiled = correctness(1 << args.check_log2n, args.quick, "CUDA (torch.compile path)")
        print(f"\n{bad_compiled} mismatching cases on the torch.compile path", flush=True)
        bad += bad_compiled
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
