"""Conformance of the layer level's roles on every torch.nn layer type it handles, and on a subclass of each.

For each layer and each role alone, the emulated output must equal an independent reference that rounds exactly
what the role covers (docs/emulation.md, "What each role covers"), computed with ``torch.func.functional_call``
and ``quantize`` on an unemulated copy: parameters by name (``bias`` for names ending in ``bias``, else
``weight``), the data arguments (``boundfinder.emulation.inputs``: masks, indices and targets are not data),
every floating-point output. Equality is bitwise, so a role that rounds too little (a subclass that skipped its
activation, RNN weights never swapped in) or too much (a rounded mask) fails.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils._pytree import tree_map

from boundfinder import quantize
from boundfinder.emulation import emulate
from boundfinder.policy import PrecisionPolicy, parameter_role

FMT = "e5m2"


def _mask(n: int) -> torch.Tensor:
    return nn.Transformer.generate_square_subsequent_mask(n)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def r(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_g(seed))


# name -> (factory, args, kwargs, data arguments by position / keyword name)
CASES = {
    "Linear": (lambda: nn.Linear(6, 4), (r(3, 6),), {}, {0}),
    "Linear-3d": (lambda: nn.Linear(6, 4), (r(2, 3, 6),), {}, {0}),
    "Bilinear": (lambda: nn.Bilinear(6, 5, 4), (r(3, 6), r(3, 5, seed=1)), {}, {0, 1}),
    "Conv1d": (lambda: nn.Conv1d(2, 3, 3), (r(2, 2, 9),), {}, {0}),
    "Conv2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), (r(2, 2, 6, 6),), {}, {0}),
    "Conv3d": (lambda: nn.Conv3d(1, 2, 2), (r(1, 1, 4, 4, 4),), {}, {0}),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), (r(1, 2, 4, 4),), {}, {0}),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(6).eval(), (r(5, 6),), {}, {0}),
    "BatchNorm2d-train": (lambda: nn.BatchNorm2d(2), (r(3, 2, 4, 4),), {}, {0}),
    "LayerNorm": (lambda: nn.LayerNorm(6), (r(3, 6),), {}, {0}),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), (r(2, 4, 3),), {}, {0}),
    "Embedding": (lambda: nn.Embedding(10, 4), (torch.tensor([[1, 2, 9], [0, 3, 3]]),), {}, set()),
    "EmbeddingBag": (lambda: nn.EmbeddingBag(10, 4, mode="sum"), (torch.tensor([1, 2, 4, 5, 4]),),
                     {"offsets": torch.tensor([0, 2]), "per_sample_weights": r(5, seed=3)}, {"per_sample_weights"}),
    "MultiheadAttention": (
        lambda: nn.MultiheadAttention(8, 2, batch_first=True),
        (r(2, 5, 8), r(2, 5, 8, seed=1), r(2, 5, 8, seed=2)),
        # an additive bias (off any coarse grid) with a causal -inf part, and a float padding mask
        {"attn_mask": _mask(5) + r(5, 5, seed=4), "key_padding_mask": torch.tensor([[0.0] * 4 + [float("-inf")]] * 2)},
        {0, 1, 2},
    ),
    "MultiheadAttention-kdim": (
        lambda: nn.MultiheadAttention(8, 2, kdim=6, vdim=4, bias=False),
        (r(5, 2, 8), r(5, 2, 6, seed=1), r(5, 2, 4, seed=2)), {"need_weights": False}, {0, 1, 2},
    ),
    "LSTM": (lambda: nn.LSTM(6, 5, batch_first=True), (r(2, 4, 6), (r(1, 2, 5, seed=1), r(1, 2, 5, seed=2))), {},
             {0, 1}),
    "GRU": (lambda: nn.GRU(6, 5), (r(4, 2, 6),), {}, {0}),
    "RNNCell": (lambda: nn.RNNCell(6, 5), (r(3, 6), r(3, 5, seed=1)), {}, {0, 1}),
    "ReLU": (lambda: nn.ReLU(), (r(3, 6),), {}, {0}),
    "GELU": (lambda: nn.GELU(), (r(3, 6),), {}, {0}),
    "Tanh": (lambda: nn.Tanh(), (r(3, 6),), {}, {0}),
    "Softmax": (lambda: nn.Softmax(dim=-1), (r(3, 6),), {}, {0}),
    "Dropout-eval": (lambda: nn.Dropout(0.5).eval(), (r(3, 6),), {}, {0}),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (r(1, 2, 6, 6),), {}, {0}),
    "MaxPool2d-overlap": (lambda: nn.MaxPool2d(3, stride=1), (r(1, 2, 6, 6),), {}, {0}),
    "AvgPool2d": (lambda: nn.AvgPool2d(2), (r(1, 2, 6, 6),), {}, {0}),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d(1), (r(1, 2, 5, 5),), {}, {0}),
    "Flatten": (lambda: nn.Flatten(), (r(2, 3, 4),), {}, {0}),
    "Identity": (lambda: nn.Identity(), (r(3, 6),), {}, {0}),
    "Upsample": (lambda: nn.Upsample(scale_factor=2, mode="bilinear"), (r(1, 1, 3, 3),), {}, {0}),
}

FORWARD_ROLES = ("weight", "bias", "input", "activation")
ALL = "all"  # every forward role at once (where layers skip roundings they consider no-ops)


def subclass(module: nn.Module) -> nn.Module:
    """The same layer as an instance of a plain subclass of its type, named as timm names its variants (a name
    that does not end in the base's ``Nd``, e.g. ``MaxPool2dSame``)."""
    sub = type(f"{type(module).__name__}Same", (type(module),), {})
    module.__class__ = sub
    return module


def scaled(module: nn.Module) -> nn.Module:
    """A subclass whose forward computes something else: its output is off the input's grid."""
    base = type(module)

    def forward(self, *args, **kwargs):
        out = base.forward(self, *args, **kwargs)
        return tree_map(lambda t: t * 1.1 if isinstance(t, torch.Tensor) and t.is_floating_point() else t, out)

    module.__class__ = type(f"Scaled{base.__name__}", (base,), {"forward": forward})
    return module


def _round(t):
    return quantize(t, FMT) if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def reference(module: nn.Module, role: str, args: tuple, kwargs: dict, data: set) -> object:
    """The layer's output with exactly ``role`` rounded, computed without emulation."""
    ref = copy.deepcopy(module)
    params = {}
    if role in ("weight", "bias", ALL):
        for name, p in ref.named_parameters():
            if role == ALL or parameter_role(name.rpartition(".")[2]) == role:
                params[name] = quantize(p.detach(), FMT)
    if role in ("input", ALL):
        args = tuple(tree_map(_round, a) if i in data else a for i, a in enumerate(args))
        kwargs = {k: tree_map(_round, v) if k in data else v for k, v in kwargs.items()}
    with torch.no_grad():
        out = functional_call(ref, params, args, kwargs, strict=False)
    return tree_map(_round, out) if role in ("activation", ALL) else out


def same(a, b) -> bool:
    fa, fb = torch.utils._pytree.tree_flatten(a)[0], torch.utils._pytree.tree_flatten(b)[0]
    return len(fa) == len(fb) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(fa, fb, strict=True)
    )


