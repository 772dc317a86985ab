"""Batch level with parameters in one buffer (flat.py): the same training bit for bit as rounding them one by
one, the buffer follows changes of the parameters' data, and removal gives each parameter its own storage."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from boundfinder import quantize
from boundfinder.emulation import emulate, flat
from boundfinder.policy import PrecisionPolicy


def _models():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 37), nn.ReLU(), nn.Linear(37, 10))  # odd sizes: padding
    cnn = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 64, 10))
    return {"mlp": mlp, "cnn": cnn}


def _train(name: str, fmt: str, steps: int = 15) -> tuple[list[torch.Tensor], list[float], object, nn.Module]:
    torch.manual_seed(0)
    model = _models()[name]
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    em = emulate(model, PrecisionPolicy.from_spec(fmt, roles=("weight", "bias")), level="batch", optimizer=opt)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return [p.detach().clone() for p in model.parameters()], losses, em, model


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("fmt", ["e5m10", "bf16", "e4m3fn"])
def test_flat_buffer_trains_exactly_as_rounding_one_by_one(name, fmt, monkeypatch):
    params, losses, em, model = _train(name, fmt)
    assert any(g.flat is not None for _, g in em._batch._flat)  # the buffer was used
    for p in model.parameters():
        assert torch.equal(quantize(p.detach(), fmt), p.detach())  # every parameter on the grid
    em.remove()
    monkeypatch.setattr(flat, "qualifies", lambda p: False)
    monkeypatch.setattr("boundfinder.emulation.batch.qualifies", lambda p: False)
    params_ref, losses_ref, em_ref, _ = _train(name, fmt)
    assert not em_ref._batch._flat
    assert losses == losses_ref
    for a, b in zip(params, params_ref, strict=True):
        assert torch.equal(a, b)


def test_removal_gives_each_parameter_its_own_storage_with_the_same_values():
    params, _, em, model = _train("mlp", "e5m10", steps=3)
    buf = em._batch._flat[0][1].flat
    lo, hi = buf.data_ptr(), buf.data_ptr() + buf.numel() * 4
    assert all(lo <= p.data_ptr() < hi for p in model.parameters())
    em.remove()
    for p, before in zip(model.parameters(), params, strict=True):
        assert not lo <= p.data_ptr() < hi
        assert torch.equal(p.detach(), before) and p.is_contiguous()


def test_replaced_parameter_data_is_still_rounded():
    """Code that gives a parameter new data (a device move does) between steps: the group notices, rounds
    the parameters anyway, and views the new data from the next buffer on."""
    torch.manual_seed(0)
    model = _models()["mlp"]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    em = emulate(model, PrecisionPolicy.from_spec("e5m10", roles=("weight", "bias")), level="batch", optimizer=opt)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for step in range(4):
        if step == 2:
            with torch.no_grad():
                model[1].weight.data = model[1].weight.data.clone() * 1.001  # off the grid, own storage
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        for p in model.parameters():
            assert torch.equal(quantize(p.detach(), "e5m10"), p.detach())
    group = em._batch._flat[0][1]
    assert group.flat is not None and group._intact()
    em.remove()


def test_parameters_that_do_not_qualify_are_rounded_one_by_one():
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    with torch.no_grad():
        model.weight.data = model.weight.data.t().contiguous().t()  # not contiguous
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    emulate(model, PrecisionPolicy.from_spec("bf16", roles=("weight", "bias")), level="batch", optimizer=opt)
    F.mse_loss(model(torch.randn(3, 8)), torch.randn(3, 4)).backward()
    opt.step()
    assert not model.weight.is_contiguous()
    for p in model.parameters():
        assert torch.equal(quantize(p.detach(), "bf16"), p.detach())


def _train_with_state(fmt: str, opt_name: str, steps: int = 12, reload_at: int | None = None):
    torch.manual_seed(0)
    model = _models()["mlp"]
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
    em = emulate(model, PrecisionPolicy.from_spec(fmt), level="batch", optimizer=opt)  # weights + optimizer state
    losses = []
    for step in range(steps):
        if step == reload_at:
            opt.load_state_dict(opt.state_dict())  # new state tensors, same values
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    states = [v.detach().clone() for s in opt.state.values() for v in s.values()
              if isinstance(v, torch.Tensor) and v.dim() > 0]
    return [p.detach().clone() for p in model.parameters()], states, losses, em, opt


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("fmt", ["e5m10", "e4m3fn"])
def test_optimizer_state_in_buffers_trains_exactly_as_one_by_one(fmt, opt_name, monkeypatch):
    params, states, losses, em, opt = _train_with_state(fmt, opt_name, reload_at=5)
    assert em._batch._state_flat is not None and em._batch._state_flat.serves(opt)
    for s in states:
        assert _same(quantize(s, fmt), s)  # the state is on the grid (Adam's e4m3fn moments may reach NaN)
    em.remove()
    for s in opt.state.values():  # own storage again
        for v in s.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v._base is None
    monkeypatch.setattr("boundfinder.emulation.batch.qualifies", lambda p: False)
    params_ref, states_ref, losses_ref, _, _ = _train_with_state(fmt, opt_name, reload_at=5)
    assert _same(torch.tensor(losses), torch.tensor(losses_ref))
    for a, b in zip(params + states, params_ref + states_ref, strict=True):
        assert _same(a, b)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit, NaN equal to NaN."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())
