"""Machine code of the Triton rounding kernels for a Hopper GPU (sm_90), compiled ahead of time: no GPU needed.

    python benchmarks/triton_sass.py                   # the default configuration (triton_kernels.BLOCK, NUM_WARPS)
    python benchmarks/triton_sass.py --block 2048 --warps 8

Prints, per kernel, the SASS instructions per element and how many of them issue on the integer/logic (ALU)
pipe, with the registers per thread, the width of the loads and the number of inexact float instructions in
the PTX: flushes of subnormals to zero, approximations (Triton's own float32 ``/``) and multiply-adds contracted
from a product and a sum. There must be none (tests/test_triton_ptx.py); the PTX is what is counted, as the
machine code of an IEEE division, div.rn.f32, uses .FTZ instructions on operands it has scaled itself. An element-wise
kernel keeps up with memory only while its ALU work per element stays under the budget printed below (a static
estimate from the vendor's figures: 64 ALU lanes per multiprocessor per clock, 132 multiprocessors at 1.98 GHz,
against the 4.3 TB/s a device copy reaches, 8 bytes per float32 element; a bfloat16 or float16 element moves 4
bytes, so its budget is half). Timings come from benchmarks/gpu_check.py on a GPU; this script says which
kernels are close to the integer pipe's limit before one is lent.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*FP_FUSION.*")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from boundfinder import FloatFormat, gpu, kernels, parse_format  # noqa: E402
from boundfinder import triton_kernels as tk  # noqa: E402
from boundfinder import triton_scales as ts  # noqa: E402

# Issued outside the integer/logic pipe: the FMA pipe (IMAD, float arithmetic), conversions, memory, control.
_NOT_ALU = {"IMAD", "IMUL", "FFMA", "FMUL", "FADD", "F2I", "I2F", "I2FP", "F2F", "FRND", "LDG", "STG", "LDC",
            "ULDC", "S2R", "S2UR", "EXIT", "BRA", "NOP", "UMOV", "MOV", "BAR", "CS2R"}
ALU_LANES, SMS, CLOCK_HZ, COPY_BYTES_PER_S = 64, 132, 1.98e9, 4.3e12
FLOAT_CASES = [("e4m3fn", "nearest"), ("e4m3fn", "truncate"), ("e4m3fn", "up"), ("e4m3fn", "stochastic"),
               ("fp16", "nearest"), ("fp16", "stochastic"), ("e3m2fn", "nearest"), ("e8m3_sat", "nearest"),
               ("bf16", "nearest"), ("bf16", "truncate"), ("bf16", "stochastic")]
FIXED_CASES = ["nearest", "truncate", "stochastic"]
# 16-bit tensors (the kernels' IO argument: 1 bfloat16, 2 float16): (input, format, mode)
IO_CASES = [("bf16", "e4m3fn", "nearest"), ("bf16", "e4m3fn", "truncate"), ("bf16", "e4m3fn", "stochastic"),
            ("bf16", "fp16", "nearest"), ("fp16", "e4m3fn", "nearest"), ("fp16", "e5m2", "stochastic"),
            ("bf16", "fixed16.8", "nearest"), ("bf16", "fixed16.8", "stochastic")]
# MX block formats, float32 tensors: (format, mode)
BLOCK_CASES = [("mxfp8_e4m3", "nearest"), ("mxfp8_e4m3", "truncate"), ("mxfp8_e4m3", "stochastic"),
               ("mxfp4_e2m1", "nearest"), ("mxint8", "nearest"), ("mxint8", "stochastic")]
_POINTER = {0: "*i32", 1: "*i16", 2: "*fp16", 3: "*i16"}


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_kernel(fn, signature: dict, constants: dict, warps: int, divisible: tuple[str, ...] = ()):
    """``fn`` compiled for sm_90, its first three arguments (and those named in ``divisible``) taken as
    divisible by 16, as Triton specialises them at a launch."""
    args = {0, 1, 2} | {fn.arg_names.index(k) for k in divisible}
    src = ASTSource(fn=fn, signature={**signature, **dict.fromkeys(constants, "constexpr")},
                    constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()},
                    attrs={(i,): [["tt.divisibility", 16]] for i in sorted(args)})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


# PTX instructions whose result differs from the IEEE operation the kernels' code states: float arithmetic that
# flushes subnormals to zero, approximate division (Triton's own ``/`` on float32) and other approximations, and
# multiply-adds the compiler contracted from a product and a sum (the kernels call no fma). Their exactness needs
# none: ``tests/test_triton_ptx.py`` checks every kernel of the table.
_INEXACT = {"ftz": r"\.ftz\b", "approx": r"\.approx\b", "div.full": r"\bdiv\.full\b",
            "fma": r"\b(?:fma|mad)\.[\w.]*\.f(?:32|64)\b"}


def inexact_instructions(ptx: str) -> dict[str, int]:
    return {name: len(re.findall(pattern, ptx)) for name, pattern in _INEXACT.items()}


def analyse(kernel, per_thread: int, cubin: Path) -> dict:
    cubin.write_bytes(kernel.asm["cubin"])
    sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                           check=True).stdout
    ops = [op.split(".")[0] for op in re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)]
    counts = collections.Counter(ops)
    alu = sum(c for op, c in counts.items() if op not in _NOT_ALU and not op.startswith("U"))
    loads = re.findall(r"LDG\.E(?:\.[A-Z]+)*(?:\.(\d+))?", sass)
    return {"per_elem": len(ops) / per_thread, "alu_per_elem": alu / per_thread,
            "regs": int(re.search(r"REG:(\d+)", usage).group(1)),
            "load_bits": max(int(b) if b else 32 for b in loads),
            "inexact": sum(inexact_instructions(kernel.asm["ptx"]).values())}


def kernel_cases(block: int) -> list[tuple]:
    """Every kernel configuration the table lists: (input dtype, label, kernel, signature, constants[, arguments
    divisible by 16])."""
    shape = {"BLOCK": block, "EVEN": True, "WIDE": False}

    def float_case(inp: str, name: str, mode: str, io: int):
        fmt = FloatFormat(exp_bits=8, man_bits=3, overflow="saturate") if name == "e8m3_sat" else parse_format(name)
        fields, m = kernels.float_fields(fmt), kernels.MODE[mode]
        overflow, variant = kernels.OVERFLOW[fmt.overflow], kernels.float_variant(fmt)
        add = m == 0 and tk._adder_rounds(fields, variant)
        sig = {"x_ptr": _POINTER[io], "out_ptr": _POINTER[io], "n": "i32",
               **{k: "fp32" if k.startswith("tiny") else "i32" for k in tk._SCALARS}}
        return (inp, f"{name} {mode}{' (adder)' if add else ''}", tk._round_float, sig,
                {"MODE": m, "OVERFLOW": overflow, "E8": variant == kernels.E8, "ADD": add, "IO": io, **shape})

    def fixed_case(inp: str, mode: str, io: int):
        sig = {"x_ptr": _POINTER[io], "out_ptr": _POINTER[io], "n": "i32", "scale": "fp32", "inv": "fp32",
               "qmin": "fp32", "qmax": "fp32", "key": "i32"}
        return inp, f"fixed16.8 {mode}", tk._round_fixed, sig, {"MODE": kernels.MODE[mode], "IO": io, **shape}

    cases = [float_case("fp32", name, mode, 0) for name, mode in FLOAT_CASES]
    cases += [fixed_case("fp32", mode, 0) for mode in FIXED_CASES]
    def block_case(name: str, mode: str):
        fmt = parse_format(name)
        elem, m = fmt.element, kernels.MODE[mode]
        floating = isinstance(elem, FloatFormat)
        fields = kernels.float_fields(elem) if floating else (0,) * 8
        add = m == 0 and floating and tk._adder_rounds(fields, kernels.GENERAL)
        sig = {"x_ptr": "*i32", "out_ptr": "*i32", "cols": "i32", "nb": "i32", "total": "i32",
               **{k: "fp32" if k.startswith("tiny") else "i32" for k in tk._SCALARS}, "emax": "i32",
               "scale": "fp32", "inv": "fp32", "qmin": "fp32", "qmax": "fp32"}
        return ("fp32", f"{name} {mode}{' (adder)' if add else ''}", tk._round_block, sig,
                {"MODE": m, "ADD": add, "FIXED": not floating, "LEAN": floating and tk._lean(fields, m), "IO": 0,
                 "BS": fmt.block_size, "G": block // fmt.block_size, "PADDED": False, "EVEN": True, "WIDE": False})

    cases += [block_case(name, mode) for name, mode in BLOCK_CASES]

    # the formats whose scale is a reduction (triton_scales): the rounding kernels, and the reductions' passes
    def scale_case(label: str, fn, sig: dict, consts: dict, inp: str = "fp32"):
        io = {"fp32": 0, "bf16": 1}[inp]  # (bfloat16: the stores make any NaN they computed the quiet NaN)
        ptr = _POINTER[io]
        return inp, label, fn, {"x_ptr": ptr, "out_ptr": ptr, **sig}, {"IO": io, **consts}, ("inner",)

    affine = {"lo_ptr": "*fp32", "hi_ptr": "*fp32", "table_ptr": "*fp32", "n": "i32", "inner": "i32",
              "channels": "i32", "chunks": "i32", "qmin": "fp32", "qmax": "fp32", "zp_sym": "fp32", "key": "i32"}
    # (per channel: 1, each element's channel from its index; 2, a program in one row)
    for label, mode, channels in (("int8", "nearest", 0), ("int8", "down", 0), ("int8", "stochastic", 0),
                                  ("int8_ch0 (element)", "nearest", 1), ("int8_ch0 (element)", "stochastic", 1),
                                  ("int8_ch0 (row)", "nearest", 2), ("int8_ch0 (row)", "stochastic", 2)):
        cases.append(scale_case(f"{label} {mode}", ts._affine, affine, {"MODE": kernels.MODE[mode], "SYM": False,
                                                                        "CHANNELS": channels, **shape}))
    binary = {"scale_ptr": "*fp32", "n": "i32", "key": "i32"}
    cases += [scale_case(f"{label} {mode}", ts._binary, binary, {"MODE": kernels.MODE[mode], "MEAN": mean, **shape})
              for label, mode, mean in (("binary_mean", "nearest", True), ("binary", "stochastic", False))]
    cases += [scale_case("int8 nearest", ts._affine, affine, {"MODE": 0, "SYM": False, "CHANNELS": 0, **shape}, "bf16"),
              scale_case("binary_mean nearest", ts._binary, binary, {"MODE": 0, "MEAN": True, **shape}, "bf16")]
    dynamic = {"frac_ptr": "*i32", "n": "i32", "qmin": "fp32", "qmax": "fp32", "key": "i32"}
    cases += [scale_case(f"dfixed8 {mode}", ts._round_dynamic, dynamic, {"MODE": kernels.MODE[mode], **shape})
              for mode in ("nearest", "stochastic")]
    sums = ("fp32", "mean |x| partial sums (float64)", ts._abs_sums, {"x_ptr": "*i32", "sums_ptr": "*fp64",
                                                                       "n": "i32"}, {"IO": 0, **shape})
    hist = ("fp32", "exponent histogram (one block of the loop)", ts._exponent_hist,
            {"x_ptr": "*i32", "hist_ptr": "*i32", "n": "i32", "blocks": "i32"},
            {"IO": 0, "BLOCK": block, "NB": ts._HIST_BINS, "WIDE": False})
    cases += [sums, hist]
    for inp, name, mode in IO_CASES:
        # bfloat16: rounded back (IO 1) unless every value of the format is a bfloat16 value (IO 3)
        io = 2 if inp == "fp16" else 3 if gpu.bf16_exact(parse_format(name)) else 1
        cases.append(fixed_case(inp, mode, io) if name == "fixed16.8" else float_case(inp, name, mode, io))
    return cases


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--block", type=int, default=tk.BLOCK)
    ap.add_argument("--warps", type=int, default=tk.NUM_WARPS)
    args = ap.parse_args()
    per_thread = args.block // (32 * args.warps)
    budget = ALU_LANES * SMS * CLOCK_HZ / (COPY_BYTES_PER_S / 8)
    print(f"sm_90, block {args.block}, {args.warps} warps ({per_thread} elements per thread), triton "
          f"{triton.__version__}; ALU budget at copy speed: {budget:.0f} instructions per float32 element, "
          f"{budget / 2:.0f} per 16-bit element\n")
    print("| input | kernel | instructions / element | ALU / element | ALU share of budget | registers | "
          "load bits | PTX ftz / approx / fma |\n|---|---|---:|---:|---:|---:|---:|---:|")
    cases = kernel_cases(args.block)
    cubin = Path("/tmp") / "boundfinder_triton_sass.cubin"
    for inp, label, fn, sig, consts, *divisible in cases:
        divisible = tuple(d for d in (divisible[0] if divisible else ()) if d in sig)  # (a row length: 16 | it)
        r = analyse(compile_kernel(fn, sig, consts, args.warps, divisible), per_thread, cubin)
        share = r["alu_per_elem"] / (budget if inp == "fp32" else budget / 2)
        print(f"| {inp} | {label} | {r['per_elem']:.1f} | {r['alu_per_elem']:.1f} | {share:.0%} | {r['regs']} | "
              f"{r['load_bits']} | {r['inexact']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
