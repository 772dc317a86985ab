"""Precision sweeps on the embedded digits data: paired per-item measurements and the bound read from them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boundfinder.cli import main
from boundfinder.data import DigitsDataModule
from boundfinder.errors import BoundfinderError, FormatError
from boundfinder.models import LogisticRegression
from boundfinder.search.sweep import expand_family, precision_sweep


def test_expand_family_substitutes_and_validates():
    assert expand_family("e5m{b}", [2, 3]) == ["e5m2", "e5m3"]
    assert expand_family("fixed{b}.{b-4}", [8]) == ["fixed8.4"]
    assert expand_family("int{b}", [4, 8]) == ["int4", "int8"]
    with pytest.raises(BoundfinderError, match="placeholder"):
        expand_family("e5m2", [1, 2])
    with pytest.raises(FormatError, match="man_bits=24"):
        expand_family("e8m{b}", [23, 24])


@pytest.fixture(scope="module")
def sweep():
    dm = DigitsDataModule(batch_size=64, seed=0)
    return precision_sweep(lambda: LogisticRegression(lr=0.05, momentum=0.9), dm, "e8m{b}", [0, 1, 23],
                           seeds=[0, 1], epochs=3)


def test_sweep_records_paired_items_and_full_precision_matches_baseline(sweep):
    assert sweep.correct.shape == (3, 2, 449) and sweep.baseline.shape == (2, 449)
    assert sweep.correct.dtype == bool
    # e8m23 is float32 itself: every item is classified exactly as at full precision
    assert np.array_equal(sweep.correct[2], sweep.baseline)
    assert sweep.baseline_accuracy > 0.8  # logistic regression on digits after 3 epochs
    # one bit of mantissa loses accuracy somewhere
    assert sweep.accuracy[0] < sweep.accuracy[2]


def test_sweep_depends_on_its_seeds_alone(sweep):
    """The same sweep gives the same per-item results whatever the global generators hold before it (torch
    seeds its default generator differently in every process: models were once built before seeding, so the
    same command printed other numbers each run)."""
    import torch

    torch.manual_seed(12345)
    dm = DigitsDataModule(batch_size=64, seed=0)
    again = precision_sweep(lambda: LogisticRegression(lr=0.05, momentum=0.9), dm, "e8m{b}", [0, 1, 23],
                            seeds=[0, 1], epochs=3)
    assert np.array_equal(again.baseline, sweep.baseline)
    assert np.array_equal(again.correct, sweep.correct)


def test_sweep_bound_is_a_bound_estimate(sweep):
    est = sweep.bound(tolerance=0.02)
    assert est.status in ("ok", "below_range", "undetermined", "above_range")
    summary = json.loads(json.dumps(est.summary()))
    assert summary["tolerance"] == 0.02
    if est.bits is not None:
        assert est.bits in sweep.bits


def test_sweep_rejects_bad_input():
    dm = DigitsDataModule(batch_size=64, seed=0)
    with pytest.raises(BoundfinderError, match="at least 2 distinct"):
        precision_sweep(LogisticRegression, dm, "e8m{b}", [3, 3])
    with pytest.raises(BoundfinderError, match="unknown role"):
        precision_sweep(LogisticRegression, dm, "e8m{b}", [2, 3], roles=["weights"])


def test_cli_sweep_writes_report_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "s.json", tmp_path / "s.png"
    rc = main(["sweep", "--model", "logreg", "--bits", "0,2,23", "--seeds", "0", "--epochs", "2",
               "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "minimum safe bits" in out and "e8m23" in out
    data = json.loads(out_json.read_text())
    assert data["sweep"]["formats"] == ["e8m0", "e8m2", "e8m23"] and "status" in data["bound"]
    assert out_png.stat().st_size > 10_000


def test_cli_sweep_bad_input_exits_2_with_a_message(capsys):
    assert main(["sweep", "--bits", "two-four"]) == 2
    assert "'0-10'" in capsys.readouterr().err
    assert main(["sweep", "--family", "e5m2", "--epochs", "1"]) == 2
    assert "placeholder" in capsys.readouterr().err
