"""Precision policies: which number format each tensor role of each layer of a model is rounded to.

A :class:`PrecisionPolicy` is data: an ordered tuple of :class:`Rule` objects plus a rounding mode. A rule selects
modules by qualified-name pattern (``fnmatch``: ``"features.*"``, ``"*attn*"``, ``"fc1"``) and/or by module type,
and gives a format per tensor role (see :data:`ROLES`). :meth:`PrecisionPolicy.resolve` turns a policy into the
concrete plan ``{module name: {role: format}}`` for one model, and rejects everything that does not fit that
model with a :class:`~boundfinder.errors.PolicyError`. Emulation (``boundfinder.emulation``) executes the plan.

>>> import torch.nn as nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> policy = PrecisionPolicy.from_spec({"0": "e4m3fn", "2": {"weight": "int8", "activation": "e5m2"}})
>>> plan = policy.resolve(model)
>>> sorted(plan)
['0', '2']
>>> {role: str(fmt) for role, fmt in plan["2"].items()}
{'weight': 'int8', 'activation': 'e5m2'}
>>> PrecisionPolicy.from_dict(policy.to_dict()) == policy
True
"""

from __future__ import annotations

import fnmatch
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from boundfinder.errors import BoundfinderError, PolicyError
from boundfinder.formats import ROUNDING_MODES, BinaryFormat, BlockFormat, Format, parse_format

__all__ = [
    "FORWARD_ROLES",
    "GRADIENT_ROLES",
    "PARAMETER_ROLES",
    "ROLES",
    "PrecisionPolicy",
    "Rule",
    "layer_modules",
]

#: Every tensor role a policy can give a format to.
#:
#: - ``weight``, ``bias``: the module's own parameters (a parameter whose name ends in ``bias`` has the role
#:   ``bias``, every other direct parameter ``weight``), as used in forward (layer level) or as stored after
#:   each optimizer step (batch level);
#: - ``input``: the floating-point tensors passed to the module's forward; ``activation``: its outputs;
#: - ``grad_output``: the gradient with respect to the module's outputs, as it enters the module's backward;
#:   ``grad_input``: the gradient with respect to its inputs, as it leaves the module's backward;
#: - ``weight_grad``: the accumulated ``.grad`` of the module's parameters;
#: - ``optimizer_state``: the optimizer's floating-point state tensors of those parameters (batch level).
ROLES = ("weight", "bias", "input", "activation", "grad_output", "grad_input", "weight_grad", "optimizer_state")
PARAMETER_ROLES = ("weight", "bias")
FORWARD_ROLES = ("input", "activation")
GRADIENT_ROLES = ("grad_output", "grad_input", "weight_grad")

# A sign is not a usable gradient or optimizer state: binarising them destroys the magnitude that SGD and Adam
# need, and BinaryNet itself keeps gradients real-valued. Integer affine formats are accepted everywhere (the
# 8-bit CNN of the study quantizes output gradients to int8).
_ROLES_REJECTING_BINARY = (*GRADIENT_ROLES, "optimizer_state")


