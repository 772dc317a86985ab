"""MLflow logging: what a run holds, on the embedded store and on a tracking server, and what happens on failure."""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import time
import urllib.parse
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
from mlflow.exceptions import MlflowException  # noqa: E402

from boundfinder.cli import main  # noqa: E402
from boundfinder.errors import BoundfinderError  # noqa: E402
from boundfinder.reports import mlflow_log  # noqa: E402
from boundfinder.reports.mlflow_log import check_tracking_uri, log_search, log_sensitivity, log_sweep  # noqa: E402


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_sweep_run_holds_accuracy_against_bits_the_bound_and_the_report(sweep_and_bound, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep, bound = sweep_and_bound
    run_id = log_sweep(sweep, bound, run_name="sweep sim", params={"model": "sim"})
    client = mlflow.MlflowClient("sqlite:///mlflow.db")  # the default store, in the working folder
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "sweep sim"
    assert run.data.params["family"] == "e8m{b}" and run.data.params["model"] == "sim"
    # accuracy and drop per bit width, the step being the width: MLflow charts them against bits
    assert _history(client, run_id, "accuracy") == [(lv.bits, pytest.approx(lv.accuracy)) for lv in bound.levels]
    assert _history(client, run_id, "drop_upper") == [(lv.bits, pytest.approx(lv.upper)) for lv in bound.levels]
    assert run.data.metrics["min_safe_bits"] == bound.bits
    assert run.data.metrics["min_safe_bits_ci_low"] == bound.ci[0]
    assert run.data.tags["boundfinder.status"] == "ok" and run.data.tags["boundfinder.diverged"] == "none"
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["accuracy_vs_bits.png", "report.html",
                                                                     "summary.json"]
    # the artifacts sit next to the database, and the summary is the bound's own
    artifacts = Path(urllib.parse.urlparse(run.info.artifact_uri).path)
    assert artifacts.is_relative_to(tmp_path / "mlartifacts")
    summary = json.loads((artifacts / "summary.json").read_text())
    assert summary["bound"] == json.loads(json.dumps(bound.summary()))


def test_search_run_holds_candidates_by_rank_and_the_choice(search_result, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/store/m.db"
    (tmp_path / "store").mkdir()
    run_id = log_search(search_result, tracking_uri=uri, experiment="searches")
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    # the artifacts go beside the database, not into the working folder
    assert Path(urllib.parse.urlparse(run.info.artifact_uri).path).is_relative_to(tmp_path / "store" / "mlartifacts")
    assert run.data.tags["boundfinder.status"] == search_result.confirmation.status
    levels = search_result.confirmation.levels
    assert _history(client, run_id, "candidate_cost") == [(k, c.cost) for k, c in enumerate(search_result.candidates)]
    assert _history(client, run_id, "candidate_test_drop") == [(k, pytest.approx(lv.drop))
                                                               for k, lv in enumerate(levels)]
    chosen = search_result.chosen
    assert run.data.metrics["chosen_cost"] == chosen.cost
    # a layer pattern's '*' is not allowed in a metric name
    assert run.data.metrics["chosen_bits/features._"] == chosen.bits["features.*"]
    assert run.data.tags["boundfinder.chosen"] == chosen.describe()
    assert client.get_experiment(run.info.experiment_id).name == "searches"
    # a nested run per configuration measured: the study charted in MLflow's run comparison
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                  max_results=100)
    assert len(children) == search_result.n_configurations == 7
    by_trial = {int(c.data.tags["boundfinder.trial"]): c for c in children}
    assert set(by_trial) == {c.trial for c in search_result.configurations}
    for rank, (cand, lv) in enumerate(zip(search_result.candidates, levels, strict=True)):
        child = by_trial[cand.trial]
        assert child.info.status == "FINISHED" and child.data.tags["boundfinder.candidate"] == "yes"
        assert child.data.params["bits/features._"] == str(cand.bits["features.*"])
        assert child.data.metrics["cost"] == cand.cost and child.data.metrics["candidate_rank"] == rank
        assert child.data.metrics["test_drop"] == pytest.approx(lv.drop)
        assert child.data.metrics["declared_safe"] == lv.declared_safe
        assert child.data.tags["boundfinder.chosen"] == ("yes" if cand is chosen else "no")
    off_front = [c for c in search_result.configurations if c not in search_result.candidates]
    for c in off_front:
        child = by_trial[c.trial].data
        assert child.tags["boundfinder.candidate"] == "no" and "test_drop" not in child.metrics
        assert child.metrics["val_drop"] == pytest.approx(c.val_drop) and child.params["configuration"] == c.describe()
    # two layer patterns that read the same once '*' and '?' are replaced keep two metrics
    twin = dataclasses.replace(chosen, bits={"fc.*": 1, "fc.?": 2})
    again = dataclasses.replace(search_result, chosen=twin, candidates=tuple(
        twin if c is chosen else c for c in search_result.candidates))
    metrics = client.get_run(log_search(again, tracking_uri=uri, experiment="searches")).data.metrics
    assert metrics["chosen_bits/fc._"] == 1 and metrics["chosen_bits/fc.__1"] == 2
    assert "chosen_switch_epoch" not in run.data.metrics and "switch_points" not in run.data.params
    # the widest candidate, appended to the chain without a validation measurement, still gets its run
    last = search_result.candidates[-1]
    top = dataclasses.replace(last, trial=None, val_drop=math.nan)
    unmeasured = dataclasses.replace(
        search_result, candidates=(*search_result.candidates[:-1], top),
        chosen=top if chosen is last else chosen,
        configurations=tuple(c for c in search_result.configurations if c is not last))
    parent = log_search(unmeasured, tracking_uri=uri, experiment="searches")
    kids = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=100)
    assert len(kids) == 7 and all(k.info.status == "FINISHED" for k in kids)
    [lone] = [k for k in kids if k.info.run_name == "sim not measured on validation"]
    assert lone.data.params["bits/features._"] == str(top.bits["features.*"])
    assert lone.data.metrics["candidate_rank"] == len(search_result.candidates) - 1
    # a switching search: the chosen switch epoch is a metric, the epochs searched a parameter
    switching = dataclasses.replace(search_result, switch_points=(0, 5, 10), epochs=10,
                                    chosen=dataclasses.replace(chosen, switch=5))
    switching = dataclasses.replace(switching, candidates=tuple(
        switching.chosen if c is chosen else c for c in search_result.candidates))
    run = client.get_run(log_search(switching, tracking_uri=uri, experiment="searches"))
    assert run.data.metrics["chosen_switch_epoch"] == 5 and run.data.params["switch_points"] == "[0, 5, 10]"
    # a deleted experiment is restored, not a dead end
    client.delete_experiment(run.info.experiment_id)
    rerun = client.get_run(log_search(search_result, tracking_uri=uri, experiment="searches"))
    assert rerun.info.experiment_id == run.info.experiment_id


