"""NaN and infinite training losses: recorded where they happen, the fit stopped (or failed), and reported by the
sweep and the search instead of training NaN weights to the end."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from boundfinder.callbacks import DivergenceGuard, PrecisionEmulation, PrecisionSchedule, TrainingDiverged
from boundfinder.data import DigitsDataModule
from boundfinder.errors import BoundfinderError, PolicyError
from boundfinder.models import MLP
from boundfinder.search.study import precision_search
from boundfinder.search.sweep import _seeded_model, _train, precision_sweep

BAD_STEP = 3  # the first optimizer step whose loss is poisoned


class Poisoned(MLP):
    """MLP(hidden=(16,)) whose loss is ``poison`` from global step BAD_STEP on, only while ``when(trainer)``."""

    poison = math.nan
    when = staticmethod(lambda trainer: True)

    def __init__(self):
        super().__init__(hidden=(16,), lr=0.05, momentum=0.9)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.trainer.global_step >= BAD_STEP and type(self).when(self.trainer):
            return loss * 0 + self.poison
        return loss


def _emulated(trainer) -> bool:
    return any(isinstance(cb, (PrecisionEmulation, PrecisionSchedule)) for cb in trainer.callbacks)


class UnderEmulation(Poisoned):
    when = staticmethod(_emulated)


def _fit(model, *callbacks, epochs=2):
    import lightning.pytorch as pl

    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=128, seed=0))
    return trainer


@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_the_guard_records_the_first_non_finite_loss_and_stops_after_that_batch(poison, monkeypatch):
    monkeypatch.setattr(Poisoned, "poison", poison)
    guard = DivergenceGuard()
    with pytest.warns(UserWarning, match=rf"training loss is {poison} at epoch 0, batch {BAD_STEP}"):
        trainer = _fit(Poisoned(), guard)
    assert guard.diverged["epoch"] == 0 and guard.diverged["batch"] == BAD_STEP
    assert guard.diverged["step"] == BAD_STEP + 1  # counted after that batch's optimizer step
    assert str(guard.diverged["loss"]) == str(poison)
    assert trainer.global_step == BAD_STEP + 1  # no batch after it: 9 batches per epoch, 2 epochs otherwise


def test_the_guard_raises_on_request_and_is_silent_on_a_finite_run(recwarn):
    with pytest.raises(TrainingDiverged, match=rf"training loss is nan at epoch 0, batch {BAD_STEP} "
                                               rf"\(global step {BAD_STEP + 1}\); training diverged"):
        _fit(Poisoned(), DivergenceGuard(action="raise"))
    guard = DivergenceGuard()
    trainer = _fit(MLP(hidden=(16,), lr=0.05, momentum=0.9), guard)
    assert guard.diverged is None and trainer.global_step == 2 * 9
    assert not [w for w in recwarn if "DivergenceGuard" in str(w.message)]
    with pytest.raises(PolicyError, match=r"`action` must be one of \('stop', 'raise'\)"):
        DivergenceGuard(action="ignore")


def test_a_full_precision_model_that_diverges_is_a_clear_error_before_any_measurement():
    dm = DigitsDataModule(batch_size=128, seed=0)
    with pytest.raises(BoundfinderError, match=r"full-precision model of seed 0 diverged \(training loss nan at "
                                               rf"epoch 0, batch {BAD_STEP}\).*Lower the learning rate"):
        precision_sweep(Poisoned, dm, "e8m{b}", [2, 4], epochs=1)
    # and the helper that trains it says where
    assert _train(_seeded_model(Poisoned, 0), dm, epochs=1, seed=0)["batch"] == BAD_STEP


def test_a_sweep_trained_under_emulation_reports_each_diverged_model():
    r = precision_sweep(UnderEmulation, DigitsDataModule(batch_size=128, seed=0), "e8m{b}", [2, 4], epochs=1,
                        seeds=(0, 1), train_under_emulation=True)
    assert [(d["format"], d["seed"], d["batch"]) for d in r.diverged] == [
        ("e8m2", 0, BAD_STEP), ("e8m4", 0, BAD_STEP), ("e8m2", 1, BAD_STEP), ("e8m4", 1, BAD_STEP)]
    summary = json.loads(json.dumps(r.summary(), allow_nan=False))
    assert summary["diverged"][0]["loss"] == "nan"


def test_a_switching_trial_records_its_diverged_seeds_and_the_search_goes_on():
    storage = optuna.storages.InMemoryStorage()
    r = precision_search(UnderEmulation, DigitsDataModule(batch_size=128, seed=0), "e8m{b}", [2, 8], switch=[0, 1],
                         seeds=(0,), epochs=1, n_trials=5, storage=storage, study_name="nan", sampler_seed=0)
    assert r.n_configurations == 5 and r.n_failed == 0
    trials = optuna.load_study(study_name="nan", storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))
    trained = [t for t in trials if t.params["switch_epoch"] == 1 and "reused_from" not in t.user_attrs]
    assert trained and all(t.user_attrs["diverged"] == [{"seed": 0, "step": BAD_STEP + 1, "epoch": 0,
                                                         "batch": BAD_STEP, "loss": "nan"}] for t in trained)
    for c in r.configurations:
        assert c.diverged_seeds == (() if c.switch == 0 else (0,))
    # the only safe configuration is fp32 training throughout: every trained one diverged after 4 of 9 steps
    assert r.chosen is not None and r.chosen.switch == 0 and len(r.candidates) == 1


class LateNaNLoss(MLP):
    """MLP(hidden=(16,)) whose *reported* loss is NaN from global step 15 of 18 under a PrecisionSchedule, while its
    gradients stay finite: the fit stops near its end with usable weights."""

    def __init__(self):
        super().__init__(hidden=(16,), lr=0.05, momentum=0.9)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.trainer.global_step >= 15 and _emulated(self.trainer):
            return loss + (math.nan - loss.detach()) * 0  # the value is NaN, the gradient is the loss's
        return loss


def test_candidates_whose_certification_models_diverged_say_so():
    r = precision_search(LateNaNLoss, DigitsDataModule(batch_size=128, seed=0), "e8m{b}", [2, 8], switch=[0, 1, 2],
                         seeds=(0,), epochs=2, n_trials=5, storage=None, study_name="late", sampler_seed=0,
                         tolerance=0.2)
    # stopped 3 of 18 steps early, these models lose about 0.07: candidates under a tolerance of 0.2
    assert [c for c in r.candidates if c.switch]
    # the certification's fresh models (seed 1) diverge too: recorded per candidate, marked in the report
    assert r.confirm_diverged == tuple((1,) if c.switch else () for c in r.candidates)
    assert "[training diverged: seeds [0, 1]]" in r.report()
    rows = json.loads(json.dumps(r.summary()))["candidates"]
    assert [row["test_diverged_seeds"] for row in rows] == [list(f) for f in r.confirm_diverged]
