"""The native rounding extension (boundfinder/native.py, csrc/round.cpp) and the layer level's use of it.

Its roundings equal ml_dtypes / gfloat (and quantize) bit for bit; a layer-level training run through it (fused
nn.Linear nodes, native boundary nodes and hooks) equals the Python path bit for bit; it is removed without a
trace, and where it cannot be built the Python path runs and a log line says so.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from boundfinder import FloatFormat, native, parse_format, quantize
from boundfinder.emulation import emulate, layer
from tests.bits import bits_equal, mismatches
from tests.oracles import ML_DTYPES, corner_inputs, gfloat_round

ext = native.load()
needs_ext = pytest.mark.skipif(ext is None, reason="the native extension could not be built here")

# e8m{M}: the word kind; fp16: the hardware conversion (F16C) where the CPU has it; the rest: the float kind.
GENERIC = [(2, 1), (3, 2), (4, 3), (5, 2), (5, 7), (6, 3), (7, 9), (4, 12), (8, 3), (8, 10), (8, 1)]


def _check(fmt: FloatFormat, rounding: str, want: np.ndarray, x: np.ndarray) -> None:
    spec = native.spec(fmt, rounding)
    assert spec is not None, (fmt, rounding)
    got = ext.round(torch.from_numpy(x), spec)
    assert bits_equal(got, want), mismatches(got, want, x)
    assert bits_equal(got, quantize(torch.from_numpy(x), fmt, rounding)), fmt
    # an odd length (the vector loops' tails) and a non-contiguous view give the same values
    odd = torch.from_numpy(x[: len(x) // 8 * 8 - 3].copy())
    assert bits_equal(ext.round(odd, spec), want[: len(odd)])
    strided = torch.from_numpy(x).reshape(-1)[: len(x) // 2 * 2].view(-1, 2).t()
    assert bits_equal(ext.round(strided, spec), want[: len(x) // 2 * 2].reshape(-1, 2).T)


@needs_ext
@pytest.mark.parametrize("name", sorted(ML_DTYPES))
def test_named_formats_match_ml_dtypes(name):
    fmt = parse_format(name)
    x = corner_inputs(fmt)
    if fmt.encoding == "finite":  # ml_dtypes has no NaN there and returns an arbitrary code (quantize: NaN)
        x = x[~np.isnan(x)]
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(ML_DTYPES[name]).astype(np.float32)
    _check(fmt, "nearest", want, x)


@needs_ext
@pytest.mark.parametrize(("exp_bits", "man_bits"), GENERIC)
@pytest.mark.parametrize("overflow", ["default", "saturate"])
def test_generic_formats_match_gfloat(exp_bits, man_bits, overflow):
    fmt = FloatFormat(exp_bits=exp_bits, man_bits=man_bits,
                      **({} if overflow == "default" else {"overflow": "saturate"}))
    x = corner_inputs(fmt)
    for rounding in ("nearest", "truncate"):
        if native.spec(fmt, rounding) is not None:
            _check(fmt, rounding, gfloat_round(x, fmt, rounding), x)


@needs_ext
def test_e8_truncation_is_the_bitmask_and():
    g = torch.Generator().manual_seed(0)
    words = torch.randint(-(2**31), 2**31 - 1, (1 << 14,), generator=g, dtype=torch.int64).to(torch.int32)
    x = words.view(torch.float32)
    got = ext.round(x, native.spec(parse_format("e8m7"), "truncate"))
    finite = torch.isfinite(x)  # (NaN inputs come back with their quiet bit set)
    assert torch.equal(got.view(torch.int32)[finite], (words & ~0xFFFF)[finite])
    assert torch.isnan(got[torch.isnan(x)]).all()


def test_spec_covers_only_what_the_kernels_round_exactly():
    assert native.spec(parse_format("e4m3fn"), "stochastic") is None
    assert native.spec(parse_format("e4m3fn"), "truncate") is None  # (the float kind rounds to nearest only)
    assert native.spec(parse_format("fixed16.8"), "nearest") is None
    assert native.spec(parse_format("int8"), "nearest") is None
    assert native.spec(FloatFormat(exp_bits=4, man_bits=3, subnormals=False), "nearest") is None
    assert native.spec(FloatFormat(exp_bits=4, man_bits=0), "nearest") is None  # q could be infinite
    assert native.spec(parse_format("fp32"), "nearest") is None
    assert native.spec(parse_format("e8m3"), "truncate") is not None


@needs_ext
def test_straight_through_op_rounds_forward_and_gradient():
    s16, s8 = native.spec(parse_format("fp16"), "nearest"), native.spec(parse_format("e4m3fn"), "nearest")
    x = torch.randn(1000, requires_grad=True)
    g = torch.randn(1000)
    y = ext.round_ste(x, s16, s8)
    assert bits_equal(y.detach(), quantize(x.detach(), "fp16"))
    y.backward(g)
    assert bits_equal(x.grad, quantize(g, "e4m3fn"))
    # empty parameters: a copy forward (never the input itself), the gradient passed through
    x.grad = None
    y = ext.round_ste(x, [], [])
    assert y is not x and torch.equal(y, x)
    y.backward(g)
    assert torch.equal(x.grad, g)
    # a gradient already on the grid comes back as the same tensor, without a copy
    on = quantize(g, "e4m3fn")
    assert ext.round_grad(on, s8) is on
    assert ext.round_grad(g, s8) is not g


@needs_ext
@pytest.mark.parametrize("name", ["e4m3fn", "fp16", "bf16"])
def test_large_tensors_split_over_threads_round_the_same(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(3)
        x = torch.randn(5 * (1 << 16) + 7, generator=g) * 100  # several parallel chunks and a ragged end
        spec = native.spec(parse_format(name), "nearest")
        want = quantize(x, name)
        assert bits_equal(ext.round(x, spec), want)
        y = x.clone()
        version = y._version
        ext.round_(y, spec)
        assert bits_equal(y, want)
        assert y._version > version  # an in-place change autograd and the rounding marks can see
        # the on-grid check looks at every chunk: one value off the grid at the very end is found
        assert ext.round_grad(want, spec) is want
        off = want.clone()
        off[-1] = 1.0 + 2.0**-20
        assert ext.round_grad(off, spec) is not off
    finally:
        torch.set_num_threads(threads)


@needs_ext
def test_wrong_tensors_are_refused_with_a_message():
    spec = native.spec(parse_format("fp16"), "nearest")
    with pytest.raises(RuntimeError, match="float32 CPU tensor"):
        ext.round(torch.zeros(3, dtype=torch.float64), spec)
    with pytest.raises(RuntimeError, match="7 parameters"):
        ext.round(torch.zeros(3), [1.0, 2.0])


# -- the layer level through the extension equals its Python path, bit for bit ---------------------------------


class _Mixed(nn.Module):
    """Linear layers on 2-D and 3-D inputs (the fused node, and the hooks' path inside the same forward), one
    without a bias, a convolution and a pooling (native boundary nodes and hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.seq = nn.Linear(4, 8)
        self.fc = nn.Linear(128, 16, bias=False)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        h = self.pool(F.relu(self.conv(x)))  # (B, 4, 4, 4)
        h = self.seq(h.flatten(2).transpose(1, 2))  # a 3-D input: (B, 16, 8)
        return self.out(F.relu(self.fc(h.flatten(1))))


class _Convs(nn.Module):
    """Convolutions the fused node takes (stride, dilation, groups, no bias; Conv1d, Conv2d, Conv3d), two it does
    not (reflect padding, ``padding="same"``) and an unbatched input (the hooks' path inside the fused forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.strided = nn.Conv2d(1, 4, 3, stride=2, padding=2, dilation=2)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.same = nn.Conv2d(4, 4, 3, padding="same")
        self.c1 = nn.Conv1d(4, 6, 3, padding=1)
        self.c3 = nn.Conv3d(1, 2, 3, padding=1)
        self.out = nn.Linear(6 * 16 + 2 * 64, 10)

    def forward(self, x):
        h = F.relu(self.strided(x))  # (B, 4, 4, 4)
        h = self.same(self.reflect(self.grouped(h)))
        a = self.c1(h.flatten(2))  # (B, 6, 16)
        b = self.c3(h.unsqueeze(1))  # (B, 2, 4, 4, 4)
        unbatched = self.grouped(h[0])  # (4, 4, 4)
        return self.out(torch.cat([a.flatten(1), b.flatten(1)], 1)) + unbatched.mean()


class _ChannelsLast(nn.Module):
    """Convolutions on channels_last activations and weights (wide enough for oneDNN to pick its layout-specific
    algorithms): every rounded copy keeps the layout, as the Python rounders do."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.out = nn.Linear(64 * 16, 10)

    def forward(self, x):
        h = self.features(x.contiguous(memory_format=torch.channels_last))
        return self.out(h.flatten(1))


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.twice = nn.Linear(16, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        return self.out(self.twice(F.relu(self.twice(F.relu(self.inp(x.flatten(1)))))))


MODELS = {
    "mlp": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
    "lenet": lambda: nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)),
    "mixed": _Mixed,
    "convs": _Convs,
    "channels-last": lambda: _ChannelsLast().to(memory_format=torch.channels_last),
    # one Linear used twice in a forward: its weight gradient is the sum over both uses, rounded once per pass
    "shared": lambda: _Shared(),
}
POLICIES = {
    "e5m10": "e5m10",
    "e4m3fn": "e4m3fn",
    "bf16": "bf16",
    "e8m3-truncate": ("e8m3", "truncate"),
    # per role, some roles not rounded
    "roles": {"*": {"weight": "e4m3fn", "bias": "e5m10", "activation": "e5m2", "grad_output": "e4m3fn",
                    "weight_grad": "bf16"}},
    # a weight gradient format without a weight format: .grad rounded after each accumulation
    "grad-only": {"*": {"weight_grad": "bf16", "activation": "e4m3fn"}},
    # a weight format the extension cannot round: Linear layers take the hooks' path, the boundaries are native
    "fixed-weight": {"*": {"weight": "fixed16.8", "activation": "e4m3fn", "grad_input": "e5m10"}},
}


@contextlib.contextmanager
def _path(monkeypatch, *, python: bool):
    """Emulations built inside take the Python path (no extension, no fused layers) when ``python``."""
    with monkeypatch.context() as m:
        if python:
            m.setattr(native, "load", lambda: None)
            m.setattr(layer, "FUSE", False)
        yield


def _run(make, policy, data, *, python: bool, monkeypatch, steps: int = 3):
    """Train a few steps (SGD with momentum, two backward passes per step: gradient accumulation), then
    evaluate; returns the parameters, the last gradients, the logits in eval mode and the emulation."""
    with _path(monkeypatch, python=python):
        torch.manual_seed(0)
        model = make()
        spec, rounding = policy if isinstance(policy, tuple) else (policy, "nearest")
        em = emulate(model, spec, level="layer", rounding=rounding)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = data
    for _ in range(steps):
        opt.zero_grad()
        for half in (slice(0, 8), slice(8, 16)):
            F.cross_entropy(model(x[half]), y[half]).backward()
        opt.step()
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        logits = model.eval()(x)
    return [p.detach().clone() for p in model.parameters()], grads, logits, em, model


@needs_ext
@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_training_through_the_extension_equals_the_python_path(model, policy, batch, monkeypatch):
    fast = _run(MODELS[model], POLICIES[policy], batch, python=False, monkeypatch=monkeypatch)
    slow = _run(MODELS[model], POLICIES[policy], batch, python=True, monkeypatch=monkeypatch)
    for a, b in zip(fast[0] + fast[1] + [fast[2]], slow[0] + slow[1] + [slow[2]], strict=True):
        assert bits_equal(a, b)
    fused = [m for m in fast[4].modules() if "forward" in m.__dict__]
    assert bool(fused) == (policy != "fixed-weight")  # the fused node was used, where it applies
    assert not any("forward" in m.__dict__ for m in slow[4].modules())


def _penalty_step(make, policy, data, *, python: bool, monkeypatch):
    """One step of a loss with a gradient penalty (``create_graph=True``): the gradient with respect to the
    input must stay differentiable, the rounding of gradients counting as the identity in the double backward."""
    with _path(monkeypatch, python=python):
        torch.manual_seed(0)
        model = make()
        emulate(model, policy, level="layer")
    x, y = data
    x = x.clone().requires_grad_()
    loss = F.cross_entropy(model(x), y)
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    (loss + 10.0 * gx.pow(2).sum()).backward()
    return gx.requires_grad, [p.grad for p in model.parameters()]


@needs_ext
@pytest.mark.parametrize("policy", ["e5m10", "e4m3fn", "bf16"])
@pytest.mark.parametrize("model", ["mlp", "lenet", "convs"])
def test_a_gradient_penalty_through_the_extension_equals_the_python_path(model, policy, batch, monkeypatch):
    fast = _penalty_step(MODELS[model], policy, batch, python=False, monkeypatch=monkeypatch)
    slow = _penalty_step(MODELS[model], policy, batch, python=True, monkeypatch=monkeypatch)
    assert fast[0] and slow[0]
    for a, b in zip(fast[1], slow[1], strict=True):
        assert bits_equal(a, b)


@needs_ext
def test_a_retained_graph_run_again_does_not_hide_a_newer_ones_use(monkeypatch):
    # the rounded parameters are cached until their graph's backward ran; running an older graph's backward
    # again must not make the cache take the newer, consumed graph for a live one
    results = []
    for python in (False, True):
        with _path(monkeypatch, python=python):
            torch.manual_seed(0)
            lin = nn.Linear(16, 4)
            em = emulate(lin, "e4m3fn", level="layer")
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
        first = lin(x).sum()
        first.backward(retain_graph=True)
        (lin(x) * 2).sum().backward(retain_graph=True)
        first.backward(retain_graph=True)
        (lin(x) * 3).sum().backward()
        (group,) = em._layer._groups.values()
        results.append((lin.weight.grad, lin.bias.grad, group.generation))
    assert bits_equal(results[0][0], results[1][0]) and bits_equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2] == 3  # three graphs built: the third forward did not reuse the second's


