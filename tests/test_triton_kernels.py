"""The Triton kernels (boundfinder/triton_kernels.py) equal the reference kernels bit for bit, run on the CPU by
Triton's interpreter (TRITON_INTERPRET=1, set before Triton compiles anything: hence a child process). Skipped
where Triton is not installed; on a GPU, tests/test_gpu.py checks the compiled kernels against the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton installed")

_CHILD = r'''
import json, logging, math, os, sys
import torch
import triton
import triton.language as tl
from boundfinder import BlockFormat, FixedPointFormat, FloatFormat, gpu, quantize
from boundfinder.emulation._round import make_rounder

gpu.DEVICE_TYPE = "cpu"  # the interpreter runs the kernels on CPU tensors
g = torch.Generator().manual_seed(0)
# random float32 words (every binade, NaN payloads, subnormals), bf16-grid words and their neighbours (the
# midpoints and midpoints +- 1 ulp of every format with up to 7 fraction bits), scaled normals, and corners
special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -1e-45, 1e-40, 448.0, 464.0,
                        480.0, 57344.0, 61440.0, 65504.0, 65520.0, 3.4028235e38, -3.4028235e38, 2**-10, 3 * 2**-10])
words = torch.randint(-(2**31), 2**31 - 1, (4096,), generator=g, dtype=torch.int32)
grid = torch.randint(-(2**15), 2**15, (2048,), generator=g, dtype=torch.int32) << 16
near = torch.cat([grid, grid | 0x8000, grid | 0x7FFF, grid + 0x8001])
normal = torch.randn(4096, generator=g) * 8
x = torch.cat([special, words.view(torch.float32), near.view(torch.float32), normal, normal * 2**-120,
               normal * 2**-136])
x = x[:-(x.numel() % 16) - 1]  # not a multiple of the block: the masked tail runs too

def word(t):
    return torch.where(t.isnan(), float("nan"), t).view(torch.int32)

def reference(fmt, mode):
    os.environ["BOUNDFINDER_TRITON"] = "0"
    try:
        torch.manual_seed(5)
        return quantize(x, fmt, mode)
    finally:
        os.environ["BOUNDFINDER_TRITON"] = "1"

tk = gpu.load()
from boundfinder import triton_scales as ts
launches = []  # (kernel, ADD or CHANNELS) of every launch
class Recording:
    def __init__(self, kern, name):
        self.kern, self.name = kern, name
    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            launches.append((self.name, kwargs.get("ADD", kwargs.get("CHANNELS"))))
            return self.kern[grid](*args, **kwargs)
        return launch
for module, names in ((tk, ("_round_float", "_round_fixed", "_round_block")),
                      (ts, ("_affine", "_affine_table", "_abs_sums", "_binary", "_exponent_hist", "_round_dynamic"))):
    for name in names:
        setattr(module, name, Recording(getattr(module, name), name))

SPECIAL = {
    "e4m3_nosub": FloatFormat(exp_bits=4, man_bits=3, subnormals=False),
    "e8m3_sat": FloatFormat(exp_bits=8, man_bits=3, overflow="saturate"),
    # a large smallest normal without subnormals: K below it would pass float32's largest exponent
    "e2m18_bias-119_nosub": FloatFormat(exp_bits=2, man_bits=18, bias=-119, subnormals=False),
}

def check(formats):
    bad, adder = [], {}
    for name in formats:
        fmt = SPECIAL.get(name, name)
        for mode in ("nearest", "truncate", "up", "down", "stochastic"):
            ref = reference(fmt, mode)
            del launches[:]
            torch.manual_seed(5)
            got = quantize(x, fmt, mode)
            if mode == "nearest" and launches:
                adder[name] = launches[0][1]
            torch.manual_seed(5)
            rounder = make_rounder(fmt, mode)
            by_rounder = rounder(x)
            torch.manual_seed(5)
            in_place = x.clone()
            rounder.in_place(in_place)
            for what, t in (("quantize", got), ("rounder", by_rounder), ("in_place", in_place)):
                if not torch.equal(word(ref), word(t)):
                    bad.append([str(fmt), mode, what, int((word(ref) != word(t)).sum())])
            if len(launches) != 3:
                bad.append([str(fmt), mode, "launches", len(launches)])
    return {"bad": bad, "adder": adder}

def paths(t, fmt, mode):
    """quantize's result on the torch path, and on the Triton path with its launches recorded afresh."""
    os.environ["BOUNDFINDER_TRITON"] = "0"
    try:
        torch.manual_seed(5)
        ref = quantize(t, fmt, mode)
    finally:
        os.environ["BOUNDFINDER_TRITON"] = "1"
    del launches[:]
    torch.manual_seed(5)
    return ref, quantize(t, fmt, mode)

