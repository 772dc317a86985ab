"""Per-item measurements of one search configuration on one split (validation or test).

A configuration gives each layer group a format. Two ways to measure it:

- :class:`Rounded` (post-training precision): the full-precision model of each seed (or the one trained model
  given) runs under the formats;
- :class:`Switched` (low -> high precision training, the 2017 study's switching hypothesis): a model per seed is
  trained under the formats from epoch 0 until the configuration's switch epoch and at full precision from
  then on, then measured at full precision. Switch epoch 0 is full-precision training throughout: exactly the
  baseline models, which are reused, not trained again.

Both return ``correct[s, i]``: item ``i`` right with seed ``s``, next to ``baseline[s, i]`` of the full-precision
model of the same seed. What "right" means is the experiment's score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from boundfinder.errors import BoundfinderError
from boundfinder.experiment import Experiment
from boundfinder.policy import PrecisionPolicy
from boundfinder.search.sweep import _full_precision_diverged, _measure, _measure_under, _train

__all__ = ["Rounded", "Switched", "trained"]


def trained(exp: Experiment, seeds: Sequence[int], epochs: int, callbacks: Callable[[int], list] | None = None,
            diverged: list[dict[str, Any]] | None = None) -> list[torch.nn.Module]:
    """One model per seed, each built and trained from its seed alone (``callbacks(seed)`` attached); for an
    experiment whose model is trained already, that model (``seeds`` is then empty).

    A training loss that becomes NaN or infinite stops that model's fit; the model is kept as it is and
    ``{"seed", "epoch", "batch", "step", "loss"}`` is appended to ``diverged``. Without ``callbacks`` the models
    are full precision: there a divergence is the user's model or learning rate, a :class:`BoundfinderError`.
    """
    if exp.trained:
        if callbacks is not None:
            raise BoundfinderError(exp.needs_training("training under a precision"))
        return [exp.model]
    models = []
    for seed in seeds:
        model = exp.build(seed)
        failed = _train(model, exp.data, epochs=epochs, seed=seed, callbacks=callbacks(seed) if callbacks else (),
                        trainer=dict(exp.trainer))
        exp.verify_items(f"training the model of seed {seed}")
        if failed is not None:
            if callbacks is None:
                raise _full_precision_diverged(seed, failed)
            if diverged is None:
                raise BoundfinderError(f"the model of seed {seed} diverged (training loss {failed['loss']} at epoch "
                                       f"{failed['epoch']}, batch {failed['batch']}).")
            diverged.append({"seed": seed, **failed})
        models.append(model)
    return models


class Rounded:
    """The full-precision model of each seed evaluated under a configuration's formats, on ``split``."""

    def __init__(self, exp: Experiment, models, split: str, level: str, rounding: str,
                 roles: tuple[str, ...]) -> None:
        self.exp, self.models, self.split = exp, models, split
        self.level, self.rounding, self.roles = level, rounding, roles
        self.device = exp.device
        self.baseline = np.stack([_measure(m, exp, self.device, split) for m in models])
        self.diverged: list[dict[str, Any]] = []  # rounding trained models cannot diverge

    def __call__(self, formats: dict[str, Any], switch: int | None = None) -> np.ndarray:
        """``formats``: ``{pattern: format}`` (the ``roles`` given here) or ``{pattern: {role: format}}``."""
        policy = PrecisionPolicy.from_spec(formats, rounding=self.rounding, roles=self.roles)
        return np.stack([_measure_under(m, policy, self.level, self.exp, self.device, self.split)
                         for m in self.models])


class Switched:
    """A model per seed trained under a configuration's formats until its switch epoch, then at full precision.

    ``models``: the full-precision models of ``seeds`` (the baseline, and switch epoch 0). Stochastic rounding
    draws from a generator seeded with the model's seed, so a measurement is reproducible.
    """

    def __init__(self, exp: Experiment, seeds: Sequence[int], epochs: int, models, split: str, level: str,
                 rounding: str, roles: tuple[str, ...]) -> None:
        self.exp, self.seeds, self.epochs, self.split = exp, tuple(seeds), epochs, split
        self.level, self.rounding, self.roles = level, rounding, roles
        self.device = exp.device
        self.baseline = np.stack([_measure(m, exp, self.device, split) for m in models])
        #: the models of the last measurement whose training loss became non-finite (see :func:`trained`)
        self.diverged: list[dict[str, Any]] = []

    def __call__(self, formats: dict[str, str], switch: int | None = None) -> np.ndarray:
        from boundfinder.callbacks import PrecisionSchedule

        self.diverged = []
        if switch is None or not 0 <= switch <= self.epochs:
            raise ValueError(f"a switch epoch in [0, {self.epochs}] is needed, got {switch!r}")
        if switch == 0:
            return self.baseline.copy()  # the same training as the baseline's, which is deterministic
        policy = PrecisionPolicy.from_spec(formats, rounding=self.rounding, roles=self.roles)

        def schedule(seed: int) -> list:
            return [PrecisionSchedule({0: policy, switch: None}, unit="epoch", level=self.level,
                                      rounding=self.rounding, seed=seed)]

        models = trained(self.exp, self.seeds, self.epochs, schedule, self.diverged)
        return np.stack([_measure(m, self.exp, self.device, self.split) for m in models])