@needs_ext
def test_only_exact_zero_padded_convolutions_are_fused():
    model = _Convs()
    emulate(model, "e4m3fn", level="layer")
    fused = {name for name, m in model.named_modules() if "forward" in m.__dict__}
    assert fused == {"strided", "grouped", "c1", "c3", "out"}


@needs_ext
def test_fused_relu_masks_its_gradient_with_the_unrounded_result(monkeypatch):
    # 1e-9 > 0 passes its gradient through the ReLU, though its output rounds to 0 in e4m3fn
    x0 = torch.tensor([1e-9, -1.0, 2.0, 3e-8, 0.3, -2e-9])
    policy = {"*": {"activation": "e4m3fn", "grad_output": "e5m10", "grad_input": "bf16"}}
    results = []
    for python in (False, True):
        with _path(monkeypatch, python=python):
            relu = nn.ReLU()
            emulate(relu, policy, level="layer")
        assert ("forward" in relu.__dict__) is not python
        x = x0.clone().requires_grad_()
        y = relu(x)
        (y * torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])).sum().backward()
        results.append((y.detach(), x.grad))
    assert bits_equal(results[0][0], results[1][0]) and bits_equal(results[0][1], results[1][1])
    assert results[0][0][0] == 0 and results[0][1][0] != 0
    inplace = nn.Sequential(nn.ReLU(inplace=True))
    emulate(inplace, "e4m3fn", level="layer")
    assert "forward" not in inplace[0].__dict__  # it changes its input: the hooks' path


