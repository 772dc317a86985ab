"""``PrecisionEmulation``: train or evaluate an unmodified LightningModule under a reduced-precision policy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from boundfinder.callbacks._common import (
    LEVELS,
    STAGES,
    AttachAtEntryPoints,
    OpLevelHooks,
    check_choice,
    check_chunk,
    check_rounding,
    check_seed,
    check_stages,
    log,
    make_generator,
    own_copy,
    spec_repr,
    trainer_stage,
)
from boundfinder.callbacks._driver import EmulationDriver, check_fits
from boundfinder.policy import PrecisionPolicy

__all__ = ["PrecisionEmulation"]


class PrecisionEmulation(AttachAtEntryPoints, OpLevelHooks, Callback):
    """Apply a precision policy to the model for the chosen Trainer entry points.

    Args:
        policy_or_format: a format name (``"e4m3fn"``: every layer, every role), a dict
            ``{module-name pattern: format | {role: format}}``, or a :class:`~boundfinder.policy.PrecisionPolicy`.
        level: ``"layer"`` (weights as used, module inputs/outputs and gradients through matched modules),
            ``"op"`` (every floating-point op's output, forward and backward, inside each batch; the optimizer
            update runs outside) or ``"batch"`` (parameters, and optimizer state if the policy names the
            ``optimizer_state`` role, after every optimizer step; evaluation entry points round the parameters
            once at their start).
        rounding: rounding mode (``"nearest"``, ``"truncate"``, ``"stochastic"``, ``"up"``, ``"down"``); ignored
            when ``policy_or_format`` is already a ``PrecisionPolicy`` (which carries its own).
        stages: Trainer entry points the emulation is active in. ``"fit"`` covers the validation loop inside
            fit (and its sanity check); ``"validate"`` means ``trainer.validate``.
        accumulate_chunk: ``op`` level only: split matmul/conv reductions into chunks of this many terms and
            round the accumulator after each chunk (1 = after every multiply-add).
        seed: seed for a generator on the model's device used by stochastic rounding (None: unseeded).
        roles: the tensor roles a plain format applies to (e.g. ``("weight", "bias")``); None: every role.
            Role dicts in the spec name their roles themselves.

    Arguments are checked here; the policy is checked against the model in ``setup`` (an unknown layer pattern
    raises :class:`~boundfinder.errors.PolicyError` listing the layers that exist). Hooks are attached when the
    entry point starts (after the model is on its device) and removed in ``teardown`` and ``on_exception``.

    >>> cb = PrecisionEmulation({"features.*": "e4m3fn"}, level="layer")
    >>> cb.level, cb.stages
    ('layer', ('fit', 'validate', 'test', 'predict'))
    >>> PrecisionEmulation("e4m3fn", level="tile")
    Traceback (most recent call last):
    ...
    boundfinder.errors.PolicyError: `level` must be one of ('layer', 'op', 'batch'), but got level='tile'.
    """

    def __init__(
        self,
        policy_or_format: Any,
        *,
        level: str = "layer",
        rounding: str = "nearest",
        stages: Iterable[str] = STAGES,
        accumulate_chunk: int | None = None,
        seed: int | None = None,
        roles: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        self.level = check_choice("level", level, LEVELS)
        self.rounding = check_rounding(rounding)
        self.stages = check_stages(stages)
        self.seed = check_seed(seed)
        self.roles = None if roles is None else ((roles,) if isinstance(roles, str) else tuple(roles))
        check_chunk(accumulate_chunk, level)
        self.accumulate_chunk = accumulate_chunk
        self._spec = own_copy(policy_or_format)
        # Built now so that a bad format, role or pattern syntax fails at construction, not mid-fit.
        self.policy = PrecisionPolicy.from_spec(self._spec, rounding=rounding, roles=self.roles)
        self._driver = EmulationDriver(level, accumulate_chunk=accumulate_chunk)

    # -- identity and state -------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            policy=spec_repr(self._spec),
            level=self.level,
            rounding=self.rounding,
            stages=self.stages,
            roles=self.roles,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.to_dict(), "level": self.level}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The policy is configuration, not progress: the constructor's wins. A different one in the checkpoint
        # is legitimate (e.g. fine-tuning at another precision) but worth a line in the log.
        saved = {"policy": state_dict.get("policy"), "level": state_dict.get("level")}
        if saved != self.state_dict():
            rank_zero_warn(
                f"PrecisionEmulation: the checkpoint was written under {saved}, resuming under "
                f"{self.state_dict()}."
            )

    # -- setup / teardown -----------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage in self.stages:
            check_fits(pl_module, self.policy, self.level, self.accumulate_chunk)  # PolicyError names the layers

    def _attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stage = trainer_stage(trainer)
        if stage not in self.stages or self._driver.attached:
            return
        self._driver.attach(
            pl_module,
            self.policy,
            trainer=trainer,
            training=stage == "fit",
            generator=make_generator(self.seed, pl_module.device),
        )
        log.info("PrecisionEmulation: %s level active for %s on %s", self.level, stage, pl_module.device)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._driver.detach()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._driver.detach()

    # op level: OpLevelHooks brackets each batch