def _format_for_role(role: str, value: Any, where: str) -> Format:
    if role not in ROLES:
        raise PolicyError(f"{where}: unknown tensor role {role!r}; valid roles are {', '.join(ROLES)}.")
    try:
        fmt = parse_format(value)
    except BoundfinderError as exc:
        raise PolicyError(f"{where}: role {role!r} has an invalid format {value!r}: {exc}") from exc
    if isinstance(fmt, BinaryFormat) and role in _ROLES_REJECTING_BINARY:
        raise PolicyError(
            f"{where}: format {fmt} is not valid for role {role!r}: binary formats keep only the sign, which "
            f"is usable for weights, biases, inputs and activations only (BinaryNet keeps "
            f"{', '.join(_ROLES_REJECTING_BINARY)} real-valued). Pass roles=(...) or a {{role: format}} dict."
        )
    return fmt


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True, kw_only=True)
class Rule:
    """Give formats per tensor role to the layers selected by a name pattern and/or a module type.

    ``pattern`` is matched with :func:`fnmatch.fnmatchcase` against the qualified module name
    (``model.named_modules()`` names, e.g. ``"features.0"``); a layer is selected when its own name or the name of
    one of its ancestors matches, so ``"features"`` selects every layer inside ``features``. ``module_type`` is a
    class (``isinstance`` test) or a class name: either the bare name (``"Conv2d"``) or the dotted path
    (``"torch.nn.modules.conv.Conv2d"``), matched against the classes in the module's MRO. A rule with neither
    selects every layer. ``formats`` maps roles (:data:`ROLES`) to formats or format names.

    >>> Rule(pattern="fc*", formats={"weight": "e4m3fn"}).formats["weight"].__class__.__name__
    'FloatFormat'
    """

    pattern: str | None = None
    module_type: type | str | None = None
    formats: Mapping[str, Format] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pattern is not None and not isinstance(self.pattern, str):
            # "" is the root module's name: a model that is a single layer (an nn.Linear) is selected by it
            raise PolicyError(f"Rule.pattern must be a string or None, got {self.pattern!r}.")
        if self.module_type is not None and not (
            (isinstance(self.module_type, type) and issubclass(self.module_type, nn.Module))
            or (isinstance(self.module_type, str) and self.module_type)
        ):
            raise PolicyError(
                f"Rule.module_type must be an nn.Module subclass, a class name or None, got {self.module_type!r}."
            )
        if not isinstance(self.formats, Mapping) or not self.formats:
            raise PolicyError(
                f"Rule.formats must be a non-empty mapping of role -> format (roles: {', '.join(ROLES)}), "
                f"got {self.formats!r}."
            )
        where = f"rule {self.describe()}"
        parsed = {role: _format_for_role(role, value, where) for role, value in self.formats.items()}
        # Keep role order canonical so that equal rules compare and serialise equally; freeze the mapping so a
        # caller's dict is neither kept nor mutable through the rule.
        ordered = {role: parsed[role] for role in ROLES if role in parsed}
        object.__setattr__(self, "formats", types.MappingProxyType(ordered))

    def describe(self) -> str:
        """A short human-readable label used in error messages, e.g. ``pattern='fc*'``."""
        parts = []
        if self.pattern is not None:
            parts.append(f"pattern={self.pattern!r}")
        if self.module_type is not None:
            name = self.module_type if isinstance(self.module_type, str) else _type_name(self.module_type)
            parts.append(f"module_type={name!r}")
        return "(" + (", ".join(parts) or "every layer") + ")"

    def selects(self, name: str, module: nn.Module) -> bool:
        """Whether this rule applies to the layer ``name`` (its own name or an ancestor's matches)."""
        if self.module_type is not None:
            if isinstance(self.module_type, type):
                if not isinstance(module, self.module_type):
                    return False
            else:
                names = {c.__name__ for c in type(module).__mro__} | {_type_name(c) for c in type(module).__mro__}
                if self.module_type not in names:
                    return False
        if self.pattern is None:
            return True
        return any(fnmatch.fnmatchcase(prefix, self.pattern) for prefix in _name_and_ancestors(name))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: formats as their names, a module type as its dotted class path."""
        module_type = self.module_type
        if isinstance(module_type, type):
            module_type = _type_name(module_type)
        return {
            "pattern": self.pattern,
            "module_type": module_type,
            "formats": {role: str(fmt) for role, fmt in self.formats.items()},
        }


def _name_and_ancestors(name: str) -> list[str]:
    if not name:
        return [""]
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def layer_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules emulation rounds at: those without children, plus any module that owns parameters directly.

    Containers (``nn.Sequential``, a LightningModule holding layers) are skipped so that a tensor is rounded once
    per layer boundary, not once per nesting level.

    >>> sorted(layer_modules(nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))))
    ['0', '1.0']
    """
    layers = {}
    for name, module in model.named_modules():
        has_children = next(iter(module.children()), None) is not None
        owns_parameters = next(iter(module.parameters(recurse=False)), None) is not None
        if not has_children or owns_parameters:
            layers[name] = module
    return layers


