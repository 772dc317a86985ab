"""The default cost table of ``boundfinder profile``: training-step and evaluation time of each emulation level as
a ratio of plain float32, measured side by side in the same rounds, for built-in MLPs of growing depth and width
and the LeNet-style CNN of growing channels (``boundfinder.profile.cost_profile``).

    python benchmarks/profile_cost.py                                  # the defaults of `boundfinder profile`
    python benchmarks/profile_cost.py --format e4m3fn --depths 1,2,4,8 --widths 32,128,512 --kinds mlp
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import torch

from boundfinder.profile import COST_KINDS, DEFAULT_FORMATS, cost_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default=DEFAULT_FORMATS[0], help="the format timed (default: the first of "
                        "boundfinder profile's default formats)")
    parser.add_argument("--kinds", default=",".join(COST_KINDS))
    parser.add_argument("--depths", default="1,2,4")
    parser.add_argument("--widths", default="32,128")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    table = cost_profile(kinds=args.kinds.split(","), depths=[int(d) for d in args.depths.split(",")],
                         widths=[int(w) for w in args.widths.split(",")], format=args.format,
                         batch_size=args.batch_size, repeats=args.repeats, steps=args.steps, threads=args.threads)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {table.threads} thread(s); took "
          f"{time.perf_counter() - start:.0f} s")
    print(table.report())


if __name__ == "__main__":
    main()