def test_sensitivity_run_holds_a_bound_per_layer_and_role_and_accuracy_against_bits(sweep_and_bound, tmp_path):
    from boundfinder.search.sensitivity import sensitivity_table

    sweep, _ = sweep_and_bound
    table = sensitivity_table([("features.*", "weight", sweep), ("classifier", "activation", sweep)])
    uri = f"sqlite:///{tmp_path}/m.db"
    run_id = log_sensitivity(table, tracking_uri=uri, run_name="sensitivity sim")
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params["kind"] == "sensitivity" and run.data.params["per_bound_confidence"] == "0.975"
    for c, key in zip(table.cells, ("features._/weight", "classifier/activation"), strict=True):
        assert run.data.metrics[f"min_safe_bits/{key}"] == c.bound.bits
        assert run.data.metrics[f"ci_low/{key}"] == c.bound.ci[0]
        assert _history(client, run_id, f"accuracy/{key}") == [(b, pytest.approx(a)) for b, a in
                                                               zip(sweep.bits, sweep.accuracy, strict=True)]
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["min_safe_bits.png", "report.html",
                                                                     "summary.json"]


def test_a_tracking_server_receives_the_run_and_its_artifacts(sweep_and_bound, mlflow_server, tmp_path):
    sweep, bound = sweep_and_bound
    run_id = log_sweep(sweep, bound, tracking_uri=mlflow_server)
    client = mlflow.MlflowClient(mlflow_server)
    assert client.get_run(run_id).data.metrics["min_safe_bits"] == bound.bits
    page = client.download_artifacts(run_id, "report.html", str(tmp_path))
    assert "minimum safe bits" in Path(page).read_text(encoding="utf-8")


