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
    first non-finite loss (``step`` is ``trainer.global_step`` at the end of that batch; ``loss`` its first
    non-finite element). Batches whose ``training_step`` returns None (skipped), and manual optimization that
    returns no loss, are not checked. With several processes (DDP) the decision is reduced over all of them, so
    every process stops (or raises) at the same batch. Lightning's ``min_epochs`` / ``min_steps`` outrank a stop
    request: with them set, training goes on until they are met. The guard keeps no state in checkpoints.

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
        if self.diverged is not None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        bad = isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all())
        # every process takes the same decision, or the others would wait for this one at their next all-reduce
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        value = math.nan
        if bad:
            flat = loss.detach().float().reshape(-1)
            value = float(flat[~torch.isfinite(flat)][0])
        self.diverged = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
                         "batch": int(batch_idx), "loss": value}
        where = (f"epoch {trainer.current_epoch}, batch {batch_idx} (global step {trainer.global_step}"
                 + ("" if bad else ", on another process") + ")")
        if self.action == "raise":
            raise TrainingDiverged(f"the training loss is {value} at {where}; training diverged.")
        rank_zero_warn(f"DivergenceGuard: the training loss is {value} at {where}; training stops here.")
        trainer.should_stop = True