@pytest.mark.parametrize("variant", ["exact", "subclass", "scaled"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_role_rounds_exactly_what_it_covers(case, variant):
    factory, args, kwargs, data = CASES[case]
    torch.manual_seed(0)
    module = {"exact": lambda m: m, "subclass": subclass, "scaled": scaled}[variant](factory())
    for role in (*FORWARD_ROLES, ALL):
        expected = reference(module, role, args, kwargs, data)
        policy = PrecisionPolicy.from_spec(FMT, roles=FORWARD_ROLES if role == ALL else (role,))
        with torch.no_grad(), emulate(module, policy, level="layer"):
            got = module(*args, **kwargs)
        assert same(got, expected), f"{case} ({variant}), role {role!r}: output differs from the reference"
        if role in ("activation", ALL):
            for t in torch.utils._pytree.tree_flatten(got)[0]:
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    assert torch.equal(quantize(t, FMT), t), f"{case} ({variant}): an output is off the grid"


@pytest.mark.parametrize("variant", ["exact", "scaled"])
@pytest.mark.parametrize("case", sorted(c for c, v in CASES.items() if 0 in v[3]))
def test_grad_input_is_the_rounded_input_gradient(case, variant):
    # grad_input alone: the gradient reaching the data input is the plain one, rounded once
    factory, args, kwargs, _data = CASES[case]
    torch.manual_seed(0)
    module = {"exact": lambda m: m, "scaled": scaled}[variant](factory())

    def input_grad(emulated: bool) -> torch.Tensor:
        x = args[0].clone().requires_grad_(True)
        rest = args[1:]
        policy = PrecisionPolicy.from_spec(FMT, roles=("grad_input",))
        em = emulate(module, policy, level="layer") if emulated else None
        try:
            out = module(x, *rest, **kwargs)
            first = torch.utils._pytree.tree_flatten(out)[0][0]
            first.backward(torch.ones_like(first) * 0.37)
        finally:
            if em is not None:
                em.remove()
        return x.grad

    plain, got = input_grad(False), input_grad(True)
    assert torch.equal(got, quantize(plain, FMT))
    assert not torch.equal(plain, quantize(plain, FMT))  # the check can fail: the plain gradient is off the grid
