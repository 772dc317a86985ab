"""Small plain models and data for the emulation tests (no Lightning: the callbacks' tests cover that)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn


def make_logistic() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def make_lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10),
    )  # fmt: skip


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


MODELS = {"logistic": make_logistic, "lenet": make_lenet, "mlp": make_mlp}


@pytest.fixture(params=sorted(MODELS))
def model_factory(request):
    return MODELS[request.param]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def train(model: nn.Module, data, steps: int = 3, em=None, optimizer_cls=torch.optim.SGD, **opt_kwargs):
    """A few full-batch steps; returns the losses. ``em``: an Emulation (batch level rounds after steps)."""
    opt_kwargs = opt_kwargs or {"lr": 0.1, "momentum": 0.9}
    opt = optimizer_cls(model.parameters(), **opt_kwargs)
    x, y = data
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if em is not None:
            em.after_optimizer_step(opt)
        losses.append(loss.item())
    return losses, opt


@pytest.fixture
def zoo():
    """The model factories and the training helper (tests import nothing from conftest: importlib mode)."""
    import types

    return types.SimpleNamespace(logistic=make_logistic, lenet=make_lenet, mlp=make_mlp, train=train)


@pytest.fixture
def hooks_path(monkeypatch):
    """Layer-level emulators built in the test round nn.Linear layers through hooks at their boundaries (where
    a spy's hooks can see each rounded tensor) instead of the fused native node."""
    from boundfinder.emulation import layer

    monkeypatch.setattr(layer, "FUSE", False)
