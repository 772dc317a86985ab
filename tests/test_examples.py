"""The examples run as the README shows them: trained by LightningCLI, then measured by boundfinder from the same
config and the checkpoint (shortened: one epoch, two widths)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "transformer"


@pytest.mark.slow
def test_transformer_example_trains_with_lightningcli_and_is_measured_from_its_config_and_checkpoint(tmp_path):
    for name in ("rows.py", "train.py", "config.yaml"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    run = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 600}
    fit = subprocess.run([sys.executable, "train.py", "fit", "--config", "config.yaml", "--trainer.max_epochs", "2"],
                         **run)
    assert fit.returncode == 0, fit.stderr[-2000:]
    ckpt = tmp_path / "runs" / "checkpoints" / "row-transformer.ckpt"
    assert ckpt.is_file()
    cli = [sys.executable, "-m", "boundfinder.cli"]
    sens = subprocess.run([*cli, "sensitivity", "--config", "config.yaml", "--ckpt", str(ckpt), "--bits", "0,23",
                           "--roles", "weight", "--layers", "blocks.0.attn,head", "--json", "s.json"], **run)
    assert sens.returncode == 0, sens.stderr[-2000:]
    assert "model RowTransformer on DigitRows (450 test items, the trained model from" in sens.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["experiment"]["model_class"] == "rows.RowTransformer" and summary["seeds"] == []
    search = subprocess.run([*cli, "search", "--config", "config.yaml", "--epochs", "1", "--seeds", "0", "--bits",
                             "2,8", "--layers", "blocks.*,head", "--trials", "2", "--storage", "", "--seed", "0"],
                            **run)
    assert search.returncode == 0, search.stderr[-2000:]
    assert "study 'RowTransformer-e8mb-layer-nearest'" in search.stdout and \
        "claim: the 1 trained RowTransformer model of seeds [0] themselves" in search.stdout



ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("model", "data", "score", "tolerance", "metric"), [
    ("regression/regression.py:Regressor", "regression/regression.py:Diabetes", "squared_error", "0.02",
     "squared_error"),
    ("sequence/sequence.py:PixelLM", "sequence/sequence.py:DigitTokens", "nll", "0.01", "nll"),
])
def test_continuous_examples_run_through_sweep_sensitivity_and_search(tmp_path, capsys, model, data, score, tolerance,
                                                                 metric):
    """The regression and sequence examples on bundled data, shortened (two epochs, one seed, three widths), in
    this process (the README's commands, without a second interpreter's imports): sweep, sensitivity, search."""
    from boundfinder.cli import main

    common = ["--model", f"{ROOT}/examples/{model}", "--data", f"{ROOT}/examples/{data}", "--score", score,
              "--tolerance", tolerance, "--seeds", "0", "--epochs", "2", "--bits", "0,4,10"]
    assert main(["sweep", *common, "--json", str(tmp_path / "sweep.json")]) == 0
    out = capsys.readouterr().out
    assert f"full precision {metric}:" in out and f"metric: {metric} (lower is better)" in out
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["bound"]["metric"] == metric and summary["bound"]["continuous"]
    assert summary["sweep"]["drop"][-1] == pytest.approx(0.0, abs=1e-3)  # 10 fraction bits change little
    assert main(["sensitivity", *common, "--roles", "weight", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert f"({metric} " in out and f"(absolute {metric} increase)" in out
    table = json.loads((tmp_path / "s.json").read_text())
    assert table["metric"] == metric and len(table["cells"]) >= 3
    assert main(["search", *common, "--trials", "2", "--storage", "", "--seed", "0",
                 "--json", str(tmp_path / "search.json")]) == 0
    out = capsys.readouterr().out
    assert f"{metric} (lower is better)" in out and "val increase" in out and f"test {metric} increase" in out
    found = json.loads((tmp_path / "search.json").read_text())
    assert (found["metric"], found["continuous"], found["higher_is_better"]) == (metric, True, False)
    assert found["chosen"] is not None and found["confirmation"]["continuous"]
