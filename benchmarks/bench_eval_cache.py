"""Evaluation (no gradients) under layer-level emulation, as a ratio to plain evaluation in the same run, and
what keying the cached rounded weights on their bytes costs.

Rounded weights are reused across forwards without gradients; writes through ``param.data`` do not move the
version counter, so the cache also checks a 64-bit fingerprint of each parameter's bytes at every forward
(``emulation/layer.py``, ``_WeightGroup._same_content``). The ``unchecked`` column replaces that check by
``True`` (the cache keyed on version counter and data pointer only, blind to ``.data`` writes) to show its cost.
Configurations are interleaved in rounds; each figure is the median over rounds of (time / plain time).

    python benchmarks/bench_eval_cache.py --rounds 15
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

from boundfinder.emulation import emulate, layer
from boundfinder.models import MLP, LeNet


def _time(model, x, n: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(x)
        start = time.perf_counter()
        for _ in range(n):
            model(x)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--forwards", type=int, default=30, help="forwards per configuration per round")
    parser.add_argument("--format", default="e8m3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"# {now:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"1 thread, format {args.format}")
    print("| model | batch | plain us | emulated / plain | unchecked / plain |")
    print("|---|---:|---:|---:|---:|")
    checked = layer._WeightGroup._same_content
    for name, build in (("mlp", MLP), ("lenet", LeNet)):
        model = build().eval()
        for batch in (32, 449):
            x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))
            plain_times, ratios, unchecked = [], [], []
            for _ in range(args.rounds):
                plain = _time(model, x, args.forwards)
                with emulate(model, args.format, level="layer"):
                    emulated = _time(model, x, args.forwards)
                layer._WeightGroup._same_content = lambda self, index, param: True
                try:
                    with emulate(model, args.format, level="layer"):
                        blind = _time(model, x, args.forwards)
                finally:
                    layer._WeightGroup._same_content = checked
                plain_times.append(plain)
                ratios.append(emulated / plain)
                unchecked.append(blind / plain)
            print(f"| {name} | {batch} | {statistics.median(plain_times) * 1e6:.0f} | "
                  f"{statistics.median(ratios):.2f}x | {statistics.median(unchecked):.2f}x |")


if __name__ == "__main__":
    main()