def test_an_unreachable_server_or_bad_uri_fails_at_once():
    start = time.monotonic()
    with pytest.raises(BoundfinderError, match=r"the MLflow tracking server http://127.0.0.1:1 is unreachable"):
        check_tracking_uri("http://127.0.0.1:1")
    assert time.monotonic() - start < 5  # a refused connection, no retries
    with pytest.raises(BoundfinderError, match=r"looks like sqlite:///mlflow\.db"):
        check_tracking_uri("mlflow.db")
    assert check_tracking_uri(None) == "sqlite:///mlflow.db"


def test_the_environments_tracking_uri_is_the_default_and_a_bad_store_fails_before_work(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert check_tracking_uri(None) == f"sqlite:///{tmp_path}/env.db"
    (tmp_path / "a_file").write_text("")  # a database cannot live under a regular file
    with pytest.raises(BoundfinderError, match=r"cannot open the MLflow store sqlite:///.*/a_file/m\.db: .*nothing "
                       "was run"):
        check_tracking_uri(f"sqlite:///{tmp_path}/a_file/m.db", open_store=True)


def test_a_failure_while_logging_is_one_error_naming_the_store(sweep_and_bound, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise MlflowException("the server went away")

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", refuse)
    uri = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(BoundfinderError, match=r"logging to MLflow at sqlite:///.* failed: the server went away"):
        log_sweep(*sweep_and_bound, tracking_uri=uri)
    # the run that was started is closed as failed, not left running
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("boundfinder").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


SWEEP = ["sweep", "--model", "logreg", "--bits", "0-3", "--seeds", "0", "--epochs", "2"]


def test_cli_checks_the_server_before_any_training(monkeypatch, capsys):
    from boundfinder.search import sweep as sweep_mod

    def must_not_run(*args, **kwargs):
        raise AssertionError("trained although MLflow was unreachable")

    monkeypatch.setattr(sweep_mod, "precision_sweep", must_not_run)
    assert main([*SWEEP, "--mlflow", "http://127.0.0.1:1"]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert main(["search", "--no-confirm", "--html", "r.html"]) == 2
    assert "--no-confirm only adds trials" in capsys.readouterr().err


def test_cli_logs_writes_the_report_and_keeps_the_results_when_logging_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*SWEEP, "--mlflow", "--html", "r.html"]) == 0
    out = capsys.readouterr().out
    assert "logged to MLflow at sqlite:///mlflow.db: run " in out and (tmp_path / "r.html").exists()
    run_id = out.split("run ")[-1].split()[0]
    assert mlflow.MlflowClient("sqlite:///mlflow.db").get_run(run_id).data.params["model"] == "logreg"

    def fail(*args, **kwargs):
        raise BoundfinderError("logging to MLflow at sqlite:///mlflow.db failed: disk full")

    monkeypatch.setattr(mlflow_log, "log_sweep", fail)
    assert main([*SWEEP, "--mlflow"]) == 2
    err = capsys.readouterr().err
    kept = glob.glob("boundfinder-sweep-*.json")
    assert len(kept) == 1 and f"the results are saved in {kept[0]}" in err
    assert json.loads(Path(kept[0]).read_text())["bound"]["method"] == "score"