def dtypes(formats):
    """bfloat16 and float16 tensors, and dense non-contiguous layouts: one launch in the tensor's own dtype and
    layout, equal to the torch path (which rounds through float32 and casts back)."""
    bad = []
    four = x[: 16 * 9 * 8 * 4].view(16, 9, 8, 4)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        tensors = {"flat": x.to(dtype), "channels_last": four.to(dtype).to(memory_format=torch.channels_last),
                   "transposed": x[:4096].view(64, 64).to(dtype).t()}
        for name in formats:
            fmt = SPECIAL.get(name, name)
            for mode in ("nearest", "truncate", "up", "down", "stochastic"):
                for layout, t in tensors.items():
                    if dtype is torch.float32 and layout == "flat":
                        continue  # (check() covers it)
                    ref, got = paths(t, fmt, mode)
                    torch.manual_seed(5)
                    in_place = t.clone()
                    make_rounder(fmt, mode).in_place(in_place)
                    # one launch each (stochastic rounding of a non-contiguous tensor: on its contiguous float32
                    # copy, as the random stream follows the logical order)
                    want = 2
                    for what, r in (("quantize", got), ("in_place", in_place)):
                        if r.dtype != dtype or r.stride() != t.stride():
                            bad.append([str(fmt), mode, str(dtype), layout, what, "dtype/strides"])
                        elif not torch.equal(word(ref.float()), word(r.float())):
                            bad.append([str(fmt), mode, str(dtype), layout, what,
                                        int((word(ref.float()) != word(r.float())).sum())])
                    if len(launches) != want:
                        bad.append([str(fmt), mode, str(dtype), layout, "launches", len(launches)])
    return {"bad": bad, "conversions": conversions()}