# A gradient is rounded in place only where nothing else can see it; each case below keeps a handle on the
# gradient arriving at an emulated layer's node, which must still hold the value it had when it arrived.
_HOLDERS = ["tensor hook", "node post hook"]
_LAYERS = {
    "linear": (lambda: nn.Linear(8, 6), (5, 8)),
    "conv": (lambda: nn.Conv2d(2, 3, 3, padding=1), (4, 2, 5, 5)),
    "boundary": (lambda: nn.Tanh(), (5, 8)),  # the straight-through node of a layer's output
}


@needs_ext
@pytest.mark.parametrize("holder", _HOLDERS)
@pytest.mark.parametrize("kind", sorted(_LAYERS))
def test_a_gradient_someone_else_holds_is_not_rounded_in_place(kind, holder):
    make, shape = _LAYERS[kind]
    torch.manual_seed(0)
    module = make()
    emulate(module, "e4m3fn", level="layer")
    x = torch.randn(*shape, requires_grad=True)
    out = module(x)
    kept = []
    if holder == "tensor hook":
        out.register_hook(lambda g: kept.append((g, g.clone())))
    else:
        out.grad_fn.register_hook(lambda grad_inputs, grad_outputs: kept.append(
            (grad_outputs[0], grad_outputs[0].clone())))
    weights = torch.randn(out.shape)  # an upstream gradient off the e4m3fn grid
    (out * weights).sum().backward()
    held, copy_then = kept[0]
    if holder == "tensor hook":
        assert torch.equal(held, weights)
    assert torch.equal(held, copy_then)
    assert bits_equal(x.grad, quantize(x.grad, "e4m3fn"))  # the layer's gradients were rounded all the same