def _parse_roles(roles: Iterable[str] | None) -> tuple[str, ...]:
    if roles is None:
        return ROLES
    if isinstance(roles, str):
        roles = (roles,)
    roles = tuple(roles)
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise PolicyError(f"roles must be a non-empty subset of {', '.join(ROLES)}; got {roles!r}.")
    return roles


@dataclass(frozen=True, kw_only=True)
class PrecisionPolicy:
    """An ordered set of :class:`Rule` objects plus the rounding mode used for every rounding.

    Build one from a compact spec with :meth:`from_spec`, serialise with :meth:`to_dict` / :meth:`from_dict`,
    and check it against a model with :meth:`resolve`.

    >>> PrecisionPolicy.from_spec("e5m2").rules[0].describe()
    '(every layer)'
    """

    rules: tuple[Rule, ...]
    rounding: str = "nearest"

    def __post_init__(self) -> None:
        rules = self.rules
        if isinstance(rules, Rule):
            rules = (rules,)
        if not isinstance(rules, Iterable) or isinstance(rules, (str, Mapping)):
            raise PolicyError(f"PrecisionPolicy.rules must be a sequence of Rule objects, got {rules!r}.")
        rules = tuple(rules)
        bad = [r for r in rules if not isinstance(r, Rule)]
        if bad or not rules:
            raise PolicyError(
                f"PrecisionPolicy.rules must be a non-empty sequence of Rule objects, got {self.rules!r}."
            )
        object.__setattr__(self, "rules", rules)
        if self.rounding not in ROUNDING_MODES:
            raise PolicyError(
                f"PrecisionPolicy.rounding must be one of {', '.join(ROUNDING_MODES)}, got {self.rounding!r}."
            )

    @classmethod
    def from_spec(
        cls, spec: Any, *, rounding: str = "nearest", roles: Iterable[str] | None = None
    ) -> PrecisionPolicy:
        """Build a policy from a compact spec.

        - a format name or :class:`Format` (``"e8m3"``): every layer, every role (or only ``roles``);
        - a dict ``{pattern: format}`` or ``{pattern: {role: format}}``: those layers, every role (or only
          ``roles``) for a plain format, the given roles for a role dict;
        - a :class:`PrecisionPolicy`: returned as is (``rounding`` and ``roles`` are then not applied).

        >>> p = PrecisionPolicy.from_spec("e4m3fn", roles=("weight", "activation"), rounding="stochastic")
        >>> sorted(p.rules[0].formats), p.rounding
        (['activation', 'weight'], 'stochastic')
        """
        if isinstance(spec, PrecisionPolicy):
            return spec
        role_tuple = _parse_roles(roles)
        if isinstance(spec, (str, Format)):
            return cls(rules=(Rule(formats=dict.fromkeys(role_tuple, spec)),), rounding=rounding)
        if isinstance(spec, Mapping):
            if not spec:
                raise PolicyError("a policy spec dict must name at least one layer pattern, got {}.")
            rules = []
            for pattern, value in spec.items():
                if not isinstance(pattern, str):
                    raise PolicyError(f"policy spec keys must be layer-name patterns (str), got {pattern!r}.")
                if isinstance(value, Mapping):
                    formats = dict(value)
                elif isinstance(value, (str, Format)):
                    formats = dict.fromkeys(role_tuple, value)
                else:
                    raise PolicyError(
                        f"policy spec value for {pattern!r} must be a format, a format name or a "
                        f"{{role: format}} dict, got {value!r}."
                    )
                rules.append(Rule(pattern=pattern, formats=formats))
            return cls(rules=tuple(rules), rounding=rounding)
        raise PolicyError(
            "a policy spec must be a format name, a Format, a {pattern: format | {role: format}} dict or a "
            f"PrecisionPolicy, got {type(spec).__name__}: {spec!r}."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (formats as names); :meth:`from_dict` reads it back."""
        return {"rounding": self.rounding, "rules": [rule.to_dict() for rule in self.rules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrecisionPolicy:
        """Inverse of :meth:`to_dict`. Module types come back as dotted class-path strings."""
        if not isinstance(data, Mapping) or "rules" not in data:
            raise PolicyError(f"PrecisionPolicy.from_dict needs a mapping with a 'rules' list, got {data!r}.")
        rules = []
        for item in data["rules"]:
            if not isinstance(item, Mapping) or set(item) - {"pattern", "module_type", "formats"}:
                raise PolicyError(
                    "each rule must be a mapping with keys among pattern, module_type, formats; "
                    f"got {item!r}."
                )
            rules.append(
                Rule(
                    pattern=item.get("pattern"),
                    module_type=item.get("module_type"),
                    formats=item.get("formats", {}),
                )
            )
        return cls(rules=tuple(rules), rounding=data.get("rounding", "nearest"))

    def resolve(self, model: nn.Module) -> dict[str, dict[str, Format]]:
        """The plan for ``model``: ``{layer name: {role: format}}`` for every selected layer.

        Layers are :func:`layer_modules` (leaves, and modules owning parameters). A layer without a tensor for
        a role (a ``ReLU`` has no ``weight``) simply has nothing to round for it.

        Raises :class:`PolicyError` when a rule's pattern matches no module of the model (the message lists the
        module names that exist), when a rule selects no layer, when two rules give different formats to the
        same layer and role, or when no layer is selected at all.
        """
        if not isinstance(model, nn.Module):
            raise PolicyError(f"a policy resolves against an nn.Module, got {type(model).__name__}.")
        all_names = [name for name, _ in model.named_modules()]
        layers = layer_modules(model)
        plan: dict[str, dict[str, Format]] = {}
        source: dict[tuple[str, str], Rule] = {}
        for rule in self.rules:
            if rule.pattern is not None and not any(
                fnmatch.fnmatchcase(name, rule.pattern) for name in all_names
            ):
                raise PolicyError(
                    f"rule {rule.describe()} matches no module of {type(model).__name__}; the modules are: "
                    f"{_list_names(all_names)}."
                )
            selected = [name for name, module in layers.items() if rule.selects(name, module)]
            if not selected:
                raise PolicyError(
                    f"rule {rule.describe()} selects no layer of {type(model).__name__}; the layers are: "
                    f"{_list_names([f'{n} ({type(m).__name__})' for n, m in layers.items()])}."
                )
            for name in selected:
                entry = plan.setdefault(name, {})
                for role, fmt in rule.formats.items():
                    if role in entry and entry[role] != fmt:
                        raise PolicyError(
                            f"conflicting rules for layer {name!r}, role {role!r}: rule "
                            f"{source[(name, role)].describe()} gives {entry[role]} but rule {rule.describe()} "
                            f"gives {fmt}. Make the patterns disjoint or give both the same format."
                        )
                    entry[role] = fmt
                    source[(name, role)] = rule
        if not plan:  # only reachable with an empty model; kept for a clear message
            raise PolicyError(f"the policy selects no layer of {type(model).__name__}.")
        # Per-channel and block formats work along a tensor axis, which the parameter must have (a block format
        # treats a 0-d tensor as 1-d). Parameter-shaped roles are checked here; activations only at run time.
        for name, roles in plan.items():
            for pname, param in layers[name].named_parameters(recurse=False):
                for role in (parameter_role(pname), "weight_grad", "optimizer_state"):
                    fmt = roles.get(role)
                    axis = getattr(fmt, "axis", None)
                    dim = max(param.dim(), 1) if isinstance(fmt, BlockFormat) else param.dim()
                    if axis is not None and not -dim <= axis < dim:
                        raise PolicyError(
                            f"layer {name!r}: format {fmt} for role {role!r} works along axis {axis}, but "
                            f"parameter {pname!r} has shape {tuple(param.shape)}; `-{dim} <= axis < {dim}` must "
                            "hold. Give this layer a per-tensor format."
                        )
        return plan


def parameter_role(name: str) -> str:
    """The role of a direct parameter by its name: ``bias`` for names ending in ``bias``, else ``weight``."""
    return "bias" if name.endswith("bias") else "weight"


def _list_names(names: list[str], limit: int = 60) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown
