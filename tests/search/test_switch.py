"""Switching search: the epoch of a low -> high precision switch in training as a search dimension."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from boundfinder.callbacks import PrecisionSchedule
from boundfinder.cli import main
from boundfinder.data import DigitsDataModule
from boundfinder.errors import BoundfinderError
from boundfinder.experiment import TOP1, Experiment, evaluate
from boundfinder.policy import ROLES, PrecisionPolicy
from boundfinder.search.measure import Switched, trained
from boundfinder.search.study import SWITCH_PARAM, precision_search
from boundfinder.search.sweep import _seeded_model, _train
from tests.search import workers

FC1, CLS = 1040, 170  # parameters of MLP(hidden=(16,)): fc1 64 * 16 + 16, classifier 16 * 10 + 10
EPOCHS = 4


def _search(storage=None, name="switch", trials=8, **kw):
    kw = {"bits": [0, 2, 8], "switch": [0, 2, 4], "seeds": (0,), "epochs": EPOCHS, "n_trials": trials,
          "storage": storage, "study_name": name, "sampler_seed": 0, "model_name": "mlp16"} | kw
    return precision_search(workers.build, DigitsDataModule(batch_size=128, seed=0), "e8m{b}", **kw)


@pytest.fixture(scope="module")
def switched():
    storage = optuna.storages.InMemoryStorage()
    return storage, _search(storage)


def test_switching_search_costs_the_epochs_and_keeps_the_switch_of_each_candidate(switched):
    storage, r = switched
    assert r.switch_points == (0, 2, 4) and r.epochs == EPOCHS and r.n_configurations == 8
    assert r.cost_label == "mean bits per parameter over training"
    for c in r.candidates:
        # the layers' formats before the switch epoch (e8m{b} stores 9 + b bits), fp32 after it
        low = (FC1 * (9 + c.bits["features.fc1"]) + CLS * (9 + c.bits["classifier"])) / (FC1 + CLS)
        assert c.switch in (0, 2, 4)
        assert c.cost == pytest.approx((c.switch * low + (EPOCHS - c.switch) * 32) / EPOCHS, rel=1e-12)
    # the top of the chain is fp32 training throughout: the baseline's own training, so no drop at all
    top, top_level = r.candidates[-1], r.confirmation.levels[-1]
    assert top.switch == 0 and top.cost == 32 and top.val_drop == 0 and top_level.drop == 0
    assert top.describe() == "fp32 training throughout"
    for c in r.candidates[:-1]:
        layers = f"features.fc1={c.formats['features.fc1']} classifier={c.formats['classifier']}"
        assert c.describe() == (f"{layers} training throughout" if c.switch == EPOCHS
                                else f"{layers} before epoch {c.switch}, fp32 from it on")
    summary = json.loads(json.dumps(r.summary()))
    assert summary["switch_points"] == [0, 2, 4] and summary["candidates"][-1]["switch"] == 0
    assert "before its switch epoch" in r.report()
    # every trial stored its switch epoch; with switch epoch 0 the bit widths never act, so all such proposals
    # are one configuration, measured once
    study = optuna.load_study(study_name="switch", storage=storage)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert all(SWITCH_PARAM in t.params for t in trials)
    at_zero = [t for t in trials if t.params[SWITCH_PARAM] == 0]
    assert at_zero and sum("reused_from" not in t.user_attrs for t in at_zero) == 1


def test_each_candidate_is_a_fresh_model_trained_with_its_switch_and_measured_in_fp32(switched):
    _, r = switched
    dm = DigitsDataModule(batch_size=128, seed=0)
    base = _seeded_model(workers.build, 1)
    _train(base, dm, epochs=EPOCHS, seed=1)
    base_acc = evaluate(base, dm.test_dataloader(), TOP1).mean()
    assert r.confirm_seeds == (1,)
    for cand, lv in zip(r.candidates, r.confirmation.levels, strict=True):
        model = _seeded_model(workers.build, 1)
        if cand.switch:
            policy = PrecisionPolicy.from_spec(cand.formats, roles=ROLES)
            _train(model, dm, epochs=EPOCHS, seed=1,
                   callbacks=[PrecisionSchedule({0: policy, cand.switch: None}, unit="epoch", seed=1)])
        else:
            _train(model, dm, epochs=EPOCHS, seed=1)
        assert lv.drop == pytest.approx(base_acc - evaluate(model, dm.test_dataloader(), TOP1).mean(), abs=1e-12)


def test_the_low_phase_is_applied_until_the_switch_and_only_until_then():
    dm = DigitsDataModule(batch_size=128, seed=0)
    dm.setup("fit")
    exp = Experiment(model=workers.build, data=dm)
    models = trained(exp, (0,), EPOCHS)
    measure = Switched(exp, (0,), EPOCHS, models, "val", "layer", "nearest", ROLES)
    coarse = {"features.fc1": "e8m0", "classifier": "e8m0"}
    assert np.array_equal(measure(coarse, 0), measure.baseline)  # switch 0: fp32 throughout, the baseline
    whole, half = measure(coarse, EPOCHS), measure(coarse, EPOCHS // 2)
    # one mantissa-free epoch's worth of rounding moves the model: the items it gets right differ from fp32's
    assert not np.array_equal(half, measure.baseline) and not np.array_equal(whole, half)
    assert np.array_equal(measure(coarse, EPOCHS), whole)  # deterministic: the same training again
    with pytest.raises(ValueError, match=r"switch epoch in \[0, 4\]"):
        measure(coarse, EPOCHS + 1)


def test_bad_switch_epochs_and_a_mismatched_study_fail_before_training(tmp_path):
    dm = DigitsDataModule(batch_size=128, seed=0)
    for bad in ([3], [0, 5], [-1, 2]):
        with pytest.raises(BoundfinderError, match=r"at least 2 distinct switch epochs in \[0, epochs=4\]"):
            precision_search(workers.build, dm, switch=bad, epochs=4, n_trials=1)
    for bad in ("0-4", [0, 2.5], [0, True]):
        with pytest.raises(BoundfinderError, match="switch epochs must be ints"):
            precision_search(workers.build, dm, switch=bad, epochs=4, n_trials=1)
    with pytest.raises(BoundfinderError, match=r"epochs >= 1"):
        precision_search(workers.build, dm, switch=[0, 1], epochs=0, n_trials=1)
    # a rounding study and a switching study of the same name are different searches
    url = f"sqlite:///{tmp_path}/s.db"
    workers.search(url, "mixed", 2, 0, confirm=False)
    with pytest.raises(BoundfinderError, match=r"other settings \(.*switch: study None, this run \[0, 1, 2\]"):
        workers.search(url, "mixed", 2, 0, switch=[0, 1, 2], confirm=False)


def test_cli_switching_search(tmp_path, capsys):
    out = tmp_path / "switch.json"
    code = main(["search", "--model", "logreg", "--bits", "0,8", "--switch", "0,1,2", "--epochs", "2",
                 "--trials", "3", "--seeds", "0", "--storage", "", "--seed", "0", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "study 'logreg-e8mb-layer-nearest-switch'" in printed
    assert "fp32 from it on; cost: mean bits per parameter over training" in printed
    summary = json.loads(out.read_text())
    assert summary["switch_points"] == [0, 1, 2] and summary["epochs"] == 2 and summary["n_configurations"] == 3
    assert all(c["switch"] in (0, 1, 2) for c in summary["candidates"])
    assert main(["search", "--switch", "0,40", "--epochs", "15", "--storage", ""]) == 2
    assert "switch epochs in [0, epochs=15]" in capsys.readouterr().err


class _CtrlC(workers.SlowMLP):
    """Ctrl-C arrives while a trial trains (a step under a PrecisionSchedule); the baseline trains undisturbed."""

    def training_step(self, batch, batch_idx):
        if any(isinstance(cb, PrecisionSchedule) for cb in self.trainer.callbacks):
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


def test_ctrl_c_while_a_trial_trains_fails_that_trial_keeps_the_rest_and_leaves_ctrl_c_working():
    import signal

    storage = optuna.storages.InMemoryStorage()
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # not Lightning's sys.exit(1)
        precision_search(lambda: _CtrlC(hidden=(16,), lr=0.05, momentum=0.9), DigitsDataModule(batch_size=128, seed=0),
                         "e8m{b}", [0, 8], switch=[0, 2], seeds=(0,), epochs=2, n_trials=5, storage=storage,
                         study_name="ctrl-c", sampler_seed=0)
    assert signal.getsignal(signal.SIGINT) is before  # Lightning had set it to SIG_IGN
    trials = optuna.load_study(study_name="ctrl-c", storage=storage).trials
    # the widest configuration (fp32 throughout, the baseline's own training) finished; the interrupted trial is
    # failed, not left running
    assert trials[0].state == optuna.trial.TrialState.COMPLETE and trials[0].params[SWITCH_PARAM] == 0
    assert trials[-1].state == optuna.trial.TrialState.FAIL and trials[-1].params[SWITCH_PARAM] == 2
