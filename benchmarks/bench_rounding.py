"""Rounding throughput as a ratio to ``clone()`` measured in the same run (CPU, and CUDA when present).

    python benchmarks/bench_rounding.py                 # 2**24 float32 elements, CPU (+ GPU if available)
    python benchmarks/bench_rounding.py --log2n 28 --device cuda
    python benchmarks/bench_rounding.py --threads 1       # when another job holds a core

Each row times one call of ``quantize`` (or of the native extension's kernel that emulation uses on CPU
tensors, or of ``quantize`` with that extension switched off, or of an anchor emulator) on the same tensor; GB/s
counts one read and one write of the float32 data, as for clone(). Each row times the case and clone()
alternately, ``--repeats`` times each after warm-up, and divides the medians, so that a noisy neighbour moves both
sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from boundfinder import quantize

ROWS = [
    ("float e4m3fn", "e4m3fn", ["nearest", "truncate", "stochastic", "up"]),
    ("float e5m10 (fp16)", "fp16", ["nearest", "truncate", "stochastic"]),
    ("float e8m7 (bf16)", "bf16", ["nearest", "truncate", "stochastic"]),
    ("float e3m2fn (subnormal-heavy)", "e3m2fn", ["nearest", "stochastic"]),
    ("fixed16.8", "fixed16.8", ["nearest", "truncate", "stochastic"]),
    ("dynamic fixed dfixed8", "dfixed8", ["nearest", "stochastic"]),
    ("int8 affine (min/max)", "int8", ["nearest", "stochastic"]),
    ("int8 per-channel", "int8_ch0", ["nearest", "stochastic"]),
    ("binary_mean", "binary_mean", ["nearest"]),
    ("mxfp8_e4m3 (block 32)", "mxfp8_e4m3", ["nearest", "truncate", "stochastic"]),
    ("mxfp4_e2m1 (block 32)", "mxfp4_e2m1", ["nearest"]),
    ("mxint8 (block 32)", "mxint8", ["nearest", "stochastic"]),
]
# Rows again without the native extension (CPU), for the formats quantize takes it for: the compiled kernels it
# replaced there, in the same run
COMPILED_ROWS = [("mxfp8_e4m3", "nearest"), ("mxfp8_e4m3", "stochastic"), ("mxint8", "nearest"),
                 ("int8_ch0", "nearest"), ("dfixed8", "nearest")]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paired_times(fn: Callable[[], object], ref: Callable[[], object], device: torch.device,
                 repeats: int) -> tuple[float, float]:
    """Median times of ``fn`` and ``ref`` measured alternately, so that drift in the machine's load moves both."""
    for _ in range(2):
        fn()
        ref()
    t_fn, t_ref = [], []
    for _ in range(repeats):
        for f, out in ((ref, t_ref), (fn, t_fn)):
            _sync(device)
            t = time.perf_counter()
            f()
            _sync(device)
            out.append(time.perf_counter() - t)
    return statistics.median(t_fn), statistics.median(t_ref)


def anchors(x: torch.Tensor) -> list[tuple[str, Callable[[], object]]]:
    """QPyTorch and pychop on the same data when they are installed (the `anchors` extra)."""
    out = []
    try:
        from qtorch.quant import float_quantize

        out += [("qtorch e4m3 nearest", lambda: float_quantize(x, exp=4, man=3, rounding="nearest")),
                ("qtorch e4m3 stochastic", lambda: float_quantize(x, exp=4, man=3, rounding="stochastic"))]
    except Exception as exc:  # noqa: BLE001 - an anchor that cannot load is reported, not fatal
        print(f"# qtorch unavailable: {type(exc).__name__}: {exc}")
    try:
        import pychop

        pychop.backend("torch")
        chop_n = pychop.Chop(exp_bits=4, sig_bits=3, rmode=1)
        chop_s = pychop.Chop(exp_bits=4, sig_bits=3, rmode=5)
        out += [("pychop e4m3 nearest", lambda: chop_n(x)), ("pychop e4m3 stochastic", lambda: chop_s(x))]
    except Exception as exc:  # noqa: BLE001
        print(f"# pychop unavailable: {type(exc).__name__}: {exc}")
    return out


NATIVE_ROWS = [("e4m3fn", "nearest"), ("fp16", "nearest"), ("bf16", "nearest"), ("bf16", "truncate"),
               ("e3m2fn", "nearest")]


def native_cases(x: torch.Tensor) -> list[tuple[str, Callable[[], object]]]:
    """The native extension's kernels (what emulation rounds float32 CPU tensors with), when it is built."""
    from boundfinder import native, parse_format

    ext = native.load()
    if ext is None:
        print("# native extension unavailable: its rows are left out")
        return []
    cases = []
    for fmt, mode in NATIVE_ROWS:
        spec = native.spec(parse_format(fmt), mode)
        cases.append((f"native {fmt} {mode} (emulation)", lambda spec=spec: ext.round(x, spec)))
    return cases


def without_native(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` called as if the native extension could not be built (quantize's compiled kernels)."""
    from boundfinder import native

    def call() -> object:
        load = native.load
        native.load = lambda: None
        try:
            return fn()
        finally:
            native.load = load

    return call


def run(device: torch.device, log2n: int, repeats: int, with_anchors: bool,
        only: str | None = None) -> list[tuple[str, float, float]]:
    n = 1 << log2n
    x = torch.randn(n, device=device) * 3
    if device.type == "cuda":
        torch.cuda.synchronize()
    nbytes = 2 * x.numel() * x.element_size()
    rows = []

    def case(fmt: str, mode: str) -> Callable[[], object]:
        xx = x.view(1 << 10, -1) if fmt.endswith("_ch0") else x  # (1,024 channels)
        return lambda: quantize(xx, fmt, mode)

    cases: list[tuple[str, Callable[[], object]]] = []
    for label, fmt, modes in ROWS:
        cases += [(f"{label} {mode}", case(fmt, mode)) for mode in modes]
    if device.type == "cpu":
        cases += [(f"{fmt} {mode} (compiled, no native)", without_native(case(fmt, mode)))
                  for fmt, mode in COMPILED_ROWS]
        cases += native_cases(x)
    if with_anchors and device.type == "cpu":
        cases += anchors(x)
    if only:
        cases = [(label, fn) for label, fn in cases if only in label]
    clone_times = []
    for label, fn in cases:
        t, t_clone = paired_times(fn, lambda: x.clone(), device, repeats)
        clone_times.append(t_clone)
        rows.append((label, nbytes / t / 1e9, t_clone / t))
    t_clone = statistics.median(clone_times)
    rows.insert(0, ("clone() (median over rows)", nbytes / t_clone / 1e9, 1.0))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log2n", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    ap.add_argument("--no-anchors", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--only", default=None, help="rows whose label contains this text (e.g. 'mx')")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        print(f"\n## {device.type}: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"n = 2**{args.log2n} float32, median of {args.repeats}\n")
        print("| case | GB/s | ratio to clone() |")
        print("|---|---:|---:|")
        for label, gbs, ratio in run(device, args.log2n, args.repeats, not args.no_anchors, args.only):
            print(f"| {label} | {gbs:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
