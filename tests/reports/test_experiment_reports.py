"""Reports name the user's experiment (model class, data, checkpoint, claim); an MLflow run spans the work it
reports and its description is the verdict line."""

from __future__ import annotations

import dataclasses
import time

import pytest

from boundfinder.reports.html import search_html, sensitivity_html, sweep_html
from boundfinder.search.sensitivity import sensitivity_table

EXPERIMENT = {"model": "RowClassifier", "model_class": "rows.RowClassifier", "data": "DictDigits",
              "data_class": "rows.DictDigits", "checkpoint": "runs/<v0>/last.ckpt", "score": "top1", "trainer": {},
              "trained": True}
CLAIM = "the trained model RowClassifier loaded from runs/<v0>/last.ckpt, as it is, over the distribution ..."


def test_html_reports_name_model_data_checkpoint_and_claim(sweep_and_bound, search_result):
    sweep, bound = sweep_and_bound
    sweep = dataclasses.replace(sweep, experiment=EXPERIMENT, claim=CLAIM)
    page = sweep_html(sweep, bound, title="t")
    assert "model <b>RowClassifier</b> (rows.RowClassifier)" in page and "data DictDigits" in page
    assert "checkpoint runs/&lt;v0&gt;/last.ckpt" in page and "the confidence statement covers the trained" in page
    page = search_html(dataclasses.replace(search_result, experiment=EXPERIMENT, claim=CLAIM), title="t")
    assert "rows.RowClassifier" in page and "checkpoint runs/&lt;v0&gt;/last.ckpt" in page
    table = dataclasses.replace(sensitivity_table([("fc", "weight", sweep)]), experiment=EXPERIMENT, claim=CLAIM)
    assert "rows.RowClassifier" in sensitivity_html(table, title="t")
    # a result without an experiment (built by hand) still renders, without the paragraph
    assert 'class="experiment"' not in sweep_html(sweep_and_bound[0], bound, title="t")


mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


def test_mlflow_run_spans_the_training_and_its_description_is_the_verdict(tmp_path, monkeypatch, capsys):
    from boundfinder.cli import main
    from boundfinder.search import sweep as sweep_mod

    fits = []
    train = sweep_mod._train

    def timed(*args, **kwargs):
        start = time.time() * 1000
        out = train(*args, **kwargs)
        fits.append((start, time.time() * 1000))
        return out

    monkeypatch.setattr(sweep_mod, "_train", timed)
    db = f"sqlite:///{tmp_path}/m.db"
    assert main(["sweep", "--model", "logreg", "--bits", "0,23", "--seeds", "0", "--epochs", "1", "--mlflow", db]) == 0
    run_id = capsys.readouterr().out.split("run ")[-1].split()[0]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # opened before the model was trained, closed after it was measured
    assert run.info.start_time <= fits[0][0] and run.info.end_time >= fits[-1][1]
    assert run.data.tags["mlflow.note.content"].startswith("minimum safe bits: ")
    assert run.data.params["model"] == "logreg"
    assert run.data.params["model_class"] == "boundfinder.models.LogisticRegression"
    assert run.data.params["checkpoint"] == "none (trained from seeds)" and "trained afresh" in run.data.params["claim"]
    assert run.data.params["trainer.accelerator"] == "cpu"


def test_mlflow_run_of_work_that_stops_is_closed_with_the_reason(tmp_path, monkeypatch, capsys):
    from boundfinder.cli import main
    from boundfinder.search import sweep as sweep_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["sweep", "--model", "logreg", "--bits", "0,23", "--seeds", "0", "--epochs", "1", "--mlflow",
              f"sqlite:///{tmp_path}/m.db"])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    runs = client.search_runs([client.get_experiment_by_name("boundfinder").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"] and runs[0].data.tags["mlflow.note.content"] == \
        "killed: interrupted"
    # a refusal of the user's input before training closes the run as failed, with the message
    assert main(["sweep", "--model", "tests.user_project.models:OddLogit", "--data",
                 "tests.user_project.data:DictDigits", "--bits", "0,23", "--mlflow",
                 f"sqlite:///{tmp_path}/m.db"]) == 2
    runs = client.search_runs([client.get_experiment_by_name("boundfinder").experiment_id],
                              order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "FAILED" and "--score" in runs[0].data.tags["mlflow.note.content"]


def test_search_and_sensitivity_runs_hold_their_verdict_lines(tmp_path, monkeypatch, capsys):
    from boundfinder.cli import main

    assert main(["sensitivity", "--model", "logreg", "--bits", "0,23", "--seeds", "0", "--epochs", "1",
                 "--roles", "weight", "--mlflow", f"sqlite:///{tmp_path}/m.db"]) == 0
    run_id = capsys.readouterr().out.split("run ")[-1].split()[0]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    note = client.get_run(run_id).data.tags["mlflow.note.content"]
    assert note.startswith("minimum safe bits (95% together): classifier/weight ")
    assert main(["search", "--model", "logreg", "--bits", "2,8", "--trials", "2", "--seeds", "0", "--epochs", "1",
                 "--storage", "", "--seed", "0", "--mlflow", f"sqlite:///{tmp_path}/m.db"]) == 0
    run = client.get_run(capsys.readouterr().out.split("run ")[-1].split()[0])
    assert run.info.run_name == "search logreg-e8mb-layer-nearest"
    assert run.data.tags["mlflow.note.content"].startswith(("chosen: classifier=e8m", "no configuration certified"))
