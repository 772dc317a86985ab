"""``DivergenceGuard``: notice the first non-finite training loss, say where it happened, and stop (or raise)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from boundfinder.callbacks._common import check_choice
from boundfinder.errors import BoundfinderError

__all__ = ["DivergenceGuard", "TrainingDiverged"]

ACTIONS = ("stop", "raise")


class TrainingDiverged(BoundfinderError):
    """The training loss became NaN or infinite (raised by ``DivergenceGuard(action="raise")``)."""


class DivergenceGuard(Callback):
    """Watch the loss of every training batch; at the first NaN or infinite one, record where and act.

    Reduced precision makes training diverge in ways full precision does not (an overflow to inf in a gradient, a
    loss scale that no longer fits), and a diverged run that goes on training only produces NaN weights and
    meaningless accuracy. The guard turns that into a recorded, visible event:

    Args:
        action: ``"stop"`` (default): warn once and stop the fit after this batch (``trainer.should_stop``); the
            model keeps the weights of that step, and :attr:`diverged` says where. ``"raise"``: raise
            :class:`TrainingDiverged` with the step, epoch and loss.

    :attr:`diverged` is None while every loss was finite, else ``{"step", "epoch", "batch", "loss"}`` of the
    first non-finite loss (``step`` is ``trainer.global_step`` after that batch's optimizer step). Batches whose
    ``training_step`` returns None (skipped) are ignored.

    >>> DivergenceGuard().diverged is None
    True
    """

    def __init__(self, action: str = "stop") -> None:
        super().__init__()
        self.action = check_choice("action", action, ACTIONS)
        self.diverged: dict[str, Any] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.diverged = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self.diverged is not None or not isinstance(loss, torch.Tensor) or bool(torch.isfinite(loss).all()):
            return
        value = float(loss.detach().float().reshape(-1)[0]) if loss.numel() else math.nan
        self.diverged = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
                         "batch": int(batch_idx), "loss": value}
        where = f"epoch {trainer.current_epoch}, batch {batch_idx} (global step {trainer.global_step})"
        if self.action == "raise":
            raise TrainingDiverged(f"the training loss is {value} at {where}; training diverged.")
        rank_zero_warn(f"DivergenceGuard: the training loss is {value} at {where}; training stops here.")
        trainer.should_stop = True
