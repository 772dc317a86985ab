"""Optuna search over per-layer bit widths: trials, the certified choice, storages, workers and failures."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from boundfinder.cli import main
from boundfinder.data import DigitsDataModule
from boundfinder.errors import BoundfinderError, PolicyError
from boundfinder.experiment import TOP1, Experiment
from boundfinder.policy import PrecisionPolicy
from boundfinder.search import study as study_mod
from boundfinder.search.storage import mask_url, open_storage
from boundfinder.search.study import BASELINE_KEY, CONFIG_KEY, Candidate, precision_search
from boundfinder.search.sweep import INFERENCE_ROLES, _measure, _measure_under, _seeded_model, _train
from tests.search import workers

ROOT = Path(__file__).resolve().parents[2]
COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)
# MLP(hidden=(16,)) on 64 inputs: fc1 has 64 * 16 + 16 parameters, the classifier 16 * 10 + 10
FC1, CLS = 1040, 170


def _load(url, name):
    return optuna.load_study(study_name=name, storage=open_storage(url))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('search')}/s.db"
    return url, workers.search(url, "digits", 10, 0)


def test_search_certifies_the_cheapest_configuration_of_its_fixed_sequence(searched):
    _url, r = searched
    assert r.n_configurations == 10 and r.n_complete >= 10 and r.n_failed == 0
    assert r.groups == ("features.fc1", "classifier") and r.parameters == {"features.fc1": FC1, "classifier": CLS}
    costs = [c.cost for c in r.candidates]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    # cost: mean bits per parameter; e8m{b} stores 9 + b bits
    for c in r.candidates:
        expect = (FC1 * (9 + c.bits["features.fc1"]) + CLS * (9 + c.bits["classifier"])) / (FC1 + CLS)
        assert c.cost == pytest.approx(expect, rel=1e-12)
    # below the widest configuration (the chain's top) the candidates are a Pareto front: cheaper means a larger
    # validation drop, and every one is feasible
    drops = [c.val_drop for c in r.candidates[:-1]]
    assert all(a > b for a, b in itertools.pairwise(drops)) and all(d <= 0.01 for d in drops)
    assert r.candidates[-1].bits == {"features.fc1": 8, "classifier": 8}
    # confirmation on the 449 test items, not the validation items; declared safe is a suffix of the chain
    conf = r.confirmation
    assert conf.n_items == 449 and conf.n_seeds == 1 and len(conf.levels) == len(r.candidates)
    assert r.confirm_seeds == (1,)  # a model of its own, not the search's seed 0
    safe = [lv.declared_safe for lv in conf.levels]
    first = safe.index(True)
    assert all(safe[first:]) and not any(safe[:first])
    assert r.chosen == r.candidates[first] and conf.levels[first].upper <= 0.01
    assert all(lv.upper <= 0.01 for lv in conf.levels[first:])
    if first > 0:
        assert conf.levels[first - 1].upper > 0.01
    # every configuration measured is kept, cheapest first, the candidates among them
    assert len(r.configurations) == r.n_configurations
    assert [c.cost for c in r.configurations] == sorted(c.cost for c in r.configurations)
    assert all(c in r.configurations for c in r.candidates)
    summary = json.loads(json.dumps(r.summary()))
    assert len(summary["configurations"]) == 10
    assert summary["chosen"]["formats"] == r.chosen.formats
    assert "chosen: " in r.report() and r.chosen.describe() in r.report()


def test_confirmation_measures_each_candidate_with_a_fresh_model_on_the_test_items(searched):
    _, r = searched
    dm = DigitsDataModule(batch_size=128, seed=0)
    model = _seeded_model(workers.build, 1)
    _train(model, dm, epochs=2, seed=1)
    exp = Experiment(model=model, data=dm, score=TOP1)
    cpu = torch.device("cpu")
    base = _measure(model, exp, cpu).mean()
    for cand, lv in zip(r.candidates, r.confirmation.levels, strict=True):
        policy = PrecisionPolicy.from_spec(cand.formats, roles=INFERENCE_ROLES)
        assert lv.drop == pytest.approx(base - _measure_under(model, policy, "layer", exp, cpu).mean(), abs=1e-12)


def test_trials_keep_their_per_item_measurements_in_the_storage(searched):
    url, _ = searched
    study = _load(url, "digits")
    assert study.user_attrs[CONFIG_KEY]["family"] == "e8m{b}"
    n_val = len(DigitsDataModule(batch_size=128, seed=0).val_items)
    baseline = study_mod._unpack(study.user_attrs[BASELINE_KEY][0], n_val)
    for t in study.get_trials(states=(COMPLETE,)):
        correct = study_mod._unpack(t.user_attrs["val_correct"][0], n_val)
        # the stored items reproduce the stored drop, and the constraint is that drop minus the tolerance
        assert t.user_attrs["val_drop"] == pytest.approx(baseline.mean() - correct.mean(), abs=1e-12)
        assert t.constraints == {"val_drop": pytest.approx(t.user_attrs["val_drop"] - 0.01)}
        assert t.user_attrs["worker"].endswith(f":{os.getpid()}")
    # the widest configuration is the first trial, queued when the study was created
    assert study.trials[0].params == {"bits[features.fc1]": 8, "bits[classifier]": 8}


def test_front_keeps_feasible_configurations_that_trade_cost_for_drop():
    def cand(cost, drop):
        return Candidate(bits={"a": int(cost)}, formats={"a": f"e8m{int(cost)}"}, cost=cost, val_drop=drop, trial=0)

    measured = {(i,): c for i, c in enumerate([cand(1, 0.02), cand(2, 0.008), cand(3, 0.009), cand(4, 0.001),
                                               cand(5, 0.001), cand(6, -0.002)])}
    front = study_mod._front(measured, 0.01)
    # 1: infeasible; 3: dearer than 2 with a larger drop; 5: dearer than 4 with the same drop
    assert [c.cost for c in front] == [2, 4, 6]


def test_search_continues_from_its_storage_and_refuses_a_worker_with_other_settings(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    assert workers.search(url, "again", 3, 0, confirm=False).n_configurations == 3
    more = workers.search(url, "again", 5, 1)
    assert more.n_configurations == 5 and more.chosen is not None  # two more, not five
    with pytest.raises(BoundfinderError, match=r"other settings \(family: study 'e8m\{b\}', this run 'e5m\{b\}'"):
        precision_search(workers.build, DigitsDataModule(batch_size=128, seed=0), "e5m{b}", range(0, 5),
                         seeds=(0,), epochs=2, n_trials=5, storage=url, study_name="again", model_name="mlp16")


def test_bad_arguments_fail_before_training_with_the_valid_choices():
    dm = DigitsDataModule(batch_size=128, seed=0)
    with pytest.raises(PolicyError, match=r"matches no module of SlowMLP; the modules are: .*'features\.fc1'"):
        precision_search(workers.build, dm, layers=["decoder.*"], n_trials=1)
    with pytest.raises(BoundfinderError, match=r"selected by both patterns 'features' and 'features\.fc1'"):
        precision_search(workers.build, dm, layers=["features", "features.fc1"], n_trials=1)
    with pytest.raises(BoundfinderError, match="at least 2 distinct bit widths"):
        precision_search(workers.build, dm, bits=[3], n_trials=1)
    # the op level rounds every operation of the model with one format: per-layer groups are refused before
    # training, whether they leave layers out or give them different widths
    with pytest.raises(PolicyError, match=r"level 'op' rounds every operation .* leaves out \['features.flatten'"):
        precision_search(workers.build, dm, level="op", n_trials=1)
    with pytest.raises(PolicyError, match=r"level 'op' rounds every activation op output with one format"):
        precision_search(workers.build, dm, level="op", layers=["features", "classifier"], n_trials=1)
    with pytest.raises(BoundfinderError, match="n_trials >= 0"):
        precision_search(workers.build, dm, n_trials=-1)
    with pytest.raises(BoundfinderError, match="unknown role 'weights'"):
        precision_search(workers.build, dm, roles=["weights"], n_trials=1)
    with pytest.raises(BoundfinderError, match=r"seeds of its own.*seeds=\(0,\), confirm_seeds=\(0,\)"):
        precision_search(workers.build, dm, seeds=[0], confirm_seeds=[0], n_trials=1, claim="training")
    # the default claim certifies the search's own models: fresh confirm seeds contradict it
    with pytest.raises(BoundfinderError, match=r"confirm_seeds=\[1\] trains fresh models .* claim='training'"):
        precision_search(workers.build, dm, seeds=[0], confirm_seeds=[1], n_trials=1)
    with pytest.raises(BoundfinderError, match=r"strategy must be one of path\+tpe, path, tpe, got 'greedy'"):
        precision_search(workers.build, dm, strategy="greedy", n_trials=1)
    with pytest.raises(BoundfinderError, match="claim must be one of model, training, got 'models'"):
        precision_search(workers.build, dm, claim="models", n_trials=1)
    with pytest.raises(BoundfinderError, match="cost must be one of bits, bops, memory, got 'flops'"):
        precision_search(workers.build, dm, cost="flops", n_trials=1)
    with pytest.raises(BoundfinderError, match=r"per-role widths need roles of both kinds .* has no activations"):
        precision_search(workers.build, dm, per_role=True, roles=["weight"], n_trials=1)


def test_a_small_space_is_covered_once_and_one_candidate_is_its_own_test():
    # bits 1, 2, 4 are not evenly spaced: a categorical choice; 2 groups x 3 widths = 9 configurations, so 20
    # asked trials measure all 9 and the sampler's repeated proposals are reused, not measured again
    storage = optuna.storages.InMemoryStorage()
    r = workers.search(storage, "small", 20, 0, bits=[1, 2, 4])
    assert r.n_configurations == 9 and r.n_complete > 9
    study = optuna.load_study(study_name="small", storage=storage)
    reused = [t for t in study.trials if "reused_from" in t.user_attrs]
    assert reused and all(study.trials[t.user_attrs["reused_from"]].params == t.params for t in reused)
    assert {v for t in study.trials for v in t.params.values()} == {1, 2, 4}
    # one trial: the widest configuration alone is the chain; its level is rank 0
    one = workers.search(None, "one", 1, 0)
    assert one.n_configurations == 1 and len(one.candidates) == 1
    assert [lv.bits for lv in one.confirmation.levels] == [0]
    assert (one.chosen is not None) == one.confirmation.levels[0].declared_safe


def test_storages_open_or_fail_with_the_url_and_no_password(tmp_path):
    assert open_storage(None) is None
    assert isinstance(open_storage(str(tmp_path / "journal.log")), optuna.storages.JournalStorage)
    assert isinstance(open_storage(f"sqlite:///{tmp_path}/a.db"), optuna.storages.RDBStorage)
    with pytest.raises(BoundfinderError, match=r"a database URL .* or a journal file"):
        open_storage("search.db")
    # a closed port on loopback: refused at once
    with pytest.raises(BoundfinderError, match=r"cannot open the Optuna storage postgresql://bf:\*\*\*@127.0.0.1:1/x") \
            as err:
        open_storage("postgresql://bf:s3cret@127.0.0.1:1/x")
    assert "s3cret" not in str(err.value)
    assert mask_url("sqlite:///a.db") == "sqlite:///a.db"


def _storage_url(kind, tmp_path, request):
    if kind == "postgresql":
        url = request.getfixturevalue("postgres_url")
        return url, f"{request.node.name}-{time.time_ns()}"
    return f"sqlite:///{tmp_path}/shared.db", "shared"


def _worker(url, name, trials, seed, *extra):
    return subprocess.Popen([sys.executable, "-m", "tests.search.workers", url, name, str(trials), str(seed), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_workers_in_separate_processes_share_one_study(kind, tmp_path, request):
    url, name = _storage_url(kind, tmp_path, request)
    # slow trials (about a second each) so that both workers are measuring while the study fills up
    procs = [_worker(url, name, 12, seed, "--slow=0.3", "--no-confirm") for seed in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = _load(url, name)
    states = [t.state for t in study.trials]
    # each worker stops once the study has measured 12 configurations; one more may finish while in flight
    configurations = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(configurations) in (12, 13) and states.count(RUNNING) == 0 and states.count(FAIL) == 0
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both did work


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_killed_workers_trial_is_failed_and_retried_by_another(kind, tmp_path, request):
    url, name = _storage_url(kind, tmp_path, request)
    proc = _worker(url, name, 6, 1, "--slow=1.0")  # 3 s per trial
    storage = open_storage(url)
    running = None
    deadline = time.monotonic() + 180
    while running is None and time.monotonic() < deadline and proc.poll() is None:
        studies = [s for s in storage.get_all_studies() if s.study_name == name]
        if studies:
            trials = storage.get_all_trials(studies[0]._study_id, deepcopy=False, states=(RUNNING,))
            running = trials[0] if trials else None
        time.sleep(0.1)
    assert running is not None, "the slow worker never started a trial"
    time.sleep(workers.HEARTBEAT)  # its first heartbeat is written when the trial starts; let it land
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    time.sleep(workers.GRACE + 1.5)  # the dead trial's heartbeat is now older than the grace period
    result = workers.search(url, name, 6, 2)
    study = _load(url, name)
    dead = study.trials[running.number]
    assert dead.state == FAIL
    retried = [t for t in study.trials
               if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == dead.number]
    assert len(retried) == 1 and retried[0].state == COMPLETE and retried[0].params == dead.params
    assert result.n_configurations == 6 and result.n_failed == 1


def test_cli_search_prints_the_choice_and_writes_json(tmp_path, capsys):
    out = tmp_path / "search.json"
    code = main(["search", "--model", "logreg", "--bits", "0-7", "--trials", "4", "--seeds", "0", "--epochs", "2",
                 "--storage", f"sqlite:///{tmp_path}/cli.db", "--seed", "0", "--json", str(out)])
    printed = capsys.readouterr().out
    # the default strategy measures the one group alone at each of its 8 widths: the whole space, whatever --trials
    assert code == 0 and "study 'logreg-e8mb-layer-nearest'" in printed and "8 configurations measured" in printed
    assert "strategy path+tpe" in printed and "claim: the 1 trained logreg model of seeds [0] themselves" in printed
    summary = json.loads(out.read_text())
    assert summary["n_configurations"] == 8 and summary["groups"] == ["classifier"]
    assert summary["candidates"][-1]["bits"] == {"classifier": 7} and summary["reason"]
    assert (summary["strategy"], summary["claim_kind"], summary["procedure"]) == ("path+tpe", "model", "graph")
    assert summary["confirm_seeds"] == [] and summary["confirmation"]["n_seeds"] == 1
    # a worker that only adds trials (the sampler alone, in a study of its own): 6 configurations, no certification
    code = main(["search", "--model", "logreg", "--bits", "0-7", "--trials", "6", "--seeds", "0", "--epochs", "2",
                 "--storage", f"sqlite:///{tmp_path}/cli.db", "--no-confirm", "--strategy", "tpe", "--study", "w"])
    printed = capsys.readouterr().out
    assert code == 0 and "6 configurations measured" in printed and "not certified (confirm=False)" in printed


def test_cli_search_errors_and_interruption(tmp_path, capsys, monkeypatch):
    assert main(["search", "--layers", "nope*", "--storage", ""]) == 2
    assert "matches no module of MLP" in capsys.readouterr().err
    assert main(["search", "--storage", "postgresql://bf:s3cret@127.0.0.1:1/x", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the Optuna storage postgresql://bf:***@" in err and "s3cret" not in err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "optuna", None)  # as where the search extra is not installed
        assert main(["search"]) == 2
        assert "needs Optuna: pip install 'boundfinder[search]'" in capsys.readouterr().err

    monkeypatch.setattr(study_mod, "precision_search", interrupted)
    assert main(["search", "--storage", f"sqlite:///{tmp_path}/i.db"]) == 130
    assert "every finished trial is in sqlite:///" in capsys.readouterr().err


def test_per_item_results_pack_and_unpack_at_any_length():
    # the packed per-item form round-trips any length, including a partial last byte
    a = np.random.default_rng(0).random(269) < 0.5
    assert np.array_equal(study_mod._unpack(study_mod._pack(a), 269), a)


def test_default_groups_are_layers_with_parameters_selected_exactly_by_their_names():
    import torch.nn as nn

    from boundfinder.policy import PrecisionPolicy

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)  # owns in_proj_weight and holds out_proj, a Linear
            self.blocks = nn.ModuleDict({"a[1]": nn.Linear(8, 8), "a1": nn.Linear(8, 8)})
            self.head = nn.Linear(8, 2)

    model = Model()
    groups = study_mod._groups_of(model, None)
    # out_proj joins attn's group (the name "attn" selects it too); "[" is escaped, so "a[1]" does not select "a1"
    assert groups == {"attn": ["attn", "attn.out_proj"], "blocks.a[[]1]": ["blocks.a[1]"],
                      "blocks.a1": ["blocks.a1"], "head": ["head"]}
    for pattern, members in groups.items():
        assert sorted(PrecisionPolicy.from_spec({pattern: "e8m2"}).resolve(model)) == sorted(members)