@needs_ext
def test_fused_linear_is_removed_and_a_deep_copy_uses_its_own_parameters(batch):
    model = MODELS["mlp"]()
    x = batch[0]
    before = model(x)
    em = emulate(model, "e4m3fn", level="layer")
    fc = model[1]
    assert "forward" in fc.__dict__
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(2)
    assert not torch.equal(twin(x), model(x))  # the copy's forward computes with the copy's parameters
    em.remove()
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert torch.equal(model(x), before)


@needs_ext
def test_a_layer_with_hooks_of_its_own_keeps_the_hooks_path(batch, monkeypatch):
    # a forward hook registered before emulation changes the output, which the emulation then rounds
    x = batch[0].flatten(1)
    outs = []
    for python in (False, True):
        with _path(monkeypatch, python=python):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
            model[0].register_forward_hook(lambda mod, args, out: out * 1.001)
            emulate(model, "e4m3fn", level="layer")
        assert "forward" not in model[0].__dict__
        assert ("forward" in model[2].__dict__) is not python  # the layers without hooks are fused
        outs.append(model(x))
    assert bits_equal(outs[0].detach(), outs[1].detach())


@needs_ext
def test_a_batched_gradient_is_refused_with_what_to_do():
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh())
    emulate(model, "bf16", level="layer")
    x = torch.randn(3, 6, requires_grad=True)
    out = model(x)
    with pytest.raises(RuntimeError, match="BOUNDFINDER_NATIVE=0"):
        torch.autograd.grad(out, x, torch.eye(12).view(12, 3, 4), is_grads_batched=True)


