"""Near-chance warnings: the rule on arrays with a known majority rate, the labels read from an experiment, and the
warning that sweeps and sensitivity tables carry and print first."""

from __future__ import annotations

import json
import logging

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from boundfinder.data import DigitsDataModule
from boundfinder.errors import BoundfinderError
from boundfinder.experiment import Experiment
from boundfinder.models import MLP
from boundfinder.search.baseline import (
    CHANCE_FACTOR,
    baseline_warning,
    chance_rate,
    class_labels,
    majority_rate,
    near_chance,
)
from boundfinder.search.sensitivity import precision_sensitivity
from boundfinder.search.sweep import precision_sweep

# 100 items: class 0 holds 30 of them, classes 1..7 ten each: majority rate 0.3, near-chance floor 1.5 x 0.3 = 0.45
LABELS = np.array([0] * 30 + [c for c in range(1, 8) for _ in range(10)])


def _right(n: int, of: int = 100) -> np.ndarray:
    return np.arange(of) < n


def test_majority_rate_is_the_share_of_the_k_most_frequent_classes():
    assert majority_rate(LABELS) == 0.3
    assert majority_rate(LABELS, k=2) == pytest.approx(0.4, abs=1e-12)  # float division, nothing else
    assert majority_rate(LABELS, k=8) == majority_rate(LABELS, k=20) == 1.0
    with pytest.raises(BoundfinderError, match="non-empty 1-D"):
        majority_rate(np.zeros(0, dtype=int))


def test_near_chance_warns_below_the_factor_times_the_majority_rate():
    assert CHANCE_FACTOR == 1.5  # the rule; the floors below are 1.5 x 0.3
    warning = near_chance(_right(44), LABELS)
    assert warning.startswith("WARNING: the full-precision model is near chance on the 100 test items")
    assert "top1 accuracy 0.4400, majority-class rate 0.3000 (ratio 1.47)" in warning
    assert "below the 0.4500" in warning
    assert near_chance(_right(46), LABELS) is None
    assert near_chance(_right(100), LABELS) is None


def test_near_chance_floor_is_capped_for_imbalanced_labels():
    """Above a majority rate of 1/2, 1.5 x the rate would pass 100% and flag a perfect model: the floor is half way
    from the rate to 1 instead (0.8 -> 0.9)."""
    labels = np.array([0] * 80 + [1] * 20)
    assert near_chance(_right(100), labels) is None
    assert near_chance(_right(91), labels) is None
    assert "below the 0.9000" in near_chance(_right(89), labels)


def test_near_chance_names_the_seeds_below_the_floor():
    baseline = np.stack([_right(95), _right(20), _right(90)])
    warning = near_chance(baseline, LABELS, seeds=(3, 4, 5), split="val")
    assert "100 val items" in warning
    assert "seed 3: 0.9500, seed 4: 0.2000, seed 5: 0.9000 (mean 0.6833)" in warning
    assert "ratios 3.17, 0.67, 3.00; mean 2.28" in warning
    assert "should reach for seed 4 (" in warning
    assert "model 2" in near_chance(baseline, LABELS)  # rows without seeds are numbered
    assert near_chance(np.stack([_right(95), _right(90)]), LABELS) is None


def test_near_chance_top5_compares_with_the_five_most_frequent_classes():
    # the 5 most frequent classes hold 30 + 4 x 10 = 70 items: floor 0.7 + 0.5 x 0.3 = 0.85
    warning = near_chance(_right(80), LABELS, k=5)
    assert "top5 accuracy 0.8000, rate of the 5 most frequent classes 0.7000" in warning
    assert near_chance(_right(86), LABELS, k=5) is None


def test_near_chance_refuses_mismatched_shapes():
    with pytest.raises(BoundfinderError, match="baseline is"):
        near_chance(_right(50, of=99), LABELS)
    with pytest.raises(BoundfinderError, match="one seed per baseline row"):
        near_chance(np.stack([_right(50), _right(50)]), LABELS, seeds=(0,))


# -- labels read from an experiment --------------------------------------------------------------------------------
class _Constant(nn.Module):
    """A "trained" model that answers ``label`` whatever it sees (zero weights, the bias picks the class)."""

    def __init__(self, label: int = 0) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.eye(10)[label])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(x))


def _digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    return dm


