"""``emulate(model, policy_or_format, level=...)`` and the :class:`Emulation` handle it returns."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
import torch.nn as nn

from boundfinder.errors import PolicyError
from boundfinder.formats import ROUNDING_MODES, BinaryFormat, Format, IntFormat
from boundfinder.policy import PrecisionPolicy, layer_modules

from .batch import BatchEmulator
from .layer import LayerEmulator
from .op import OpEmulator

__all__ = ["LEVELS", "LEVEL_ROLES", "Emulation", "emulate"]

LEVELS = ("op", "layer", "batch")
#: The roles each level acts on; other roles of a policy are ignored at that level.
LEVEL_ROLES = {
    "op": ("weight", "bias", "activation", "grad_output", "grad_input"),
    "layer": ("weight", "bias", "input", "activation", "grad_output", "grad_input", "weight_grad"),
    "batch": ("weight", "bias", "optimizer_state"),
}


class Emulation:
    """A policy applied to a model at one level; returned by :func:`emulate`. Also a context manager.

    >>> import torch, torch.nn as nn
    >>> model = nn.Linear(3, 2)
    >>> before = model(torch.ones(1, 3))
    >>> with emulate(model, "e4m3fn", level="layer") as em:
    ...     y = model(torch.ones(1, 3))
    >>> em.active, torch.equal(model(torch.ones(1, 3)), before)
    (False, True)
    """

    def __init__(self, model: nn.Module, policy: PrecisionPolicy, level: str, plan: dict[str, dict[str, Format]],
                 *, accumulate_chunk: int | None, generator: torch.Generator | None,
                 optimizer: torch.optim.Optimizer | None) -> None:
        self.model = model
        self.policy = policy
        self.level = level
        self.plan = plan
        self.accumulate_chunk = accumulate_chunk
        self._layer: LayerEmulator | None = None
        self._op: OpEmulator | None = None
        self._batch: BatchEmulator | None = None
        # Each emulator undoes its own partial installation when it fails; this undoes the parts built before.
        try:
            if level == "layer":
                self._layer = LayerEmulator(model, plan, policy.rounding, generator, roles=LEVEL_ROLES["layer"])
            elif level == "op":
                fwd, bwd = _op_formats(plan, model)
                self._op = OpEmulator(model, plan, fwd, bwd, policy.rounding, generator, accumulate_chunk)
            else:
                self._batch = BatchEmulator(model, plan, policy.rounding, generator)
                if optimizer is not None:
                    self._batch.watch(optimizer)
        except BaseException:
            self.remove()
            raise
        self.active = True

    def remove(self) -> None:
        """Take every hook away; the model, its parameters and its forward are as before ``emulate``.

        Idempotent. At batch level, rounding already applied to parameters by training steps stays (that is
        the training result); parameters that were kept as views into one buffer (see ``emulation/flat.py``)
        get their own storage back, with the same values; nothing else was ever changed.
        """
        for part in (self._layer, self._op, self._batch):
            if part is not None:
                part.remove()
        self.active = False

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Batch level: round the parameters in place, and the optimizer's state when the policy has an
        ``optimizer_state`` format and ``optimizer`` is given. No-op at the other levels or after removal."""
        if self._batch is not None and self.active:
            self._batch.after_optimizer_step(optimizer)

    def round_parameters_now(self) -> None:
        """Round the parameters the batch level rounds, now (e.g. after loading a checkpoint). No-op at the other
        levels or after removal."""
        if self._batch is not None and self.active:
            self._batch.round_parameters()

    def op_context(self) -> contextlib.AbstractContextManager:
        """Op level: a context in which every floating-point op is rounded (wrap the training step *and* the
        backward in it to also round the loss and everything outside the model). A null context at the other
        levels or after removal; without it the model's own forward and backward are still rounded."""
        if self._op is not None and self.active:
            return self._op.context()
        return contextlib.nullcontext()

    def summary(self) -> dict[str, Any]:
        """JSON-safe description: level, policy, accumulate_chunk and the resolved ``{layer: {role: format}}``."""
        roles = LEVEL_ROLES[self.level]
        return {
            "level": self.level,
            "policy": self.policy.to_dict(),
            "accumulate_chunk": self.accumulate_chunk,
            "layers": {
                name: {role: str(fmt) for role, fmt in formats.items() if role in roles}
                for name, formats in self.plan.items()
            },
        }

    def __enter__(self) -> Emulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"Emulation(level={self.level!r}, layers={len(self.plan)}, {state})"


