"""Emulation on models as people write them: each test is a defect found in review, reproduced from the user's side
(a model of the kind real code has, the public ``emulate`` API), failing before its fix."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from boundfinder import quantize
from boundfinder.emulation import emulate, layer
from boundfinder.errors import PolicyError
from boundfinder.policy import PrecisionPolicy, layer_modules


def on_grid(t: torch.Tensor, fmt: str) -> bool:
    return torch.equal(quantize(t.detach(), fmt), t.detach())


class CausalBlock(nn.Module):
    """A pre-norm causal self-attention block as people write one: a float -inf mask passed to
    nn.MultiheadAttention (kept by it: the attention weights are returned, so the mask is not replaced by an
    is_causal hint)."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        h = self.norm(x)
        x = x + self.attn(h, h, h, attn_mask=mask)[0]
        return self.head(x + self.mlp(x))


@pytest.mark.parametrize("fmt", ["e4m3fn"])  # no infinity: a rounded -inf becomes NaN
def test_a_causal_mask_is_not_rounded_as_an_input(fmt):
    torch.manual_seed(0)
    model = CausalBlock().eval()
    x = torch.randn(2, 6, 16)
    with torch.no_grad(), emulate(model, fmt, level="layer"):
        out = model(x)
    assert torch.isfinite(out).all()
    assert on_grid(out, fmt)


def test_a_custom_layer_declares_its_data_arguments():
    class Gate(nn.Module):
        boundfinder_inputs = ("x",)  # ``scale`` is a schedule value, not data of the layer's arithmetic

        def forward(self, x, scale):
            return x * scale

    x, scale = torch.randn(4, 5), torch.full((4, 5), 1.0 + 2**-10)
    gate = Gate()
    with torch.no_grad(), emulate(gate, PrecisionPolicy.from_spec("e8m3", roles=("input",))):
        out = gate(x, scale)
    assert torch.equal(out, quantize(x, "e8m3") * scale)

    class Wrong(nn.Module):
        boundfinder_inputs = ("inputs",)

        def forward(self, x):
            return x

    with pytest.raises(PolicyError, match="has no argument 'inputs'"):
        emulate(Wrong(), "e8m3")


def test_a_scaled_relu_subclass_has_its_output_rounded():
    class ScaledReLU(nn.ReLU):
        def forward(self, x):
            return super().forward(x) * 1.7

    class GELUPlaceholder(nn.Identity):
        def forward(self, x):
            return F.gelu(x)

    model = nn.Sequential(nn.Linear(8, 8), ScaledReLU(), nn.Linear(8, 8), GELUPlaceholder())
    with torch.no_grad(), emulate(model, "e8m2"):
        h = model[1](model[0](torch.randn(5, 8)))
        out = model(torch.randn(5, 8))
    assert on_grid(h, "e8m2") and on_grid(out, "e8m2")


def _fingerprint(model: nn.Module) -> tuple:
    """Everything emulation may touch: parameters (object, storage, values), hooks, instance forwards."""
    state = tuple((k, v.data_ptr(), v.clone()) for k, v in model.state_dict(keep_vars=True).items())
    hooks = tuple(
        (name, tuple(m._forward_pre_hooks), tuple(m._forward_hooks), tuple(m._backward_hooks),
         "forward" in m.__dict__, tuple(id(p) for p in m._parameters.values()))
        for name, m in model.named_modules()
    )
    grad_hooks = tuple(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters())
    return state, hooks, grad_hooks


def _same(a: tuple, b: tuple) -> bool:
    (sa, ha, ga), (sb, hb, gb) = a, b
    if ha != hb or ga != gb or len(sa) != len(sb):
        return False
    return all(ka == kb and pa == pb and torch.equal(va, vb)
               for (ka, pa, va), (kb, pb, vb) in zip(sa, sb, strict=True))


class MaxPool2dSame(nn.MaxPool2d):
    """timm's name pattern: the class name does not end in the base's ``Nd``."""


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), MaxPool2dSame(2), nn.Flatten(),
        nn.Linear(64, 16), nn.LayerNorm(16), nn.Linear(16, 3),
    )  # fmt: skip


