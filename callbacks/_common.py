"""Shared argument checks and Trainer plumbing for the callbacks (private; one callback per public module)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from boundfinder.errors import PolicyError
from boundfinder.formats import ROUNDING_MODES, Format

log = logging.getLogger("boundfinder.callbacks")

#: Trainer entry points a callback can be active in (``trainer.state.fn``).
STAGES = ("fit", "validate", "test", "predict")
#: Emulation levels (see ``boundfinder.emulation.emulate``).
LEVELS = ("layer", "op", "batch")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise PolicyError(f"`{name}` must be one of {choices}, but got {name}={value!r}.")
    return value


def check_rounding(rounding: Any) -> str:
    return check_choice("rounding", rounding, ROUNDING_MODES)


def check_stages(stages: Any) -> tuple[str, ...]:
    """A non-empty tuple of distinct Trainer entry points, in the caller's order."""
    if isinstance(stages, str):
        stages = (stages,)
    if not isinstance(stages, Iterable):
        raise PolicyError(f"`stages` must be a subset of {STAGES}, but got stages={stages!r}.")
    stages = tuple(stages)
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages or len(set(stages)) != len(stages):
        raise PolicyError(
            f"`stages` must be a non-empty subset of {STAGES} without repeats, but got stages={stages!r}."
        )
    return stages


def check_chunk(accumulate_chunk: Any, level: str) -> int | None:
    if accumulate_chunk is None:
        return None
    if level != "op":
        raise PolicyError(
            f"`accumulate_chunk` splits reductions into rounded chunks, which only the 'op' level emulates; "
            f"got accumulate_chunk={accumulate_chunk!r} with level={level!r}."
        )
    if isinstance(accumulate_chunk, bool) or not isinstance(accumulate_chunk, int) or accumulate_chunk < 1:
        raise PolicyError(f"`accumulate_chunk` must be None or a positive int, but got {accumulate_chunk=!r}.")
    return accumulate_chunk


def check_seed(seed: Any) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise PolicyError(f"`seed` must be None or an int, but got seed={seed!r}.")
    return seed


def own_copy(spec: Any) -> Any:
    """A private deep copy of a policy spec, so that later edits of the caller's dict change nothing here."""
    return copy.deepcopy(dict(spec)) if isinstance(spec, Mapping) else spec


def spec_repr(spec: Any) -> Any:
    """A plain, deterministic rendering of a spec for state keys and logs (formats by name)."""
    if isinstance(spec, Format):
        return str(spec)
    if isinstance(spec, Mapping):
        return {str(k): spec_repr(v) for k, v in spec.items()}
    to_dict = getattr(spec, "to_dict", None)
    return to_dict() if callable(to_dict) else spec


def trainer_stage(trainer: pl.Trainer) -> str | None:
    """``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``: the Trainer entry point now running."""
    fn = trainer.state.fn
    return None if fn is None else str(fn.value)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator on the model's device for stochastic rounding, or None (the core then draws its own)."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


class OpLevelHooks:
    """Lightning hooks that bracket each batch in the op-level rounding context of ``self._driver``.

    Forward and backward of a training batch run inside the context; the optimizer update does not (the
    context is left in ``on_before_optimizer_step``). Validation, test and predict batches run inside it.
    Mixed into callbacks that hold a ``_driver`` (an ``EmulationDriver``); entering is a no-op unless the
    driver emulates at op level.
    """

    _driver: Any

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._driver.enter_ops()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._driver.exit_ops()  # forward and backward are done; the update runs at full precision

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._driver.exit_ops()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._driver.enter_ops()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._driver.exit_ops()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._driver.enter_ops()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._driver.exit_ops()

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._driver.enter_ops()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._driver.exit_ops()


class AttachAtEntryPoints:
    """Calls ``self._attach(trainer, pl_module)`` when fit, validate, test or predict starts: after the strategy
    has put the model on its device, so the callback's hooks and rounding run there."""

    def _attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._attach(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._attach(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._attach(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._attach(trainer, pl_module)
