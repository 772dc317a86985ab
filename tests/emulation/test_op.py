"""Op level: every floating-point op output, forward and backward, is on the grid; chunked accumulation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from boundfinder import PolicyError, quantize
from boundfinder.emulation import RoundingMode, chunked_matmul, emulate
from boundfinder.emulation.op import _classify


class Spy(TorchDispatchMode):
    """Records every op and its floating-point outputs (pushed above the rounding mode, it sees rounded ones)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, torch.Tensor, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        kind, _ = _classify(func)
        in_backward = torch._C._current_autograd_node() is not None
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and kind != "skip":
                self.seen.append((str(func), t.detach().clone(), in_backward))
        return out


def on_grid(t: torch.Tensor, fmt: str) -> bool:
    t = t[~t.isnan()]
    return torch.equal(quantize(t, fmt), t)


@pytest.mark.parametrize("fmt", ["e8m3", "e4m3fn"])
def test_every_op_output_is_on_the_grid(model_factory, batch, fmt):
    model = model_factory()
    x, y = batch
    em = emulate(model, fmt, level="op")
    spy = Spy()
    with em.op_context(), spy:
        F.cross_entropy(model(x), y).backward()
    ops = {name for name, _, _ in spy.seen}
    assert any("addmm" in op or "mm" in op for op in ops)
    assert any(backward for _, _, backward in spy.seen), "the spy saw backward ops"
    for name, t, backward in spy.seen:
        assert on_grid(t, fmt), (name, backward)
    for p in model.parameters():
        assert on_grid(p.grad, fmt)
    em.remove()


def test_plain_forward_and_backward_without_op_context(batch, zoo):
    """Without op_context, the model's own forward and backward are rounded (hooks enter the mode)."""
    x, _ = batch
    model = zoo.lenet()
    twin = copy.deepcopy(model)
    em = emulate(model, "e5m2", level="op")
    out = model(x)
    out.sum().backward()  # the sum's gradient is ones: on every grid, so the loss being outside does not matter
    em_twin = emulate(twin, "e5m2", level="op")
    with em_twin.op_context():
        out_twin = twin(x)
        out_twin.sum().backward()
    assert torch.equal(out, out_twin) and on_grid(out, "e5m2")
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad) and on_grid(a.grad, "e5m2")
    em.remove()
    em_twin.remove()


def test_fp32_training_is_bit_identical(model_factory, batch, zoo):
    plain = model_factory()
    emulated = copy.deepcopy(plain)
    em = emulate(emulated, "fp32", level="op")
    losses_plain, _ = zoo.train(plain, batch, steps=4)
    losses_emulated, _ = zoo.train(emulated, batch, steps=4)
    assert losses_plain == losses_emulated
    for a, b in zip(plain.parameters(), emulated.parameters(), strict=True):
        assert torch.equal(a, b)
    em.remove()


def test_remove_restores_everything_bitwise(batch, zoo):
    model = zoo.lenet()
    x, y = batch
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(x)
    em = emulate(model, "e4m3fn", level="op")
    F.cross_entropy(model(x), y).backward()
    pending = model(x)  # a graph whose backward runs after removal is not rounded any more
    em.remove()
    em.remove()
    pending.sum().backward()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), before)
    assert not torch.utils._python_dispatch._get_current_dispatch_mode()
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._forward_hooks_always_called)


def test_views_and_inplace_ops():
    """Views are not rounded (that would write through to the base); in-place results are rounded in place."""
    rounder = lambda t: quantize(t, "e5m2")  # noqa: E731
    base = torch.tensor([1.1, 2.2, 3.3, 4.4])
    with RoundingMode(rounder, rounder):
        v = base.view(2, 2)
        acc = torch.zeros(4)
        acc.add_(base)
        product = base * 1.0
    assert torch.equal(v.reshape(-1), base) and v._base is base
    assert torch.equal(acc, quantize(base, "e5m2"))
    assert torch.equal(product, quantize(base, "e5m2"))


def test_chunked_matmul_k1_matches_a_hand_written_loop():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 7, generator=g), torch.randn(7, 4, generator=g)
    fmt = "e4m3fn"
    expected = torch.zeros(3, 4)
    for i in range(3):
        for j in range(4):
            acc = torch.tensor(0.0)
            for p in range(7):  # one rounding per multiply-add
                acc = quantize(acc + a[i, p] * b[p, j], fmt)
            expected[i, j] = acc
    rounder = lambda t: quantize(t, fmt)  # noqa: E731
    assert torch.equal(chunked_matmul(a, b, 1, rounder), expected)
    with RoundingMode(rounder, rounder, accumulate_chunk=1):
        got = a @ b
    assert torch.equal(got, expected)
    assert not torch.equal(quantize(a @ b, fmt), expected)  # one final rounding differs from rounding every step


