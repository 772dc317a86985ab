"""Translate Trainer events into calls on one :class:`boundfinder.emulation.Emulation` handle (private).

Lifecycle, shared by :class:`PrecisionEmulation` and :class:`PrecisionSchedule`:

- ``attach`` is called from the ``on_*_start`` hook of the Trainer entry point, i.e. after the strategy has
  moved the model to its device, so every rounding runs where the model lives;
- ``op`` level: ``enter_ops`` / ``exit_ops`` bracket each batch (forward and backward); the optimizer update
  itself runs outside, because ``exit_ops`` is also called from ``on_before_optimizer_step``;
- ``batch`` level in ``fit``: a post-step hook on every optimizer of the Trainer calls
  ``after_optimizer_step`` after each ``optimizer.step()`` (also under manual optimization); parameters are
  also rounded once when the level is attached. In ``validate`` / ``test`` / ``predict`` the parameters are
  rounded at attach and their real values put back at detach, so evaluation leaves the model unchanged;
- ``detach`` (from ``teardown`` and ``on_exception``) exits the op context, removes the optimizer hooks and
  the emulation; it is idempotent.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from boundfinder.emulation import emulate
from boundfinder.policy import PrecisionPolicy


def check_fits(model: nn.Module, policy: PrecisionPolicy, level: str, accumulate_chunk: int | None) -> None:
    """Raise the PolicyError that applying ``policy`` at ``level`` would raise, without leaving anything behind.

    Resolving the policy catches unknown patterns and conflicts; applying it also catches what only a level
    rejects (the op level needs one format for every layer, a level may use none of the policy's roles).
    Applying and removing at once is exact: ``Emulation.remove`` restores the model, and nothing is rounded
    until a forward pass or an optimizer step.
    """
    kwargs: dict[str, Any] = {"level": level}
    if level == "op" and accumulate_chunk is not None:
        kwargs["accumulate_chunk"] = accumulate_chunk
    emulate(model, policy, **kwargs).remove()


class EmulationDriver:
    """Owns at most one emulation handle at a time, plus its op context and optimizer hooks."""

    def __init__(self, level: str, *, accumulate_chunk: int | None = None) -> None:
        self.level = level
        self.accumulate_chunk = accumulate_chunk
        self.handle: Any = None
        self._ops: Any = None  # the entered op-level context manager, if any
        self._step_hooks: list[Any] = []
        self._saved: list[tuple[Any, Any]] = []  # (parameter, value before evaluation-time rounding)

    @property
    def attached(self) -> bool:
        return self.handle is not None

    def attach(
        self,
        model: nn.Module,
        policy: PrecisionPolicy,
        *,
        trainer: pl.Trainer | None,
        training: bool,
        generator: Any = None,
    ) -> None:
        self.detach()
        kwargs: dict[str, Any] = {"level": self.level, "generator": generator}
        if self.level == "op" and self.accumulate_chunk is not None:
            kwargs["accumulate_chunk"] = self.accumulate_chunk
        self.handle = emulate(model, policy, **kwargs)
        if self.level == "batch":
            if training and trainer is not None:
                for optimizer in trainer.optimizers:
                    self._step_hooks.append(optimizer.register_step_post_hook(self._after_step))
            if not training:
                # Evaluation must not change the model: keep the real values and put them back in detach().
                self._saved = [(p, p.detach().clone()) for p in model.parameters()]
            # The stored parameters are what a parameter server holds: on the grid from the start of training,
            # and for evaluation the model is evaluated with the parameters it would have stored.
            self.handle.round_parameters_now()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.handle is not None:
            self.handle.after_optimizer_step(optimizer)

    def enter_ops(self) -> None:
        if self.level == "op" and self.handle is not None and self._ops is None:
            ctx = self.handle.op_context()
            ctx.__enter__()
            self._ops = ctx

    def exit_ops(self) -> None:
        if self._ops is not None:
            ctx, self._ops = self._ops, None
            ctx.__exit__(None, None, None)

    def detach(self) -> None:
        self.exit_ops()
        while self._step_hooks:
            self._step_hooks.pop().remove()
        if self.handle is not None:
            handle, self.handle = self.handle, None
            handle.remove()
        if self._saved:
            with torch.no_grad():
                for param, value in self._saved:
                    param.copy_(value)
            self._saved = []
