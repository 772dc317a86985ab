"""What a user sees in a browser: the MLflow UI of a real ``mlflow server`` showing what boundfinder logs, and
the self-contained HTML report, both rendered by headless Chromium.

The MLflow UI is a JavaScript application that fetches the runs from the server's REST API, so checking the
REST API alone would not show that a user sees the run. Chromium (Debian's ``chromium-headless-shell`` or
``chromium``) loads each page with a virtual-time budget for its scripts and fetches, and the rendered DOM is
searched for the run's name, metrics, child runs and artifacts. Skipped, with the reason, where no such browser
is installed (``.ci/run`` installs one where it can).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import pytest

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

from boundfinder.reports.html import search_html  # noqa: E402
from boundfinder.reports.mlflow_log import log_search, log_sweep  # noqa: E402

BROWSER = next((b for b in ("chromium-headless-shell", "chromium", "chromium-browser") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (chromium-headless-shell or chromium) "
                                "installed")


def _rendered(url: str, expected: list[str]) -> str:
    """The page's DOM once its scripts have run; tried with a longer budget while any expected text is missing
    (a busy machine), at most three times."""
    dom = ""
    for budget in (15_000, 30_000, 60_000):
        with tempfile.TemporaryDirectory() as profile:
            try:
                done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                       "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                                       f"--virtual-time-budget={budget}", "--dump-dom", url],
                                      capture_output=True, text=True, timeout=180)
            except subprocess.TimeoutExpired:
                continue
        dom = done.stdout
        if all(text in dom for text in expected):
            break
    return dom


def _missing(dom: str, expected: list[str]) -> list[str]:
    return [text for text in expected if text not in dom]


def test_the_ui_shows_a_sweep_run_with_its_bound_and_artifacts(sweep_and_bound, mlflow_server):
    sweep, bound = sweep_and_bound
    run_id = log_sweep(sweep, bound, tracking_uri=mlflow_server, experiment="ui sweep", run_name="sweep in the ui")
    experiment = mlflow.MlflowClient(mlflow_server).get_run(run_id).info.experiment_id
    page = f"{mlflow_server}/#/experiments/{experiment}/runs/{run_id}"
    expected = ["sweep in the ui", "min_safe_bits", "baseline_accuracy", "e8m{b}"]
    assert not _missing(_rendered(page, expected), expected)
    expected = ["accuracy_vs_bits.png", "report.html", "summary.json"]
    assert not _missing(_rendered(f"{page}/artifacts", expected), expected)
    # the experiment's run list names the run
    assert not _missing(_rendered(f"{mlflow_server}/#/experiments/{experiment}/runs", ["sweep in the ui"]),
                        ["sweep in the ui"])


def test_the_ui_shows_a_search_run_with_a_child_run_per_configuration(search_result, mlflow_server):
    run_id = log_search(search_result, tracking_uri=mlflow_server, experiment="ui search", run_name="search in ui")
    experiment = mlflow.MlflowClient(mlflow_server).get_run(run_id).info.experiment_id
    children = [f"sim trial {c.trial}" for c in search_result.configurations]
    expected = ["search in ui", "chosen_cost", "candidate_test_drop", *children]
    assert not _missing(_rendered(f"{mlflow_server}/#/experiments/{experiment}/runs/{run_id}", expected), expected)
    # and the page of a candidate's own run holds its test figures
    client = mlflow.MlflowClient(mlflow_server)
    child = client.search_runs([experiment], "tags.`boundfinder.candidate` = 'yes'", max_results=1)[0]
    expected = ["test_drop", "declared_safe", "candidate_rank", child.info.run_name]
    assert not _missing(_rendered(f"{mlflow_server}/#/experiments/{experiment}/runs/{child.info.run_id}", expected),
                        expected)


def _colored_pixels(page_path) -> int:
    """Pixels of a screenshot of the page that are clearly colored (the charts' markers and lines)."""
    import matplotlib.image

    shot = page_path.with_suffix(".png")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        f"--user-data-dir={profile}", "--window-size=1000,1400", f"--screenshot={shot}",
                        page_path.as_uri()], capture_output=True, timeout=180, check=True)
    rgb = matplotlib.image.imread(shot)[..., :3]
    return int(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.3).sum())


def test_the_html_report_draws_its_embedded_chart_offline(search_result, tmp_path):
    page = search_html(search_result, title="search report")
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    # the same page with its embedded images emptied: what a report whose charts failed to decode would show
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', page), encoding="utf-8")
    drawn, without = _colored_pixels(report), _colored_pixels(bare)
    assert drawn > 500 and drawn > 20 * without, (drawn, without)