def test_a_maxpool_subclass_named_like_timms_is_emulated():
    model = _model()
    with torch.no_grad(), emulate(model, "e8m3"):
        assert on_grid(model(torch.randn(2, 1, 8, 8)), "e8m3")


@pytest.mark.parametrize("level", ["layer", "op"])
def test_a_failure_while_installing_leaves_the_model_exactly_as_before(level, monkeypatch):
    # fail at the k-th layer installed, for every k: the layers installed before it are undone
    model = _model()
    x = torch.randn(2, 1, 8, 8)
    before, plain = _fingerprint(model), model(x)
    n = len(layer_modules(model))
    original = layer.LayerEmulator._install
    for k in range(n):
        calls = itertools.count()

        def failing(self, *args, k=k, calls=calls, **kwargs):
            if next(calls) == k:
                raise RuntimeError("injected")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(layer.LayerEmulator, "_install", failing)
        with pytest.raises(RuntimeError, match="injected"):
            emulate(model, "e8m3", level=level)
        assert _same(_fingerprint(model), before), f"left altered after a failure at layer {k}"
        assert torch.equal(model(x), plain)


@pytest.mark.parametrize("level", ["layer", "op", "batch"])
def test_a_failure_at_any_hook_registration_leaves_the_model_exactly_as_before(level, monkeypatch):
    # finer than per layer: the k-th registration of any hook fails (a layer half installed: its pre-hook on,
    # its forward hook refused), for every k that an installation makes
    model = _model()
    x = torch.randn(2, 1, 8, 8)
    before, plain = _fingerprint(model), model(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    targets = [(nn.Module, "register_forward_pre_hook"), (nn.Module, "register_forward_hook"),
               (torch.Tensor, "register_post_accumulate_grad_hook"),
               (torch.optim.Optimizer, "register_step_post_hook")]
    originals = {(cls, name): getattr(cls, name) for cls, name in targets}
    # per-tensor weight_grad (int8): post-accumulate hooks on the parameters as well
    spec = {"*": {"weight": "e8m3", "input": "e5m2", "activation": "e5m2", "weight_grad": "int8"}}
    kwargs = {"optimizer": opt} if level == "batch" else {}
    policy = PrecisionPolicy.from_spec(spec if level == "layer" else "e8m3")
    count = itertools.count()
    for cls, name in targets:
        monkeypatch.setattr(cls, name, lambda *a, _o=originals[(cls, name)], **k: (next(count), _o(*a, **k))[1])
    emulate(model, policy, level=level, **kwargs).remove()
    total = next(count)
    assert total > 0
    for k in range(total):
        calls = itertools.count()
        for cls, name in targets:
            def failing(*a, _o=originals[(cls, name)], k=k, calls=calls, **kw):
                if next(calls) == k:
                    raise RuntimeError("injected")
                return _o(*a, **kw)

            monkeypatch.setattr(cls, name, failing)
        with pytest.raises(RuntimeError, match="injected"):
            emulate(model, policy, level=level, **kwargs)
        assert _same(_fingerprint(model), before), f"left altered after a failure at registration {k}"
        assert not opt._optimizer_step_post_hooks
        assert torch.equal(model(x), plain)


def test_op_level_keyword_inputs_bound_the_backward():
    # m(input=g(z)): g is upstream of the emulated model, its backward must not be rounded (as with m(g(z)))
    torch.manual_seed(0)
    g, m = nn.Linear(4, 6), nn.Sequential(nn.Linear(6, 3))
    z = torch.randn(5, 4)

    def upstream_grad(call) -> torch.Tensor:
        g.zero_grad()
        with emulate(m, "e8m2", level="op"):
            call(g(z)).sum().backward()
        return g.weight.grad.clone()

    positional = upstream_grad(lambda h: m(h))
    keyword = upstream_grad(lambda h: m(input=h))
    assert torch.equal(keyword, positional)


class Recursive(nn.Module):
    """A module that applies itself ``depth`` times (weight-shared recursion)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4) * 0.5)

    def forward(self, x: torch.Tensor, depth: int = 2) -> torch.Tensor:
        if depth:
            x = self(x, depth - 1)
        return torch.tanh(x @ self.weight)


def test_a_module_calling_itself_computes_with_rounded_weights_throughout():
    torch.manual_seed(0)
    model, x = Recursive(), torch.randn(3, 4)
    expected = functional_call(model, {"weight": quantize(model.weight.detach(), "e8m2")}, (x,))
    with torch.no_grad(), emulate(model, PrecisionPolicy.from_spec("e8m2", roles=("weight",))):
        out = model(x)
    assert torch.equal(out, expected)
    assert isinstance(model._parameters["weight"], nn.Parameter)  # restored after the outermost call


@pytest.mark.parametrize("write", ["data_mul", "data_copy", "data_assign", "vector_to_parameters"])
def test_weights_written_through_data_between_evaluations_are_rounded_again(write):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 6)
    em = emulate(model, "e8m3")
    with torch.no_grad():
        model(x)  # rounded weights are cached now
        w = model[0].weight
        if write == "data_mul":
            w.data.mul_(1.5)
        elif write == "data_copy":
            w.data.copy_(torch.randn_like(w))
        elif write == "data_assign":
            w.data = torch.randn_like(w)
        else:
            vec = nn.utils.parameters_to_vector(model.parameters())
            nn.utils.vector_to_parameters(vec * 0.5, model.parameters())
        out = model(x)
    em.remove()
    with torch.no_grad(), emulate(model, "e8m3"):
        fresh = model(x)
    assert torch.equal(out, fresh)


def test_data_parallel_is_refused_with_a_pointer_to_ddp():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(PolicyError, match="DistributedDataParallel"):
        emulate(nn.DataParallel(model), "e8m3")
    # a replica of an emulated model (what DataParallel runs on each device) refuses to run
    em = emulate(model, "e8m3")
    replica = model._replicate_for_data_parallel()
    with pytest.raises(PolicyError, match="DataParallel replica"):
        replica(torch.randn(2, 4))
    em.remove()
    assert not model._forward_pre_hooks


class TiedLM(nn.Module):
    """Tied input embedding and output projection, as language models tie them."""

    def __init__(self, vocab: int = 11, d: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(self.embed(tokens))))


@pytest.mark.parametrize("formats", ["same", "different"])
def test_a_tied_weights_total_gradient_is_rounded_once(formats):
    torch.manual_seed(0)
    tokens, target = torch.randint(0, 11, (6, 5)), torch.randint(0, 11, (6, 5))
    weights = {"embed": "e8m3", "out": "e8m3" if formats == "same" else "e8m4", "mix": "e8m3"}

    def grad(with_weight_grad: bool) -> torch.Tensor:
        model = TiedLM()
        torch.manual_seed(0)
        model.load_state_dict(TiedLM().state_dict())
        spec = {name: {"weight": f, "bias": f, **({"weight_grad": "e5m2"} if with_weight_grad else {})}
                for name, f in weights.items()}
        with emulate(model, spec, level="layer"):
            F.cross_entropy(model(tokens).flatten(0, 1), target.flatten()).backward()
        return model.embed.weight.grad

    total = grad(False)
    assert not on_grid(total, "e5m2")
    assert torch.equal(grad(True), quantize(total, "e5m2"))


def test_a_tied_parameter_with_two_weight_grad_formats_is_refused():
    spec = {"embed": {"weight": "e8m3", "weight_grad": "e5m2"}, "out": {"weight": "e8m3", "weight_grad": "e4m3"}}
    model = TiedLM()
    before = _fingerprint(model)
    with pytest.raises(PolicyError, match="same weight_grad format"):
        emulate(model, spec)
    assert _same(_fingerprint(model), before)


def test_a_deep_copy_of_an_emulated_model_keeps_its_own_weights():
    model = _model()
    em = emulate(model, "e8m3")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin[-1].weight.mul_(2)
        x = torch.randn(2, 1, 8, 8)
        assert not torch.equal(twin(x), model(x))
    em.remove()
