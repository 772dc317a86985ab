"""DirectCompiled: a compiled kernel called directly once compiled, and through dynamo whenever the arguments
differ from the compiled graph's in anything dynamo checks; the same results either way."""

from __future__ import annotations

import itertools
import types
from pathlib import Path

import torch

from boundfinder import kernels as K
from boundfinder import quantize
from boundfinder.compiled_call import DirectCompiled

_COPIES = itertools.count()


def _kernel(x, p, s):
    # element-wise, plus an exact reduction over rows: a graph run on the wrong number of rows gives other values
    return torch.where(x > p[0], x * s, x - p[1]) + x.amax(dim=0, keepdim=True)


def _counting(fn):
    """A DirectCompiled of a fresh copy of ``fn`` (dynamo caches graphs per code object) and a list that grows by
    one per call through dynamo's wrapper."""
    name = f"{fn.__name__}_{next(_COPIES)}"
    fn = types.FunctionType(fn.__code__.replace(co_name=name, co_qualname=name), fn.__globals__, name)
    dc = DirectCompiled(fn)
    calls = []
    inner = dc._compiled

    def through_dynamo(*args):
        calls.append(1)
        return inner(*args)

    dc._compiled = through_dynamo
    return dc, calls


def test_calls_after_the_first_skip_dynamo_and_agree_with_eager():
    dc, calls = _counting(_kernel)
    p, s = torch.tensor([0.5, 2.0]), torch.tensor(3.0)
    for n in (4096, 5000, 4096, 77, 9):  # sizes that vary: one symbolic graph
        x = torch.randn(3, n)
        assert torch.equal(dc(x, p, s), _kernel(x, p, s))
    assert len(calls) == 1


def test_specialised_sizes_are_not_reused_for_other_sizes():
    """dynamo compiles a size-1 dimension as the constant 1; a later size-3 call must not run that graph."""
    dc, calls = _counting(_kernel)
    p, s = torch.tensor([0.5, 2.0]), torch.tensor(3.0)
    x1, x3 = torch.randn(1, 4096), torch.randn(3, 4096)
    assert torch.equal(dc(x1, p, s), _kernel(x1, p, s))
    assert torch.equal(dc(x3, p, s), _kernel(x3, p, s))
    assert torch.equal(dc(x1, p, s), _kernel(x1, p, s))
    assert torch.equal(dc(x3, p, s), _kernel(x3, p, s))
    assert len(calls) == 2  # one graph for rows == 1, one for rows >= 2; then both run directly


def test_other_dtypes_layouts_and_global_state_go_through_dynamo():
    dc, calls = _counting(_kernel)
    p, s = torch.tensor([0.5, 2.0]), torch.tensor(3.0)
    x = torch.randn(4, 4096)
    dc(x, p, s)
    cases = [
        (x.t().contiguous().t(), p, s),  # not contiguous
        (x.double(), p.double(), s.double()),  # another dtype
        (x.clone().requires_grad_(), p, s),  # requires grad
        (x, p.view(2, 1), s),  # a parameter tensor with another number of dimensions
    ]
    for args in cases:
        n = len(calls)
        assert dc(x, p, s) is not None and len(calls) == n  # the compiled graph's own arguments: direct
        got = dc(*args)
        assert len(calls) == n + 1
        assert torch.equal(got.detach(), _kernel(*[a.detach() for a in args]))
    n = len(calls)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        assert torch.equal(dc(x, p, s), _kernel(x, p, s))
        assert len(calls) == n + 1
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        assert torch.equal(dc(x, p, s), _kernel(x, p, s))
    assert len(calls) == n + 2
    p3 = torch.tensor([0.5, 2.0, 9.0])  # a size dynamo keeps symbolic (its guard: at least 2): direct, correct
    assert torch.equal(dc(x, p3, s), _kernel(x, p3, s))
    assert len(calls) == n + 2


def test_quantize_runs_its_kernels_directly_with_the_same_bits(monkeypatch):
    """Through quantize, repeated calls of a kernel run its graph directly, with the eager kernel's bits
    (float, stochastic rows of lanes, fixed point, per-channel int)."""
    from boundfinder import compiled_call

    direct = []
    real = compiled_call._Graph.inputs

    def inputs(self, args):
        built = real(self, args)
        if built is not None:
            direct.append(1)
        return built

    monkeypatch.setattr(compiled_call._Graph, "inputs", inputs)
    for name, rounding, shape in [("e4m3fn", "nearest", (8192,)), ("fp16", "stochastic", (64, 128)),
                                  ("fixed8.4", "truncate", (5000,)), ("int8", "nearest", (3, 4096))]:
        x = torch.randn(shape) * 3
        runs = [quantize(x, name, rounding, generator=torch.Generator().manual_seed(5)) for _ in range(3)]
        n = len(direct)
        with monkeypatch.context() as m:
            m.setattr(K, "COMPILE_MIN_NUMEL", 1 << 40)
            eager = quantize(x, name, rounding, generator=torch.Generator().manual_seed(5))
        assert len(direct) == n
        for r in runs:
            assert torch.equal(r.view(torch.int32), eager.view(torch.int32)), name
    assert len(direct) >= 8  # at least the second and third call of each


def test_sizes_dynamo_tied_together_are_checked():
    """Duck shaping: compiled when x's rows equal the parameter tensor's size, dynamo uses one symbol for both;
    a later call with other rows must not run that graph with the parameter's size as x's rows."""
    dc, calls = _counting(_kernel)
    p, s = torch.arange(8.0) / 8, torch.tensor(3.0)
    for rows in (8, 32, 8, 32, 5):
        x = torch.randn(rows, 4096)
        assert torch.equal(dc(x, p, s), _kernel(x, p, s)), rows
    assert len(calls) <= 2


