"""Batch level: parameters (and optimizer state) are representable after every optimizer step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from boundfinder import PolicyError, quantize
from boundfinder.emulation import emulate
from boundfinder.policy import PrecisionPolicy


def on_grid(t: torch.Tensor, fmt: str) -> bool:
    return torch.equal(quantize(t.detach(), fmt), t.detach())


def test_parameters_representable_after_each_step(model_factory, batch, zoo):
    model = model_factory()
    em = emulate(model, "e8m3", level="batch")
    assert not all(on_grid(p, "e8m3") for p in model.parameters())  # applying changes nothing by itself
    losses, _ = zoo.train(model, batch, steps=3, em=em)
    assert all(on_grid(p, "e8m3") for p in model.parameters())
    assert losses[-1] < losses[0]
    em.remove()


def test_optimizer_state_rounded_when_asked(batch, zoo):
    model = zoo.mlp()
    em = emulate(model, PrecisionPolicy.from_spec("e5m2"), level="batch")
    _, opt = zoo.train(model, batch, steps=2, em=em, optimizer_cls=torch.optim.Adam, lr=1e-2)
    for p in model.parameters():
        state = opt.state[p]
        assert on_grid(state["exp_avg"], "e5m2") and on_grid(state["exp_avg_sq"], "e5m2")
        assert float(state["step"]) == 2.0  # a step counter is not a stored value: left alone
    params_only = emulate(zoo.mlp(), PrecisionPolicy.from_spec("e5m2", roles=("weight", "bias")), level="batch")
    model2 = params_only.model
    _, opt2 = zoo.train(model2, batch, steps=2, em=params_only, optimizer_cls=torch.optim.Adam, lr=1e-2)
    assert not all(on_grid(opt2.state[p]["exp_avg_sq"], "e5m2") for p in model2.parameters())
    em.remove()
    params_only.remove()


def test_only_selected_layers(batch, zoo):
    model = zoo.mlp()
    em = emulate(model, {"3": "e4m3fn"}, level="batch")
    zoo.train(model, batch, steps=1, em=em)
    assert on_grid(model[3].weight, "e4m3fn") and not on_grid(model[1].weight, "e4m3fn")
    em.remove()


def test_fp32_training_is_bit_identical(model_factory, batch, zoo):
    plain = model_factory()
    emulated = copy.deepcopy(plain)
    em = emulate(emulated, "fp32", level="batch")
    assert zoo.train(plain, batch, steps=4)[0] == zoo.train(emulated, batch, steps=4, em=em)[0]
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), emulated.parameters(), strict=True))


def test_watching_an_optimizer_and_removal(batch, zoo):
    model = zoo.lenet()
    x, y = batch
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    em = emulate(model, "e5m2", level="batch", optimizer=opt)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert all(on_grid(p, "e5m2") for p in model.parameters())
    em.remove()
    assert not opt._optimizer_step_post_hooks
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert not all(on_grid(p, "e5m2") for p in model.parameters())
    em.after_optimizer_step(opt)  # no-op after removal
    em.round_parameters_now()
    assert not all(on_grid(p, "e5m2") for p in model.parameters())


def test_round_parameters_now_and_other_levels_ignore_step_calls(zoo):
    model = zoo.logistic()
    em = emulate(model, "e4m3fn", level="batch")
    em.round_parameters_now()  # e.g. after loading a full-precision checkpoint
    assert all(on_grid(p, "e4m3fn") for p in model.parameters())
    em.remove()
    other = zoo.logistic()
    before = [p.clone() for p in other.parameters()]
    with emulate(other, "e4m3fn", level="layer") as layer:
        layer.after_optimizer_step()
        layer.round_parameters_now()
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters(), strict=True))


def test_batch_level_rejections(zoo):
    model = zoo.mlp()
    with pytest.raises(PolicyError, match="only to roles that level 'batch' does not use"):
        emulate(model, {"1": {"activation": "e5m2"}}, level="batch")
    with pytest.raises(PolicyError, match="optimizer= applies to level 'batch' only"):
        emulate(model, "e5m2", level="layer", optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(PolicyError, match="rounding must be one of"):
        emulate(model, "e5m2", level="batch", rounding="odd")
