"""``PrecisionSchedule``: change the emulated precision at given training steps or epochs."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from boundfinder.callbacks._common import (
    LEVELS,
    STAGES,
    OpLevelHooks,
    check_choice,
    check_chunk,
    check_rounding,
    check_seed,
    check_stages,
    make_generator,
    own_copy,
    spec_repr,
    trainer_stage,
)
from boundfinder.callbacks._driver import EmulationDriver, check_fits
from boundfinder.errors import PolicyError
from boundfinder.policy import PrecisionPolicy

__all__ = ["UNITS", "PrecisionSchedule"]

#: What a switch point counts: optimizer steps (``trainer.global_step``) or epochs (``trainer.current_epoch``).
UNITS = ("step", "epoch")


def _policy_bits(policy: PrecisionPolicy | None) -> int:
    """The widest storage width named by a policy; 32 for full precision (no policy)."""
    if policy is None:
        return 32
    return max(fmt.bits for rule in policy.rules for fmt in rule.formats.values())


class PrecisionSchedule(OpLevelHooks, Callback):
    """Emulate ``schedule[p]`` from switch point ``p`` on, until the next switch point.

    Args:
        schedule: ``{switch_point: policy_or_format | None}`` with non-negative int switch points, in any order
            and any direction (low -> high precision as in the study's hypothesis, or high -> low). ``None``
            means full precision. Before the smallest switch point the model runs at full precision.
        unit: ``"step"``: a switch point ``s`` applies from the optimizer step that takes ``global_step`` from
            ``s`` to ``s + 1`` on (its forward, backward and, at ``batch`` level, its update), whatever the
            gradient accumulation; ``"epoch"``: from the start of epoch ``s``.
        level, rounding, stages, accumulate_chunk, seed, roles: as for
            :class:`~boundfinder.callbacks.PrecisionEmulation`. ``validate``/``test``/``predict`` use the phase
            of the Trainer's current position (e.g. the checkpoint's step when ``ckpt_path`` is given).

    Each switch is logged to every logger of the Trainer as the metrics ``precision_phase`` (index into the
    sorted switch points) and ``precision_bits`` (widest format of the phase, 32 for full precision) at the
    current step, and as an info line. The state saved in checkpoints is the current phase; after a resume the
    phase is recomputed from the restored step/epoch, so training continues in the right precision.

    >>> cb = PrecisionSchedule({100: "bf16", 0: "e4m3fn"}, unit="step")
    >>> cb.switch_points
    (0, 100)
    >>> cb.phase_at(99), cb.phase_at(100)
    (0, 1)
    """

    def __init__(
        self,
        schedule: Mapping[int, Any],
        *,
        unit: str = "step",
        level: str = "layer",
        rounding: str = "nearest",
        stages: Iterable[str] = STAGES,
        accumulate_chunk: int | None = None,
        seed: int | None = None,
        roles: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(schedule, Mapping) or not schedule:
            raise PolicyError(
                "`schedule` must be a non-empty dict {switch_point: policy_or_format | None}, "
                f"but got schedule={schedule!r}."
            )
        for point in schedule:
            if isinstance(point, bool) or not isinstance(point, int) or point < 0:
                raise PolicyError(
                    f"switch points must be non-negative ints (steps or epochs), but got {point!r} in {schedule!r}."
                )
        self.unit = check_choice("unit", unit, UNITS)
        self.level = check_choice("level", level, LEVELS)
        self.rounding = check_rounding(rounding)
        self.stages = check_stages(stages)
        self.seed = check_seed(seed)
        self.roles = None if roles is None else ((roles,) if isinstance(roles, str) else tuple(roles))
        self.accumulate_chunk = check_chunk(accumulate_chunk, level)
        items = sorted(schedule.items())
        self.switch_points: tuple[int, ...] = tuple(point for point, _ in items)
        self._specs = tuple(own_copy(spec) for _, spec in items)
        # Built now: a bad format or role in any phase fails at construction, not when its step comes.
        self.policies: tuple[PrecisionPolicy | None, ...] = tuple(
            None if spec is None else PrecisionPolicy.from_spec(spec, rounding=rounding, roles=self.roles)
            for spec in self._specs
        )
        self._driver = EmulationDriver(level, accumulate_chunk=accumulate_chunk)
        self._phase: int | None = None  # phase currently applied; None: nothing applied yet in this run
        self._restored_phase: int | None = None
        #: ``(position, phase)`` for every switch applied in this process, in order.
        self.history: list[tuple[int, int]] = []

    # -- schedule arithmetic --------------------------------------------------------------------------------
    def phase_at(self, position: int) -> int:
        """Index of the phase in force at ``position`` (step or epoch); -1 before the first switch point."""
        return bisect.bisect_right(self.switch_points, position) - 1

    def policy_at(self, position: int) -> PrecisionPolicy | None:
        """The policy in force at ``position``; None means full precision."""
        phase = self.phase_at(position)
        return None if phase < 0 else self.policies[phase]

    def _position(self, trainer: pl.Trainer) -> int:
        return trainer.global_step if self.unit == "step" else trainer.current_epoch

    # -- identity and state -------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        schedule = {p: spec_repr(s) for p, s in zip(self.switch_points, self._specs, strict=True)}
        return self._generate_state_key(
            schedule=schedule,
            unit=self.unit,
            level=self.level,
            rounding=self.rounding,
            stages=self.stages,
            roles=self.roles,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self._phase, "switch_points": list(self.switch_points), "unit": self.unit}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("switch_points") != list(self.switch_points) or state_dict.get("unit") != self.unit:
            rank_zero_warn(
                f"PrecisionSchedule: the checkpoint's schedule ({state_dict.get('switch_points')} per "
                f"{state_dict.get('unit')}) differs from this one ({list(self.switch_points)} per {self.unit}); "
                "the phase follows this schedule at the restored position."
            )
        self._restored_phase = state_dict.get("phase")

    # -- setup / teardown -----------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage in self.stages:
            for policy in self.policies:
                if policy is not None:  # every phase must fit the model at this level, not only the first
                    check_fits(pl_module, policy, self.level, self.accumulate_chunk)

    def _sync(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply the phase of the Trainer's current position if it is not the one applied."""
        stage = trainer_stage(trainer)
        if stage not in self.stages:
            return
        position = self._position(trainer)
        phase = self.phase_at(position)
        if phase == self._phase:
            return
        resumed = self._phase is None and self._restored_phase is not None and phase == self._restored_phase
        self._driver.detach()
        policy = None if phase < 0 else self.policies[phase]
        if policy is not None:
            self._driver.attach(
                pl_module,
                policy,
                trainer=trainer,
                training=stage == "fit",
                generator=make_generator(self.seed, pl_module.device),
            )
        first = self._phase is None
        self._phase = phase
        self._restored_phase = None
        self.history.append((position, phase))
        label = "full precision" if policy is None else spec_repr(self._specs[phase])
        if resumed:
            rank_zero_info(f"PrecisionSchedule: resumed at {self.unit} {position} in phase {phase} ({label}).")
            return
        if first and phase < 0:
            return  # starting at full precision before the first switch point is not a switch
        rank_zero_info(f"PrecisionSchedule: {self.unit} {position}: phase {phase} ({label}), {self.level} level.")
        if stage == "fit":
            metrics = {"precision_phase": float(phase), "precision_bits": float(_policy_bits(policy))}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _release(self) -> None:
        self._driver.detach()
        self._phase = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release()

    # -- per batch: switch (step unit), then OpLevelHooks brackets op-level rounding -----------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(trainer, pl_module)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

