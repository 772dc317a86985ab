"""The Triton kernels compiled for a Hopper GPU (sm_90) ahead of time, without one: their PTX holds no inexact
float instruction. Triton's interpreter runs the kernels' operations with NumPy on the CPU, which neither flushes
subnormals, approximates a division nor contracts a multiply and an add; the compiled code must not either, or
the GPU's bits would differ from the interpreter's (tested) ones. Skipped without Triton's compiler and ptxas."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton installed")


def test_every_kernel_compiles_for_sm90_without_inexact_instructions():
    from pathlib import Path

    import triton

    if not Path(triton.__file__).with_name("backends").joinpath("nvidia", "bin", "ptxas").exists():
        pytest.skip("Triton's ptxas is not installed")
    from benchmarks import triton_sass
    from boundfinder import triton_kernels as tk

    cases = triton_sass.kernel_cases(tk.BLOCK)
    assert len(cases) > 40  # every family, mode and 16-bit store of the table
    found = {}
    for inp, label, fn, sig, consts, *divisible in cases:
        divisible = tuple(d for d in (divisible[0] if divisible else ()) if d in sig)
        ptx = triton_sass.compile_kernel(fn, sig, consts, tk.NUM_WARPS, divisible).asm["ptx"]
        counts = {k: v for k, v in triton_sass.inexact_instructions(ptx).items() if v}
        if counts:
            found[f"{inp} {label}"] = counts
    assert found == {}


def test_the_count_finds_what_triton_emits_for_the_inexact_operations():
    """The patterns are not vacuous: Triton's float32 ``/`` is div.full, ``a * b + c`` is contracted into an fma,
    and tl.floor flushes subnormals (cvt.rmi.ftz), each counted."""
    from pathlib import Path

    import triton
    import triton.language as tl

    if not Path(triton.__file__).with_name("backends").joinpath("nvidia", "bin", "ptxas").exists():
        pytest.skip("Triton's ptxas is not installed")
    from benchmarks import triton_sass

    @triton.jit
    def sloppy(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n)
        tl.store(out_ptr + offs, tl.floor(x / (x + 3.0)) + x * x + 1.0, mask=offs < n)

    ptx = triton_sass.compile_kernel(sloppy, {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}, {"BLOCK": 256},
                                     4).asm["ptx"]
    counts = triton_sass.inexact_instructions(ptx)
    assert counts["div.full"] >= 1 and counts["fma"] >= 1 and counts["ftz"] >= 1, counts
