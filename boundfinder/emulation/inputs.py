"""Which arguments of a layer's ``forward`` the ``input`` role (and ``grad_input``) rounds.

The ``input`` role means the *data* a layer computes with: not masks, indices, lengths or targets. A float causal
mask holds ``-inf``, which a format without infinity turns into NaN, and an additive mask rounded to a coarse grid
is no longer the mask the model was given. Per layer, the arguments are chosen by, in this order:

1. ``boundfinder_inputs``: a tuple of argument names set on the module or its class (the override for a layer
   of your own, or for one instance);
2. :data:`INPUT_ARGUMENTS`: names per module type (looked up along the class's MRO, so a subclass inherits its
   base's entry); add entries for third-party layers there;
3. the default: every floating-point tensor argument whose parameter name does not denote a mask, an index or a
   target (:func:`is_data_name`); arguments caught by ``*args`` count as data.

Tensors nested in a data argument (an LSTM's ``hx = (h, c)``, a list of tensors) are rounded too.

>>> import torch.nn as nn
>>> input_names(nn.MultiheadAttention(4, 1))
('query', 'key', 'value')
>>> is_data_name("key_padding_mask"), is_data_name("x")
(False, True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from boundfinder.errors import PolicyError

__all__ = ["INPUT_ARGUMENTS", "NON_DATA_NAMES", "ArgumentSelector", "input_names", "is_data_name"]

#: The data arguments of ``torch.nn`` layers whose forward takes more than one tensor (single-input layers need no
#: entry: their one argument is data by the default rule).
INPUT_ARGUMENTS: dict[type, tuple[str, ...]] = {
    # masks (key_padding_mask, attn_mask) are additive -inf / boolean selections, not data
    nn.MultiheadAttention: ("query", "key", "value"),
    # the initial hidden (and cell) state is data the recurrence computes with
    nn.RNNBase: ("input", "hx"),
    nn.RNNCellBase: ("input", "hx"),
    nn.Bilinear: ("input1", "input2"),
    # ``input`` and ``offsets`` are indices; the per-sample weights multiply the embeddings
    nn.EmbeddingBag: ("per_sample_weights",),
    nn.MaxUnpool1d: ("input",),
    nn.MaxUnpool2d: ("input",),
    nn.MaxUnpool3d: ("input",),
}

#: Argument names that are never data under the default rule (besides every name containing ``mask`` and every
#: name ending in ``_ids``).
NON_DATA_NAMES = frozenset({
    "indices", "index", "offsets", "lengths", "input_lengths", "target_lengths", "positions", "position",
    "target", "targets", "labels", "attn_bias", "attention_bias",
})  # fmt: skip


def is_data_name(name: str) -> bool:
    """Whether the default rule treats an argument of this name as data (see the module docstring)."""
    lower = name.lower()
    return not ("mask" in lower or lower.endswith("_ids") or lower in NON_DATA_NAMES)


def input_names(module: nn.Module) -> tuple[str, ...] | None:
    """The explicit data-argument names of ``module`` (its ``boundfinder_inputs`` or its type's entry in
    :data:`INPUT_ARGUMENTS`), or None where the default rule applies."""
    explicit = getattr(type(module), "boundfinder_inputs", None)
    explicit = module.__dict__.get("boundfinder_inputs", explicit)
    if explicit is not None:
        if isinstance(explicit, str) or not all(isinstance(n, str) for n in explicit):
            raise PolicyError(
                f"{type(module).__name__}.boundfinder_inputs must be a tuple of argument names of its forward, "
                f"got {explicit!r}."
            )
        return tuple(explicit)
    for cls in type(module).__mro__:
        if cls in INPUT_ARGUMENTS:
            return INPUT_ARGUMENTS[cls]
    return None


def _signature(fn: Callable) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a forward without a signature (a C function)
        return None


def _forward_parameters(module: nn.Module, explicit: tuple[str, ...] | None) -> list[inspect.Parameter]:
    """The parameters of ``module.forward`` (without ``self``). Where they do not name every explicit input
    (a subclass whose forward passes ``*args, **kwargs`` on to its base's), those of the nearest class in the
    MRO whose forward does: positions are then read as the base's."""
    params = _signature(module.forward)
    if explicit is not None and (params is None or not set(explicit) <= {p.name for p in params}):
        for cls in type(module).__mro__:
            forward = cls.__dict__.get("forward")
            base = _signature(forward) if forward is not None else None
            if base is not None and set(explicit) <= {p.name for p in base}:
                return base[1:]  # the unbound function's first parameter is self
    if params is None:  # judged as *args and **kwargs would be
        params = [inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                  inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
    return params


class ArgumentSelector:
    """Applies a function to the data arguments of one layer's calls (``args``, ``kwargs`` as a pre-hook sees
    them), leaving every other argument as it is."""

    __slots__ = ("explicit", "keywords", "positional", "rest_keywords", "rest_positional")

    def __init__(self, module: nn.Module) -> None:
        explicit = self.explicit = input_names(module)
        params = _forward_parameters(module, explicit)
        names = {p.name for p in params}
        if explicit is not None:
            unknown = [n for n in explicit if n not in names]
            has_var = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
            if unknown and not has_var:
                raise PolicyError(
                    f"the input arguments of {type(module).__name__} are given as {explicit!r}, but its forward "
                    f"has no argument {unknown[0]!r}; its arguments are {sorted(names)}."
                )

        def data(name: str) -> bool:
            return name in explicit if explicit is not None else is_data_name(name)

        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.positional = tuple(data(p.name) for p in positional)
        var = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
        # arguments caught by *args have no name of their own: data unless explicit names say otherwise
        self.rest_positional = var is not None and (explicit is None or var.name in explicit)
        self.keywords = {p.name: data(p.name) for p in params if p.kind is not p.VAR_POSITIONAL}
        # keywords caught by **kwargs: judged by their own names
        self.rest_keywords = any(p.kind is p.VAR_KEYWORD for p in params)

    def apply(self, fn: Callable[[Any], Any], args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        positional, n = self.positional, len(self.positional)
        args = tuple(
            fn(a) if (positional[i] if i < n else self.rest_positional) else a for i, a in enumerate(args)
        )
        if kwargs:
            kwargs = {k: fn(v) if self._keyword(k) else v for k, v in kwargs.items()}
        return args, kwargs

    def _keyword(self, name: str) -> bool:
        flag = self.keywords.get(name)
        if flag is not None:
            return flag
        if not self.rest_keywords:
            return False  # not an argument of forward at all (forward will raise): nothing to round
        return name in self.explicit if self.explicit is not None else is_data_name(name)