def test_class_labels_and_chance_rate_of_the_digits_experiment():
    dm = _digits()
    exp = Experiment(model=_Constant(), data=dm)
    labels = class_labels(exp, "test")
    assert np.array_equal(labels, dm.test_targets.numpy())
    counts = np.bincount(labels)
    assert chance_rate(exp, "test") == counts.max() / len(labels)
    assert len(class_labels(exp, "val")) == len(dm.val_items)
    top5 = Experiment(model=_Constant(), data=dm, score="top5")
    assert chance_rate(top5, "test") == np.sort(counts)[-5:].sum() / len(labels)


class _Tensors(pl.LightningDataModule):
    """Test batches of 8x8 images with ``targets`` as given: a dict batch, or a pair with float class numbers."""

    def __init__(self, *, as_dict: bool) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(20, 1, 8, 8, generator=gen), torch.arange(20) % 4
        self.as_dict = as_dict

    def test_dataloader(self) -> DataLoader:
        if self.as_dict:
            rows = [{"image": self.x[i], "label": self.y[i]} for i in range(20)]
            return DataLoader(rows, batch_size=8)
        return DataLoader(TensorDataset(self.x, self.y.float()), batch_size=8)


def test_labels_are_read_from_dict_batches_too():
    exp = Experiment(model=_Constant(), data=_Tensors(as_dict=True))
    assert np.array_equal(class_labels(exp, "test"), np.arange(20) % 4)
    assert chance_rate(exp, "test") == 0.25


def test_no_warning_without_integer_class_labels():
    """Float targets: the built-in score compares them, but they are not class labels to count."""
    exp = Experiment(model=_Constant(), data=_Tensors(as_dict=False))
    assert class_labels(exp, "test") is None and chance_rate(exp, "test") is None
    assert baseline_warning(exp, "test", np.zeros(20, dtype=bool)) is None


def test_no_warning_for_a_custom_score(caplog):
    def right_if_class_zero(model, batch):
        return model(batch[0]).argmax(dim=1) == 0

    exp = Experiment(model=_Constant(), data=_digits(), score=right_if_class_zero)
    assert class_labels(exp, "test") is None and chance_rate(exp, "test") is None
    with caplog.at_level(logging.DEBUG, logger="boundfinder.search.baseline"):
        assert baseline_warning(exp, "test", np.zeros((2, 449), dtype=bool), seeds=(0, 1)) is None
    assert not caplog.records


def test_baseline_warning_refuses_a_baseline_of_other_items():
    exp = Experiment(model=_Constant(), data=_digits())
    with pytest.raises(BoundfinderError, match="449 labelled items, but the baseline has 448"):
        baseline_warning(exp, "test", np.zeros(448, dtype=bool))


# -- carried by the sweep and the sensitivity table ------------------------------------------------------------------
def test_sweep_and_sensitivity_of_a_constant_model_warn_first(caplog):
    dm = _digits()
    majority = int(np.bincount(dm.test_targets.numpy()).argmax())
    with caplog.at_level(logging.WARNING, logger="boundfinder.search.baseline"):
        sweep = precision_sweep(_Constant(majority), dm, "e8m{b}", [1, 23])
    # always the most frequent class: the accuracy is the majority-class rate itself
    assert sweep.baseline_accuracy == chance_rate(Experiment(model=_Constant(), data=dm), "test")
    assert sweep.baseline_warning.startswith("WARNING: the full-precision model is near chance on the 449 test")
    assert "(ratio 1.00)" in sweep.baseline_warning
    assert sweep.report().splitlines()[0] == sweep.baseline_warning
    assert json.loads(json.dumps(sweep.summary()))["baseline_warning"] == sweep.baseline_warning
    assert [r.getMessage() for r in caplog.records] == [sweep.baseline_warning]

    table = precision_sensitivity(_Constant(majority), dm, "e8m{b}", [1, 23], roles=["weight"])
    assert table.baseline_warning == sweep.baseline_warning
    assert table.report().splitlines()[0] == table.baseline_warning
    assert json.loads(json.dumps(table.summary()))["baseline_warning"] == table.baseline_warning


def test_sweep_of_a_trained_builtin_mlp_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="boundfinder.search.baseline"):
        sweep = precision_sweep(lambda: MLP(hidden=(64,), lr=0.05, momentum=0.9), DigitsDataModule(seed=0),
                                "e8m{b}", [1, 23], seeds=[0], epochs=3)
    assert sweep.baseline_accuracy > 0.8  # the built-in model after three epochs: 0.851 measured (chance 0.10)
    assert sweep.baseline_warning is None and sweep.summary()["baseline_warning"] is None
    assert sweep.report().startswith("full precision accuracy: ")
    assert not caplog.records