def _stochastic_e4m3fn(x, params, keys):
    return K.round_float(x, params, keys, K.MODE["stochastic"], K.OVERFLOW["nan"], K.GENERAL)


def test_rows_of_lanes_tied_to_the_parameter_sizes_are_checked():
    """The case that broke without shape guards: rows of 16 lanes (x: (rows, 16), keys: (16,)) compiled with
    8 rows, the size of the float parameters (8,), then called with 32 rows."""
    from boundfinder.formats import parse_format

    dc, _ = _counting(_stochastic_e4m3fn)
    params = K.float_params(parse_format("e4m3fn"), torch.device("cpu"))
    keys = K.seed_keys(7)
    for rows in (8, 32, 8, 64, 16):
        x = (torch.randn(rows, K.LANES) * 100).view(torch.int32)
        assert torch.equal(dc(x, params, keys), _stochastic_e4m3fn(x, params, keys)), rows


def test_direct_calls_can_be_switched_off(monkeypatch):
    from boundfinder import compiled_call

    dc, calls = _counting(_kernel)
    p, s = torch.tensor([0.5, 2.0]), torch.tensor(3.0)
    x = torch.randn(4, 4096)
    dc(x, p, s)
    monkeypatch.setattr(compiled_call, "ENABLED", False)
    assert torch.equal(dc(x, p, s), _kernel(x, p, s))
    assert len(calls) == 2


def test_a_compilation_in_another_thread_is_not_taken_for_this_calls_graph():
    """Thread A is inside dynamo's call when thread B compiles another graph: A must keep its own graph (for
    its own arguments), and both then run directly with the right results."""
    import threading

    from boundfinder.formats import parse_format

    dc, _ = _counting(_stochastic_e4m3fn)
    params = K.float_params(parse_format("e4m3fn"), torch.device("cpu"))
    keys = K.seed_keys(7)
    x_flat = (torch.randn(4099) * 100).view(torch.int32)
    x_rows = (torch.randn(256, K.LANES) * 100).view(torch.int32)
    inner = dc._compiled
    injected = []

    def racing(*args):
        out = inner(*args)
        if not injected:
            injected.append(1)
            t = threading.Thread(target=dc, args=(x_rows, params, keys))
            t.start()
            t.join()
        return out

    dc._compiled = racing
    assert torch.equal(dc(x_flat, params, keys), _stochastic_e4m3fn(x_flat, params, keys))
    assert sorted(len(g.layout) and g.layout[0][1] for g in dc._graphs) == [1, 2]
    for x in (x_flat, x_rows):
        assert torch.equal(dc(x, params, keys), _stochastic_e4m3fn(x, params, keys))


def test_negated_views_are_rounded_by_value():
    """A lazily negated view (its storage holds -x) is rounded as the values it shows, compiled or not."""
    z = torch.randn(4096) * 3
    nz = torch._neg_view(z)
    for fmt in ("fixed8.4", "e4m3fn", "int8"):
        assert torch.equal(quantize(nz, fmt), quantize(-z, fmt)), fmt


def test_vmap_runs_the_eager_kernel_and_leaves_compilation_on():
    x = torch.randn(3, 4096)
    y = torch.vmap(lambda row: quantize(row, "fixed8.4"))(x)
    assert torch.equal(y, quantize(x, "fixed8.4"))
    assert "round_fixed" not in K._compile_failed


def _elementwise(x, p):
    return torch.where(x > p[0], x * 3.0, x - p[1])


def test_a_kernel_first_compiled_on_a_few_elements_still_runs_in_parallel():
    # Inductor chooses between an OpenMP region and a plain loop from the example it compiles on; the graph
    # is dynamic, so a kernel first compiled on a bias would otherwise round every later tensor on one thread
    from torch._inductor.codecache import PyCodeCache

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loaded = len(PyCodeCache.modules)
        dc, _ = _counting(_elementwise)
        x, p = torch.randn(16), torch.tensor([0.5, 1.0])
        assert torch.equal(dc(x, p), _elementwise(x, p))
        sources = [Path(m.__file__).read_text() for m in PyCodeCache.modules[loaded:] if getattr(m, "__file__", None)]
        kernels = [s for s in sources if "cpp_fused" in s]
        assert kernels and all("#pragma omp parallel" in s for s in kernels)
        big = torch.randn(1 << 16)
        assert torch.equal(dc(big, p), _elementwise(big, p))  # the same graph serves every size
    finally:
        torch.set_num_threads(threads)


def test_cuda_graphs_compile_with_the_eager_kernels_arithmetic():
    """Inductor's Triton code would divide approximately (div.full.f32) and fuse multiply-adds; a graph on CUDA
    tensors compiles with the settings that keep torch's eager arithmetic (checked bit for bit against the CPU by
    tests/test_gpu.py where a GPU is lent). Every name is one of Inductor's settings: a renamed one raises."""
    from torch._inductor import config
    from torch._inductor.codegen.triton import TritonOverrides
    from torch._subclasses.fake_tensor import FakeTensorMode

    from boundfinder.compiled_call import config_patches

    with FakeTensorMode():
        cuda = torch.empty(4, device="cuda")

    class Var(str):
        dtype = torch.float32

    assert config_patches([torch.empty(4), 3]) == {"cpp.min_chunk_size": 1}
    patches = config_patches([cuda, 3])
    assert patches["emulate_precision_casts"]  # (Inductor compiles Triton with enable_fp_fusion = not this)
    with config.patch(patches):
        assert config.eager_numerics.disable_ftz
        assert TritonOverrides.truediv(Var("a"), Var("b")) == "triton.language.div_rn(a, b)"
    assert TritonOverrides.truediv(Var("a"), Var("b")) == "(a / b)"