def test_chunked_linear_and_conv_match_plain_in_float32():
    """With an identity rounder the chunked references reorder float32 sums only: close to plain, and the
    gradients of convolution_backward's reference too."""
    calls = []
    identity = lambda t: calls.append(t.shape) or t  # noqa: E731
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 6, generator=g, requires_grad=True)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1)
    lin = nn.Linear(48, 5)
    x1 = torch.randn(2, 3, 9, generator=g)
    conv1 = nn.Conv1d(3, 2, 2, padding=1)

    def run():
        out = lin(conv(x).flatten(1)).sum() + conv1(x1).sum()
        return out, torch.autograd.grad(out, [x, conv.weight, conv.bias, lin.weight])

    ref_out, ref_grads = run()
    with RoundingMode(identity, identity, accumulate_chunk=2):
        out, grads = run()
    assert len(calls) > 40  # the chunked references ran: one rounding per chunk
    # reassociating sums of ~30 float32 terms: differences of a few ulp of the largest partial sums
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_chunked_accumulation_with_emulate(batch, zoo):
    x, y = batch
    model = zoo.lenet()
    em = emulate(model, "e5m10", level="op", accumulate_chunk=4)
    spy = Spy()
    with em.op_context(), spy:
        F.cross_entropy(model(x), y).backward()
    assert all(on_grid(t, "e5m10") for _, t, _ in spy.seen)
    em.remove()


def test_op_level_rejections(zoo):
    model = zoo.mlp()
    with pytest.raises(PolicyError, match=r"must select every layer.*leaves out"):
        emulate(model, {"1": "e5m2"}, level="op")
    with pytest.raises(PolicyError, match=r"one format.*\['e4m3fn', 'e5m2'\]"):
        emulate(model, {"1": "e5m2", "[023]": "e4m3fn"}, level="op")
    with pytest.raises(PolicyError, match="int8 is not valid for op-level"):
        emulate(model, "int8", level="op")
    with pytest.raises(PolicyError, match="accumulate_chunk applies to level 'op' only"):
        emulate(model, "e5m2", level="layer", accumulate_chunk=2)
    with pytest.raises(PolicyError, match="positive int"):
        emulate(model, "e5m2", level="op", accumulate_chunk=0)
    with pytest.raises(PolicyError, match="level must be one of op, layer, batch, got 'ops'"):
        emulate(model, "e5m2", level="ops")
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2))
    em = emulate(grouped, "e5m2", level="op", accumulate_chunk=2)
    with pytest.raises(PolicyError, match="groups=1"):
        grouped(torch.ones(1, 2, 4, 4))
    em.remove()


def test_grid_preserving_ops_still_round_inputs_that_are_not_on_the_grid():
    """relu/max-pool skip their rounding only for inputs the mode itself rounded; raw data is rounded."""
    model = nn.Sequential(nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(3, 1, 8)
    em = emulate(model, "e4m3fn", level="op")
    spy = Spy()
    with em.op_context(), spy:
        model(x).sum().backward()
    names = [name for name, _, _ in spy.seen]
    assert any("relu" in n for n in names) and any("max_pool" in n for n in names)
    assert all(on_grid(t, "e4m3fn") for _, t, _ in spy.seen)
    em.remove()


def test_weights_rounded_as_used_even_when_only_submodules_run(zoo):
    """A LightningModule's training_step may call submodules, never the root's forward: weights are still
    rounded as used, with their own format, and the mode does not round the rounding's own ops."""
    model = zoo.mlp()
    spec = {"*": {"weight": "e4m3fn", "bias": "e4m3fn", "activation": "e5m10", "grad_input": "e5m10"}}
    em = emulate(model, spec, level="op")
    seen = []
    model[1].register_forward_pre_hook(lambda m, a: seen.append(m.weight.detach().clone()))
    with em.op_context():
        out = model[1](torch.randn(4, 64))
    assert torch.equal(seen[0], quantize(model[1].weight.detach(), "e4m3fn"))
    assert on_grid(out, "e5m10")
    em.remove()
    assert type(model[1].weight) is nn.Parameter


@pytest.mark.parametrize("level", ["op", "layer"])
def test_inference_mode(level, batch, zoo):
    """Inference tensors have no version counter: nothing is marked, everything is still rounded."""
    model = zoo.lenet()
    x, _ = batch
    em = emulate(model, "e4m3fn", level=level)
    with torch.inference_mode():
        out = model(x)
        again = model(x)
    assert torch.equal(out, again) and on_grid(out, "e4m3fn")
    F.cross_entropy(model(x), batch[1]).backward()  # training after inference works
    em.remove()