def _op_formats(plan: dict[str, dict[str, Format]], model: nn.Module) -> tuple[Format | None, Format | None]:
    missing = [name for name in layer_modules(model) if name not in plan]
    if missing:
        raise PolicyError(
            "level 'op' rounds every operation of the model's forward and backward, so its policy must select "
            f"every layer, but it leaves out {missing[:20]}; use level='layer' for per-layer formats."
        )
    found: dict[str, set[Format]] = {"activation": set(), "gradient": set()}
    for formats in plan.values():
        if "activation" in formats:
            found["activation"].add(formats["activation"])
        found["gradient"].update(formats[r] for r in ("grad_output", "grad_input") if r in formats)
    for what, fmts in found.items():
        if len(fmts) > 1:
            raise PolicyError(
                f"level 'op' rounds every {what} op output with one format, but the policy gives "
                f"{sorted(map(str, fmts))}; give one format, or use level='layer' for per-layer formats."
            )
        for fmt in fmts:
            if isinstance(fmt, (IntFormat, BinaryFormat)):
                raise PolicyError(
                    f"format {fmt} is not valid for op-level {what} rounding: integer affine and binary formats "
                    "calibrate a scale per tensor and are meant for weights/activations at level 'layer'."
                )
    fwd = next(iter(found["activation"]), None)
    bwd = next(iter(found["gradient"]), None)
    return fwd, bwd


def emulate(
    model: nn.Module,
    policy_or_format: Any,
    *,
    level: str = "layer",
    rounding: str | None = None,
    accumulate_chunk: int | None = None,
    generator: torch.Generator | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Emulation:
    """Apply a precision policy to ``model`` at ``level`` (``"op"``, ``"layer"`` or ``"batch"``).

    ``policy_or_format``: anything :meth:`PrecisionPolicy.from_spec` accepts (``"e8m3"``,
    ``{"features.*": "e4m3fn"}``, a policy). ``rounding`` overrides the policy's rounding mode;
    ``generator`` feeds stochastic rounding. ``accumulate_chunk=k`` (op level only) rounds matmul/conv
    accumulators every ``k`` products. ``optimizer`` (batch level): round after each of its steps automatically
    (otherwise call :meth:`Emulation.after_optimizer_step`). Undo with :meth:`Emulation.remove` or a ``with``
    block. Raises :class:`PolicyError` for an invalid level, chunk or a policy that does not fit the model.

    >>> import torch, torch.nn as nn
    >>> from boundfinder import quantize
    >>> model = nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> em = emulate(model, "e8m3", level="batch", optimizer=opt)
    >>> model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
    >>> torch.equal(quantize(model.weight, "e8m3"), model.weight)
    True
    >>> em.remove()
    """
    if level not in LEVELS:
        raise PolicyError(f"level must be one of {', '.join(LEVELS)}, got {level!r}.")
    if not isinstance(model, nn.Module):
        raise PolicyError(f"emulate needs an nn.Module, got {type(model).__name__}.")
    policy = PrecisionPolicy.from_spec(policy_or_format)
    if rounding is not None:
        if rounding not in ROUNDING_MODES:
            raise PolicyError(f"rounding must be one of {', '.join(ROUNDING_MODES)} or None, got {rounding!r}.")
        policy = dataclasses.replace(policy, rounding=rounding)
    if accumulate_chunk is not None:
        if level != "op":
            raise PolicyError(f"accumulate_chunk applies to level 'op' only, got level={level!r}.")
        if isinstance(accumulate_chunk, bool) or not isinstance(accumulate_chunk, int) or accumulate_chunk < 1:
            raise PolicyError(f"accumulate_chunk must be a positive int or None, got {accumulate_chunk!r}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise PolicyError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
    if optimizer is not None and level != "batch":
        raise PolicyError(f"optimizer= applies to level 'batch' only, got level={level!r}.")
    plan = policy.resolve(model)
    used = LEVEL_ROLES[level]
    if not any(role in used for formats in plan.values() for role in formats):
        raise PolicyError(
            f"the policy gives formats only to roles that level {level!r} does not use; level {level!r} "
            f"rounds {', '.join(used)}."
        )
    return Emulation(model, policy, level, plan, accumulate_chunk=accumulate_chunk, generator=generator,
                     optimizer=optimizer)