def conversions():
    """The kernels' loads and stores convert as torch's .to(dtype) does: random float32 words and bfloat16 ties to
    bfloat16 and float16 (to nearest, ties to even, overflow to infinity), and every 16-bit word to float32."""
    @triton.jit
    def convert(x_ptr, out_ptr, n, IN: tl.constexpr, OUT: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tk._store_words(out_ptr, offs, offs < n, tk._load_words(x_ptr, offs, offs < n, IN, False), OUT, False)

    words = torch.cat([torch.randint(-(2**31), 2**31 - 1, (1 << 16,), generator=g, dtype=torch.int32),
                       torch.randint(-(2**15), 2**15, (1 << 14,), generator=g, dtype=torch.int32) << 16 | 0x8000,
                       torch.arange(-(2**15), 2**15, dtype=torch.int32)])  # bf16 ties, every 16-bit word
    # (the stores take NaN words with a zero low half, as the kernels' NaN results are: see _store_words)
    words = torch.where(words.view(torch.float32).isnan(), words & -65536, words)
    f32 = words.view(torch.float32)
    wrong = {}
    for name, dtype, io in (("bf16", torch.bfloat16, 1), ("fp16", torch.float16, 2)):
        out = torch.empty(f32.numel(), dtype=dtype)
        convert[(triton.cdiv(f32.numel(), 1024),)](words, out.view(torch.int16) if io == 1 else out, f32.numel(),
                                                   IN=0, OUT=io, BLOCK=1024)
        wrong[f"fp32->{name}"] = int((word(out.float()) != word(f32.to(dtype).float())).sum())
        h = words[-(2**16):].to(torch.int16)
        back = torch.empty(h.numel(), dtype=torch.int32)
        convert[(64,)](h if io == 1 else h.view(torch.float16), back, h.numel(), IN=io, OUT=0, BLOCK=1024)
        wrong[f"{name}->fp32"] = int((word(back.view(torch.float32)) != word(h.view(dtype).float())).sum())
    return wrong

BLOCKS = {
    "mxfp8_e4m3": "mxfp8_e4m3", "mxfp4_e2m1": "mxfp4_e2m1", "mxint8": "mxint8", "mxfp6_e3m2_k16": "mxfp6_e3m2_k16",
    # elements whose largest exponent is negative: a block of float32 subnormals gets an unclamped scale
    "mx_fixed8.8": BlockFormat(element=FixedPointFormat(word_bits=8, frac_bits=8)),
    "mx_e3m4_b9_k8": BlockFormat(element=FloatFormat(exp_bits=3, man_bits=4, bias=9), block_size=8),
    "mx_ufixed12.3_k4": BlockFormat(element=FixedPointFormat(word_bits=12, frac_bits=3, signed=False), block_size=4),
    # float32 subnormals in a block at float32's top keep their value (k = 0) for an element that reaches them
    "mx_e8m3": "mx_e8m3",
    # blocks along the first axis: the torch path
    "mxfp8_e4m3_ax0": "mxfp8_e4m3_ax0",
}

# blocks holding zeros, -0 and values far under the element's smallest value (float32 subnormals among them)
# beside normal values, with block factors 2**k above 1 and below it
_z = normal[:2048].clone()
_z[::3], _z[1::5], _z[2::7], _z[3::11], _z[4::13] = 0.0, -0.0, 1e-41, -3e-39, _z[4::13] * 2.0**-30
sparse = torch.cat([_z, _z * 2.0**-110, _z * 2.0**100])


def blocks():
    """MX block formats: one launch (blocks along the last axis, padded where the block size does not divide
    it; whole programs, a partial last program, padded rows), equal to the torch path."""
    bad = []
    cases = [(x, shape) for shape in ((x.numel() // 4096 * 4096,), (5, 64), (48, 449), (7, 13), ())]
    cases += [(sparse, shape) for shape in ((sparse.numel(),), (12, 511))]
    for name, fmt in BLOCKS.items():
        for mode in ("nearest", "truncate", "up", "down", "stochastic"):
            for data, shape in cases:
                n = math.prod(shape)
                t32 = data[:n].reshape(shape) if shape else data[40]
                for dtype in (torch.float32, torch.bfloat16, torch.float16):
                    if dtype is torch.float16 and name != "mxfp8_e4m3":
                        continue
                    t = t32.to(dtype)
                    ref, got = paths(t, fmt, mode)
                    want = 0 if name.endswith("_ax0") and len(shape) > 1 else 1
                    same = got.shape == t.shape and torch.equal(word(ref.float()), word(got.float()))
                    if got.dtype != dtype or not same:
                        bad.append([name, mode, list(shape), str(dtype), "words"])
                    if len(launches) != want:
                        bad.append([name, mode, list(shape), str(dtype), "launches", len(launches)])
    return {"bad": bad}

def integration():
    out = {}
    # a lazily negated view: the rounder must round its values, not its storage
    neg = torch._neg_view(x[:1000].clone())
    del launches[:]
    out["neg_view"] = torch.equal(word(make_rounder("fixed8.4")(neg)), word(quantize(-x[:1000], "fixed8.4")))
    out["neg_view_launches"] = len(launches)
    # tensors the kernels cannot take as they are (gaps; stochastic rounding of a transpose; a negated view): one
    # launch on a contiguous float32 copy, with the torch path's results
    grid = x[:4096].view(64, 64)
    for name, t, mode in (("gaps", grid[:, ::2], "nearest"), ("gaps_bf16", grid.bfloat16()[:, ::2], "up"),
                          ("transposed_stochastic", grid.t(), "stochastic")):
        ref, got = paths(t, "e4m3fn", mode)
        out[name] = [len(launches), torch.equal(word(ref.float()), word(got.float())), got.stride() == ref.stride()]
    # MX blocks along the last axis of a channels_last tensor (not contiguous along it): the block kernel on the copy
    t = x[: 4 * 8 * 8 * 32].view(4, 8, 8, 32).contiguous(memory_format=torch.channels_last)
    ref, got = paths(t, "mxfp8_e4m3", "nearest")
    out["blocks_channels_last"] = [len(launches), torch.equal(word(ref), word(got)), got.stride() == ref.stride()]

    # in place: the version counter moves (autograd sees the change)
    t = x[:1000].clone()
    before = t._version
    make_rounder("e4m3fn").in_place(t)
    out["version_bumped"] = t._version > before
    # in place on a leaf that requires grad, with grad mode on: torch's own error, as on the base path
    leaf = torch.randn(100, requires_grad=True)
    try:
        make_rounder("fixed8.4").in_place(leaf)
        out["leaf_refused"] = False
    except RuntimeError as exc:
        out["leaf_refused"] = "requires grad" in str(exc)
    # a stochastic rounder whose kernel fails gives the base path's bits for that call and the later ones
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    ok_rounder = make_rounder("e4m3fn", "stochastic", gen_a)
    os.environ["BOUNDFINDER_TRITON"] = "0"
    expected = [ok_rounder(x[:1000]) for _ in range(2)]
    os.environ["BOUNDFINDER_TRITON"] = "1"
    records = []
    logging.getLogger("boundfinder").addHandler(
        type("H", (logging.Handler,), {"emit": lambda s, r: records.append(r.getMessage())})())
    def broken(*args, **kwargs):
        raise RuntimeError("no ptxas")
    tk._launch = broken
    failing = make_rounder("e4m3fn", "stochastic", gen_b)
    got = [failing(x[:1000]) for _ in range(2)]
    out["fallback_stream"] = all(torch.equal(word(a), word(b)) for a, b in zip(expected, got))
    out["fallback_off"] = gpu.load() is None
    out["fallback_quantize"] = torch.equal(word(quantize(x, "e4m3fn")), word(reference("e4m3fn", "nearest")))
    out["messages"] = records
    return out

# formats whose scale is a reduction: (format, the launches of one call)
SCALES = {"int8": ["_affine"], "uint8": ["_affine"], "int8_sym": ["_affine"], "uint4_sym": ["_affine"],
          "int8_ch0": ["_affine_table", "_affine"], "uint8_ch1": ["_affine_table", "_affine"],
          "int4_sym_chm1": ["_affine_table", "_affine"], "binary": ["_binary"], "binary_ch1": ["_binary"],
          "binary_mean": ["_abs_sums", "_binary"], "binary_mean_ch0": [],
          "dfixed8": ["_exponent_hist", "_round_dynamic"], "dfixed4_r0.1": ["_exponent_hist", "_round_dynamic"],
          "dfixed16_r0": ["_exponent_hist", "_round_dynamic"]}

def scales():
    """Integer affine, binary and dynamic fixed point: the reduction and one rounding launch, equal to the torch
    path. Programs of 256 elements, so that several programs (and the histogram's loop over blocks) run."""
    tk.BLOCK = 256
    bad, variants = [], set()
    n = 2 * 3 * 5 * 64
    base = torch.cat([normal[: n // 2], normal[: n // 4] * 1e-3, normal[: n // 4] * 2**-130])
    base[:7] = torch.tensor([0.0, -0.0, 1e-45, -1e-40, 3e38, -3e38, 1.5])
    t3 = base.view(6, 5, 64).clone()
    t3[1, 2, 3], t3[2, 0, 0], t3[3, 1, :] = float("inf"), float("nan"), 0.25  # an inf and a NaN channel, a flat row
    t3[4, 3, :] = 0.0
    ranged = (base.view(6, 5, 64).clamp(-100, 100) * 0.01).clone()  # (no value near float32's top)
    inputs = {"flat": base, "odd": base[: n - 3], "one": base[8:9].reshape(()), "ranged": ranged, "t3": t3,
              "words": x[:1000], "subnormal": ranged * 2**-130, "rows512": base[:1536].view(3, 512),
              "bf16": ranged.bfloat16(), "fp16": ranged.half(),
              "channels_last": ranged.view(2, 3, 5, 64).contiguous(memory_format=torch.channels_last)}
    for name, want in SCALES.items():
        modes = ("nearest", "stochastic") if name.startswith("binary") else ("nearest", "truncate", "up", "down",
                                                                             "stochastic")
        for mode in modes:
            for label, t in inputs.items():
                errors = []  # a tensor without the channel axis: both paths refuse it, with the same message
                for flag in ("0", "1"):
                    os.environ["BOUNDFINDER_TRITON"] = flag
                    try:
                        quantize(t, name, mode)
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                os.environ["BOUNDFINDER_TRITON"] = "1"
                if errors:
                    if len(errors) != 2 or errors[0] != errors[1] or "FormatError" not in errors[0]:
                        bad.append([name, mode, label, "errors", errors])
                    continue
                ref, got = paths(t, name, mode)
                if got.dtype != t.dtype or got.stride() != ref.stride() or not torch.equal(word(ref.float()),
                                                                                          word(got.float())):
                    bad.append([name, mode, label, "words"])
                if [k for k, _ in launches] != want:
                    bad.append([name, mode, label, "launches", [k for k, _ in launches]])
                variants |= {v for k, v in launches if k == "_affine"}
    # the histogram itself (the rule cannot see how float32 subnormals are binned: their fraction lengths clamp)
    from boundfinder import kernels
    w = torch.cat([x, ranged.flatten() * 2**-130])
    for t in (w, w.bfloat16()):
        partial = torch.empty(8, 512, dtype=torch.int32)
        ts._exponent_hist[(8,)](t.view(torch.int32 if t.dtype is torch.float32 else torch.int16), partial, t.numel(),
                                triton.cdiv(t.numel(), 256), IO=0 if t.dtype is torch.float32 else 1, BLOCK=256,
                                NB=512, WIDE=False)
        want = kernels.exponent_histogram(kernels.exponent_bins(t.float().view(torch.int32)))
        if not torch.equal(partial.sum(0)[: kernels.N_BINS].long(), want) or want[:23].sum() == 0:
            bad.append(["histogram", str(t.dtype)])
    # the results' NaN computed on an NVIDIA GPU is the word 0x7FFFFFFF (the interpreter computes x86's NaNs, so
    # the kernels cannot produce it here): stored in bfloat16 as a NaN, not carried into -0.0 or infinity
    @triton.jit
    def store(r_ptr, out_ptr, n, IO: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        r = tl.load(r_ptr + offs, mask=offs < n).to(tl.float32, bitcast=True)
        ts._store_values(out_ptr, offs, offs < n, r, IO, False)

    r = torch.tensor([0x7FFFFFFF, -1, 0x7F808000, 0x7F800000, 0x3F808000, 0x3F818000, 0, 0x7FC00000, 0x00008000],
                     dtype=torch.int32)
    for dtype, io in ((torch.bfloat16, 1), (torch.float16, 2), (torch.float32, 0)):
        out = torch.empty(r.numel(), dtype=dtype)
        store[(1,)](r, ts._view(out), r.numel(), IO=io, BLOCK=16)
        if not torch.equal(word(out.float()), word(r.view(torch.float32).to(dtype).float())):
            bad.append(["nan_store", str(dtype), out.float().tolist()])
    return {"bad": bad, "affine_variants": sorted(variants)}

arg = sys.argv[1]
TASKS = {"integration": integration, "blocks": blocks, "scales": scales}
print(json.dumps(TASKS[arg]() if arg in TASKS else dtypes(arg[7:].split(",")) if arg.startswith("dtypes:")
                 else check(arg.split(","))))
'''

FORMATS = {
    "float": "e4m3fn,e5m2,bf16,fp16,e3m2fn,e2m3fn,e2m1fn,e8m0,e6m3,e8m22,e4m3_nosub,e8m3_sat",
    # the edges of the adder's range (23 and 0 fraction bits, a large smallest normal): the integer path rounds
    "float_edges": "e5m23,e7m23,e3m0,e5m0,e2m18_bias-119_nosub,e8m1",
    "fixed": "fixed16.8,fixed8.4,ufixed8.8,fixed24.0,fixed24.24,ufixed24.3,fixed2.1",
}
# which formats' round to nearest runs the float adder (the others: the integer formulation)
ADDER = {"e4m3fn": True, "fp16": True, "e3m2fn": True, "e4m3_nosub": True, "e8m3_sat": False, "bf16": False,
         "e5m23": False, "e7m23": False, "e3m0": False, "e5m0": False, "e2m18_bias-119_nosub": False}


def _child(arg: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _CHILD, arg], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", sorted(FORMATS))
def test_triton_kernels_match_the_reference(family):
    result = _child(FORMATS[family])
    assert result["bad"] == []  # every format, mode and entry point: equal words, one launch each
    expected = {name: add for name, add in ADDER.items() if name in FORMATS[family].split(",")}
    assert {name: result["adder"][name] for name in expected} == expected


def test_triton_kernels_take_16_bit_tensors_and_dense_layouts():
    result = _child("dtypes:e4m3fn,bf16,fp16,e8m22,e2m1fn,e4m3_nosub,fixed16.8,fixed24.24,ufixed8.8")
    assert result["bad"] == []  # bf16 / fp16 / float32 in three layouts: the torch path's words and strides
    assert result["conversions"] == {"fp32->bf16": 0, "bf16->fp32": 0, "fp32->fp16": 0, "fp16->fp32": 0}


def test_triton_block_kernel_matches_the_reference():
    assert _child("blocks")["bad"] == []  # MX formats, all modes, padded rows, 16-bit inputs: one launch each


def test_triton_reduction_formats_match_the_reference():
    # integer affine (per tensor, per channel along axes 0, 1, -1), binary, dynamic fixed point: all modes, 16-bit
    # inputs, a channels_last tensor, channels holding inf, NaN or one value, float32's extremes
    result = _child("scales")
    assert result["bad"] == []
    assert result["affine_variants"] == [0, 1, 2]  # per tensor; per channel by element, and by row


def test_triton_path_integration():
    result = _child("integration")
    assert result["neg_view"] and result["neg_view_launches"] == 2  # (the view and the reference: Triton both)
    for name in ("gaps", "gaps_bf16", "transposed_stochastic", "blocks_channels_last"):
        assert result[name] == [1, True, True], name
    assert result["version_bumped"]
    assert result["leaf_refused"]
    assert result["fallback_stream"]
    assert result["fallback_off"] and result["fallback_quantize"]
    assert sum("Triton rounding kernel failed" in m and "no ptxas" in m for m in result["messages"]) == 1
