"""examples/study/run.py, the 2017 study reproduced: what must hold whatever the training noise.

- at 23 fraction bits (e8m23 is float32 itself) training under every level and rounding is float32 training,
  item for item;
- the profile's float32 rows (no format applied) agree with the float64 reference to float32 precision;
- the cost table has one row per (model, depth, width, level);
- the whole pipeline runs (--quick) and writes its report, results, figures and MLflow runs.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_run", ROOT / "examples" / "study" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_at_23_fraction_bits_is_float32_training_at_every_level(study):
    cfg = dict(study.SETTINGS["quick"], bits=(4, 23), epochs=1)
    result = study.truncation(cfg, "digits", study.datamodule("digits", None), lambda line: None)
    runs = {(r["model"], r["rounding"], r["level"]): r for r in result["runs"]}
    assert set(runs) == {(m, "truncate", lv) for m in ("logreg", "cnn") for lv in ("op", "layer", "batch")} | {
        (m, r, "layer") for m in ("logreg", "cnn") for r in ("nearest", "stochastic")}
    for key, r in runs.items():
        assert r["equal_at_23"] is True, key
        assert r["accuracy"][-1] == r["baseline"], key
    text = study.truncation_table(result)
    assert "differs from float32" not in text and text.count("min safe") == len(runs)


@pytest.mark.slow
def test_the_quick_study_runs_end_to_end_with_mlflow(study, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    assert study.main(["--quick", "--out", str(out), "--mlflow", uri]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(study.EXPERIMENTS) <= set(results)
    assert all(r["equal_at_23"] for r in results["truncation"]["runs"])
    for name, prof in results["profile"]["error"].items():
        reference = [row["median"] for row in prof["rows"] if row["format"] == "float32"]
        assert len(reference) == len(prof["layers"]), name
        assert max(reference) < 1e-6, name  # float32 against float64: float32's precision, nothing more
    cfg = study.SETTINGS["quick"]
    cost = results["profile"]["cost"]["rows"]
    keys = [(r["kind"], r["depth"], r["width"], r["level"]) for r in cost]
    mlps, cnns = len(cfg["cost_depths"]) * len(cfg["cost_widths"]), len(cfg["cost_widths"])  # the CNN: depth 2
    assert len(keys) == len(set(keys)) == (mlps + cnns) * 3
    report = (out / "report.txt").read_text()
    for section in study.EXPERIMENTS:
        assert f"== {section} ==" in report
    assert {p.name for p in out.glob("*.png")} >= {"truncation.png", "switching.png", "quantization.png",
                                                    "profile_cost.png"}
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("boundfinder-study")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and {r.info.run_name for r in children} == set(study.EXPERIMENTS)
    truncation = next(r for r in children if r.info.run_name == "truncation")
    assert "accuracy/logreg/truncate/op" in truncation.data.metrics
    assert [a.path for a in client.list_artifacts(truncation.info.run_id)] == ["truncation.png", "truncation.txt"]


def test_an_unknown_experiment_is_refused_before_any_work(study, capsys, tmp_path):
    assert study.main(["--quick", "--out", str(tmp_path), "--only", "truncation,accumulation"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment(s) ['accumulation']" in err and "switch_search" in err