@needs_ext
def test_pickling_an_emulated_model_is_refused_with_a_message(batch, tmp_path):
    # (only fused layers: a layer with hooks fails too, on its hooks, as it always has)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x = batch[0].flatten(1)
    em = emulate(model, "e4m3fn", level="layer")
    with pytest.raises(TypeError, match="state_dict"):
        torch.save(model, tmp_path / "model.pt")
    em.remove()
    torch.save(model, tmp_path / "model.pt")  # without the emulation, as before it
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert torch.equal(loaded(x), model(x))


def test_without_the_extension_the_python_path_runs_and_says_so(monkeypatch, caplog, batch):
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setenv("BOUNDFINDER_NATIVE", "0")
    with caplog.at_level(logging.INFO, logger="boundfinder"):
        assert native.load() is None
        assert native.load() is None
    assert sum("native rounding off" in r.getMessage() for r in caplog.records) == 1
    model = MODELS["mlp"]()
    em = emulate(model, "e4m3fn", level="layer")
    assert not any("forward" in m.__dict__ for m in model.modules())
    model(batch[0]).sum().backward()
    em.remove()


def test_a_failed_build_is_one_warning_and_the_python_path(monkeypatch, caplog):
    import torch.utils.cpp_extension as cpp

    def fail(**kwargs):
        raise RuntimeError("Error building extension 'boundfinder_round': no compiler")

    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.delenv("BOUNDFINDER_NATIVE", raising=False)
    monkeypatch.setattr(cpp, "load", fail)
    with caplog.at_level(logging.WARNING, logger="boundfinder"):
        assert native.load() is None
        assert native.load() is None
    msgs = [r.getMessage() for r in caplog.records if "not built" in r.getMessage()]
    assert len(msgs) == 1 and "no compiler" in msgs[0] and "Python path" in msgs[0]
