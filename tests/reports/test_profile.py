"""``boundfinder.reports.profile``: the profile's HTML page and its MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from boundfinder.profile import cost_profile, error_profile
from boundfinder.reports.profile import log_profile, profile_html


@pytest.fixture(scope="module")
def results():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    x = torch.rand(32, 1, 8, 8)
    prof = error_profile(model, [x], formats=["bf16", "e4m3fn"])
    cost = cost_profile(kinds=["mlp"], depths=[1, 2], widths=[8], batch_size=8, repeats=1, steps=1, warmup=0)
    return prof, cost


def test_page_holds_both_plots_and_tables(results):
    prof, cost = results
    page = profile_html(prof, cost, title="profile t")
    assert page.count("<img") == 2 and "<title>profile t</title>" in page
    assert "e4m3fn alone" in page and "float32 median" in page and "step fp32 ms" in page
    assert profile_html(prof, None).count("<img") == 1 and profile_html(None, cost).count("<img") == 1


def test_mlflow_run_holds_errors_by_layer_and_cost_ratios(results, tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    prof, cost = results
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_profile(prof, cost, tracking_uri=uri, run_name="profile t")
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params["kind"] == "profile" and run.data.params["formats"] == "bf16,e4m3fn"
    assert run.data.tags["boundfinder.kind"] == "profile"
    history = client.get_metric_history(run_id, "error_median/e4m3fn")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(len(prof.layers)))
    assert "step_ratio/layer/mlp_d2_w8" in run.data.metrics and "eval_ratio/op/mlp_d1_w8" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run_id)}
    assert names == {"summary.json", "error_vs_layer.png", "cost_ratio.png", "report.html"}
    summary = json.loads(Path(client.download_artifacts(run_id, "summary.json", str(tmp_path))).read_text())
    assert summary["error_profile"]["layers"] == list(prof.layers)
