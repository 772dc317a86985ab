"""Layer level: what crosses each layer (weights as used, inputs, outputs, gradients) is on the format's grid."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from boundfinder import quantize
from boundfinder.emulation import emulate
from boundfinder.policy import PrecisionPolicy, layer_modules


def on_grid(t: torch.Tensor, fmt: str) -> bool:
    return torch.equal(quantize(t.detach(), fmt), t.detach())


def no_hooks_left(model: nn.Module) -> bool:
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return False
        if m._forward_hooks_always_called or m._forward_hooks_with_kwargs or m._forward_pre_hooks_with_kwargs:
            return False
        if "forward" in m.__dict__:  # the fused native Linear's forward, set on the instance
            return False
    return all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())


@pytest.mark.parametrize("fmt", ["e8m3", "e4m3fn", "e3m4"])  # word fast path, float fast path, quantize
def test_recorded_tensors_are_on_the_grid(model_factory, batch, fmt, hooks_path):
    # (on the hooks' path, where the spy's hooks see every rounded tensor at the layer boundaries; the fused
    # native Linear rounds inside its forward and equals this path bit for bit: test_native.py)
    model = model_factory()
    layers = layer_modules(model)
    raw_out: dict[str, torch.Tensor] = {}
    records: list[tuple[str, torch.Tensor]] = []
    grads: list[tuple[str, torch.Tensor]] = []

    def record_grad(what):
        return lambda g: grads.append((what, g))

    def before_pre(name):
        def hook(module, args):
            for a in args:
                if a.requires_grad:
                    a.register_hook(record_grad(f"{name} grad_input"))
        return hook

    for name, m in layers.items():
        m.register_forward_pre_hook(before_pre(name))
        m.register_forward_hook(lambda mod, args, out, name=name: raw_out.__setitem__(name, out))
    em = emulate(model, fmt, level="layer")

    def after_pre(name):
        def hook(module, args):
            records.extend((f"{name} input", a) for a in args)
            records.extend((f"{name} {p}", t) for p, t in module._parameters.items() if t is not None)
        return hook

    def after(name):
        def hook(module, args, out):
            records.append((f"{name} activation", out))
            if raw_out[name].requires_grad:
                raw_out[name].register_hook(record_grad(f"{name} grad_output"))
        return hook

    for name, m in layers.items():
        m.register_forward_pre_hook(after_pre(name))
        m.register_forward_hook(after(name))
    x, y = batch
    F.cross_entropy(model(x), y).backward()
    recorded = {what for what, _ in grads}
    # every layer's output gradient (all but a leading Flatten of the data), and the input gradient of every
    # layer after the first one with parameters
    assert {w for w in recorded if w.endswith("grad_output")} == {
        f"{n} grad_output" for n in layers if raw_out[n].requires_grad
    }
    first = min(i for i, m in enumerate(layers.values()) if list(m.parameters()))
    assert {w for w in recorded if w.endswith("grad_input")} == {
        f"{n} grad_input" for i, n in enumerate(layers) if i > first
    }
    for what, t in records + grads:
        assert on_grid(t, fmt), what
    for name, p in model.named_parameters():
        assert p.grad is not None and on_grid(p.grad, fmt), f"{name}.grad"
        assert not on_grid(p, fmt), f"{name}: the real-valued parameter itself is never rounded at layer level"
    em.remove()


def test_forward_equals_a_hand_rounded_reference(batch, zoo):
    fmt = "e4m3fn"
    model = zoo.mlp()
    x, _ = batch
    q = lambda t: quantize(t, fmt)  # noqa: E731
    lin1, lin2 = model[1], model[3]
    h = q(F.linear(q(x.flatten(1)), q(lin1.weight), q(lin1.bias)))
    expected = q(F.linear(q(F.relu(h)), q(lin2.weight), q(lin2.bias)))
    with emulate(model, fmt, level="layer"):
        got = model(x)
    assert torch.equal(got, expected)


def test_weights_use_a_straight_through_estimator(batch, zoo):
    x, y = batch
    model = zoo.logistic()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference[1].weight.copy_(quantize(reference[1].weight, "e5m2"))
    policy = PrecisionPolicy.from_spec("e5m2", roles=("weight",))
    with emulate(model, policy, level="layer", rounding=None) as em:
        assert em.summary()["layers"]["1"] == {"weight": "e5m2"}
        F.cross_entropy(model(x), y).backward()
    F.cross_entropy(reference(x), y).backward()
    # identity backward: the real weight gets exactly the gradient computed with the rounded weight
    assert torch.equal(model[1].weight.grad, reference[1].weight.grad)
    assert torch.equal(model[1].bias.grad, reference[1].bias.grad)


def test_binary_weights_use_the_clipped_straight_through_estimator():
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -2.0, -0.25, 3.0]]))
    seen = []
    with emulate(model, {"*": {"weight": "binary"}}, level="layer"):
        model.register_forward_pre_hook(lambda m, a: seen.append(m.weight.detach().clone()))
        model(torch.ones(1, 4)).sum().backward()
    assert seen[0].tolist() == [[1.0, -1.0, -1.0, 1.0]]
    assert model.weight.grad.tolist() == [[1.0, 0.0, 1.0, 0.0]]  # cancelled where |w| > 1


def test_fp32_training_is_bit_identical(model_factory, batch, zoo):
    plain = model_factory()
    emulated = copy.deepcopy(plain)
    em = emulate(emulated, "fp32", level="layer")
    losses_plain, _ = zoo.train(plain, batch, steps=4)
    losses_emulated, _ = zoo.train(emulated, batch, steps=4, em=em)
    assert losses_plain == losses_emulated
    for a, b in zip(plain.parameters(), emulated.parameters(), strict=True):
        assert torch.equal(a, b)


def test_remove_restores_everything_bitwise(model_factory, batch):
    model = model_factory()
    x, _ = batch
    params = {k: v.clone() for k, v in model.state_dict().items()}
    out_before = model(x)
    keys = list(model.state_dict())
    em = emulate(model, "e4m3fn", level="layer")
    out_emulated = model(x)
    out_emulated.sum().backward()
    assert not torch.equal(out_emulated, out_before)
    em.remove()
    em.remove()  # idempotent
    assert list(model.state_dict()) == keys
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert torch.equal(model(x), out_before)
    assert no_hooks_left(model)


def test_only_selected_layers_are_rounded(batch, zoo):
    model = zoo.mlp()
    x, _ = batch
    em = emulate(model, {"3": "e4m3fn"}, level="layer")
    assert sorted(em.plan) == ["3"]
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks
    inner = []
    model[1].register_forward_hook(lambda m, a, out: inner.append(out))
    out = model(x)
    assert not on_grid(inner[0], "e4m3fn") and on_grid(out, "e4m3fn")
    em.remove()


def test_stochastic_rounding_uses_the_generator(batch, zoo):
    x, _ = batch
    outs = []
    for seed in (5, 5, 6):
        model = zoo.lenet()
        torch.manual_seed(0)
        model.load_state_dict(zoo.lenet().state_dict())
        gen = torch.Generator().manual_seed(seed)
        with emulate(model, "e5m2", level="layer", rounding="stochastic", generator=gen) as em:
            assert em.policy.rounding == "stochastic"
            outs.append(model(x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert on_grid(outs[0], "e5m2")


def test_remove_inside_forward_restores_parameters():
    model = nn.Linear(3, 3)
    weight = model.weight
    em = emulate(model, "e5m2", level="layer")

    def stop(module, args):
        em.remove()
        raise RuntimeError("stop")

    model.register_forward_pre_hook(stop)
    with pytest.raises(RuntimeError, match="stop"):
        model(torch.ones(1, 3))
    assert model.weight is weight


def test_forward_rounding_alone_passes_gradients_straight_through(batch, zoo):
    x, y = batch
    model = zoo.mlp()
    reference = copy.deepcopy(model)
    policy = PrecisionPolicy.from_spec("e4m3fn", roles=("activation",))
    with emulate(model, policy, level="layer"):
        out = model(x)
        F.cross_entropy(out, y).backward()
    assert on_grid(out, "e4m3fn")
    # the reference computes the same rounded activations by hand; its backward is the identity through them
    q = lambda t: t + (quantize(t, "e4m3fn") - t).detach()  # noqa: E731
    h = q(reference[1](q(reference[0](x))))
    F.cross_entropy(q(reference[3](q(reference[2](h)))), y).backward()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_rounded_weights_follow_parameter_updates(zoo):
    """The fused weight rounding is cached; in-place updates, new Parameter objects and finished backward
    passes all make the next forward use the current weights."""
    model = zoo.mlp()
    x = torch.randn(4, 1, 8, 8)
    em = emulate(model, PrecisionPolicy.from_spec("e5m2", roles=("weight", "bias")), level="layer")

    def expected():
        h = F.relu(F.linear(x.flatten(1), quantize(model[1].weight, "e5m2"), quantize(model[1].bias, "e5m2")))
        return F.linear(h, quantize(model[3].weight, "e5m2"), quantize(model[3].bias, "e5m2"))

    with torch.no_grad():
        assert torch.equal(model(x), expected())
        model[3].weight.mul_(3.0)  # an optimizer step: in place
        assert torch.equal(model(x), expected())
        model[1].bias = nn.Parameter(torch.ones(32))  # a new Parameter object
        assert torch.equal(model(x), expected())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):  # with gradients: a fresh graph after each backward
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        with torch.no_grad():
            assert torch.equal(model(x), expected())
    assert model[1].bias.grad is not None
    em.remove()


def test_grad_input_rounds_this_layers_contribution_only():
    """With a residual connection, grad_input is the gradient leaving the layer, before it is summed with the
    skip path's gradient (a hook on the input tensor would round the sum instead)."""

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + x

    model = Residual()
    x = torch.randn(1, 4, requires_grad=True)
    with emulate(model, {"fc": {"grad_input": "e5m2"}}, level="layer"):
        model(x).sum().backward()
    through_fc = model.fc.weight.detach().sum(0, keepdim=True)
    assert torch.equal(x.grad, quantize(through_fc, "e5m2") + 1.0)
    assert not torch.equal(x.grad, quantize(through_fc + 1.0, "e5m2"))
