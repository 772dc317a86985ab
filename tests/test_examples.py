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
    assert "study 'RowTransformer-e8mb-layer-nearest'" in search.stdout and "claim: RowTransformer models" in \
        search.stdout
