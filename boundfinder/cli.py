"""The ``boundfinder`` command line.

    boundfinder formats                 # every named format with its bits, range and precision
    boundfinder formats --json
    boundfinder quantize e4m3fn 0.1 300 1e6 --rounding truncate
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from boundfinder.errors import BoundfinderError
from boundfinder.formats import (
    ROUNDING_MODES,
    BinaryFormat,
    BlockFormat,
    DynamicFixedPointFormat,
    FixedPointFormat,
    FloatFormat,
    Format,
    IntFormat,
    format_names,
    parse_format,
)


def describe(fmt: Format) -> dict:
    """One row of ``boundfinder formats``: JSON-safe facts about a format."""
    row: dict = {"name": str(fmt), "family": type(fmt).__name__, "bits": fmt.bits}
    if isinstance(fmt, FloatFormat):
        row |= {"max": fmt.max_finite, "min_normal": fmt.min_normal, "min_subnormal": fmt.min_subnormal,
                "rel_precision": 2.0 ** -(fmt.man_bits + 1), "inf": fmt.has_inf, "nan": fmt.has_nan,
                "overflow": fmt.overflow}
    elif isinstance(fmt, FixedPointFormat):
        row |= {"max": fmt.max_finite, "min_subnormal": fmt.quantum, "overflow": "saturate"}
    elif isinstance(fmt, DynamicFixedPointFormat):
        row |= {"note": f"scale per tensor, overflow rate <= {fmt.overflow_rate:g}"}
    elif isinstance(fmt, IntFormat):
        kind = "symmetric" if fmt.symmetric else "affine"
        where = "per tensor" if fmt.axis is None else f"per channel (axis {fmt.axis})"
        row |= {"codes": f"[{fmt.qmin}, {fmt.qmax}]", "note": f"{kind}, min/max calibrated {where}"}
    elif isinstance(fmt, BinaryFormat):
        row |= {"note": "sign(x) in {-1, +1}" + (" x mean|x|" if fmt.scale == "mean" else "")}
    elif isinstance(fmt, BlockFormat):
        row |= {"max": fmt.element.max_finite, "bits_per_element": fmt.bits_per_element,
                "note": f"block of {fmt.block_size}, shared e8m0 scale, element {fmt.element}"}
    return row


def _num(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.6g}"
    return str(v)


def _cmd_formats(args: argparse.Namespace) -> int:
    rows = [describe(parse_format(n)) for n in (args.names or format_names())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<12} {'family':<24} {'bits':>4}  {'max':>10} {'min normal':>11} {'min subnormal':>13}  notes")
    for r in rows:
        notes = r.get("note", "")
        if r["family"] == "FloatFormat":
            notes = f"overflow -> {r['overflow']}" + ("" if r["inf"] else ", no inf") + ("" if r["nan"] else ", no NaN")
        print(f"{r['name']:<12} {r['family']:<24} {r['bits']:>4}  {_num(r.get('max', '')):>10} "
              f"{_num(r.get('min_normal', '')):>11} {_num(r.get('min_subnormal', '')):>13}  {notes}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from boundfinder.quantize import quantize

    x = torch.tensor(args.values, dtype=torch.float32)
    y = quantize(x, args.format, args.rounding)
    for a, b in zip(x.tolist(), y.tolist(), strict=True):
        print(f"{a!r:>24} -> {b!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="boundfinder", description="Emulate reduced precision in PyTorch models "
                                 "and estimate the minimum safe precision.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("formats", help="list the named number formats with their range and bits")
    p.add_argument("names", nargs="*", help="formats to describe (default: every named format)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_formats)
    p = sub.add_parser("quantize", help="round numbers to a format and print them")
    p.add_argument("format")
    p.add_argument("values", nargs="+", type=float)
    p.add_argument("--rounding", default="nearest", choices=ROUNDING_MODES)
    p.set_defaults(func=_cmd_quantize)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BoundfinderError as exc:
        print(f"boundfinder: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
