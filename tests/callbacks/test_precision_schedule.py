"""PrecisionSchedule: switches at exactly the configured step/epoch, logs them, resumes mid-schedule."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from boundfinder.callbacks import PrecisionSchedule
from boundfinder.errors import PolicyError
from boundfinder.models import LogisticRegression
from tests.callbacks.helpers import CrashAt, SpyLogger, digits, no_hooks_left, on_grid, trainer


class _PhaseSpy(Callback):
    """Records, for every training forward, the global step and which grids the model's output lies on.

    The output (logits) is the last layer's activation: on the e4m3fn grid in an e4m3fn phase, on the bf16 grid
    (but not e4m3fn's) in a bf16 phase, on neither at full precision.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []
        self._handle = None
        self._trainer = None

    def setup(self, trainer, pl_module, stage):
        self._trainer = trainer
        self._handle = pl_module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if module.training:
            grid = "e4m3fn" if on_grid(output, "e4m3fn") else "bf16" if on_grid(output, "bf16") else "fp32"
            self.seen.append((self._trainer.global_step, grid))

    def teardown(self, trainer, pl_module, stage):
        self._handle.remove()

    def by_step(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for step, grid in self.seen:
            out.setdefault(step, set()).add(grid)
        return out


# -- arguments ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "kwargs", "match"),
    [
        ({}, {}, "non-empty dict"),
        ("e5m2", {}, "non-empty dict"),
        ({-1: "e5m2"}, {}, "non-negative ints"),
        ({1.5: "e5m2"}, {}, "non-negative ints"),
        ({True: "e5m2"}, {}, "non-negative ints"),
        ({0: "e5m2"}, {"unit": "batch"}, "unit"),
        ({0: "e5m2"}, {"level": "tile"}, "level"),
        ({0: "e5m2", 5: {"*": {"grad_output": "binary"}}}, {}, "not valid for role"),
        ({0: "e5m2", 5: "e99m1"}, {}, "exp_bits"),
    ],
)
def test_arguments_are_checked_in_init(schedule, kwargs, match):
    with pytest.raises(PolicyError, match=match):
        PrecisionSchedule(schedule, **kwargs)


def test_schedule_is_sorted_and_copied():
    spec = {"classifier": "bf16"}
    schedule = {6: None, 0: "e4m3fn", 3: spec}
    cb = PrecisionSchedule(schedule)
    key = cb.state_key
    spec["classifier"] = "fp16"
    schedule[9] = "e5m2"
    assert cb.switch_points == (0, 3, 6) and cb.state_key == key
    assert [cb.phase_at(p) for p in (0, 2, 3, 5, 6, 100)] == [0, 0, 1, 1, 2, 2]
    assert PrecisionSchedule({2: "bf16"}).phase_at(1) == -1  # full precision before the first switch
    assert cb.policy_at(7) is None
    json.dumps(cb.state_dict())


# -- switching ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["layer", "op"])
def test_switches_at_exactly_the_configured_steps(level):
    # Low -> high precision as in the study's hypothesis, then back to full precision.
    cb = PrecisionSchedule({2: "e4m3fn", 5: "bf16", 7: None}, unit="step", level=level)
    spy, logger = _PhaseSpy(), SpyLogger()
    t = trainer(max_steps=9, limit_val_batches=0, logger=logger, callbacks=[spy, cb], log_every_n_steps=100)
    t.fit(LogisticRegression(), digits(batch_size=32))
    expected = {0: "fp32", 1: "fp32", 2: "e4m3fn", 3: "e4m3fn", 4: "e4m3fn", 5: "bf16", 6: "bf16", 7: "fp32",
                8: "fp32"}
    assert spy.by_step() == {step: {grid} for step, grid in expected.items()}
    switches = [(step, m) for step, m in logger.calls if "precision_phase" in m]
    assert switches == [
        (2, {"precision_phase": 0.0, "precision_bits": 8.0}),
        (5, {"precision_phase": 1.0, "precision_bits": 16.0}),
        (7, {"precision_phase": 2.0, "precision_bits": 32.0}),
    ]
    assert cb.history == [(0, -1), (2, 0), (5, 1), (7, 2)]


def test_switch_points_count_optimizer_steps_under_gradient_accumulation():
    cb = PrecisionSchedule({0: "bf16", 2: "e4m3fn"})
    spy = _PhaseSpy()
    t = trainer(max_steps=3, limit_val_batches=0, accumulate_grad_batches=2, callbacks=[spy, cb])
    t.fit(LogisticRegression(), digits(batch_size=32))
    # Two forwards per optimizer step; the switch comes with the first forward of step 2.
    assert spy.seen == [(0, "bf16"), (0, "bf16"), (1, "bf16"), (1, "bf16"), (2, "e4m3fn"), (2, "e4m3fn")]


def test_epoch_unit_high_to_low_with_batch_level():
    cb = PrecisionSchedule({0: "bf16", 1: "e4m3fn"}, unit="epoch", level="batch")
    model = LogisticRegression()
    seen = []

    class Probe(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append((trainer.current_epoch, on_grid(pl_module.classifier.weight, "e4m3fn"),
                         on_grid(pl_module.classifier.weight, "bf16")))

    t = trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, callbacks=[cb, Probe()])
    t.fit(model, digits())
    assert seen == [(0, False, True), (1, True, True)]


def test_evaluation_uses_the_phase_of_the_current_position():
    model = BoringModel()
    cb = PrecisionSchedule({0: "e4m3fn", 4: "bf16"})
    outputs = []
    handle = model.register_forward_hook(lambda m, a, out: outputs.append(out))
    t = trainer(max_steps=5, limit_val_batches=0, limit_test_batches=1, callbacks=[cb])
    t.fit(model)
    outputs.clear()
    t.test(model, verbose=False)  # global_step is 5: the bf16 phase
    assert outputs and all(on_grid(o, "bf16") and not on_grid(o, "e4m3fn") for o in outputs)
    handle.remove()
    assert no_hooks_left(model)


def test_a_phase_that_does_not_fit_the_model_fails_in_setup():
    model = LogisticRegression()
    cb = PrecisionSchedule({0: "bf16", 50: {"features.conv*": "e4m3fn"}})
    with pytest.raises(PolicyError, match="classifier"):
        trainer(max_steps=1, callbacks=[cb]).fit(model, digits())
    assert no_hooks_left(model)


def test_a_phase_the_level_cannot_run_fails_before_training():
    # The op level rounds every op with one format: a later phase with per-layer formats is rejected in setup,
    # not at its switch point mid-run.
    model = LogisticRegression()
    init = model.classifier.weight.detach().clone()
    cb = PrecisionSchedule({0: "bf16", 50: {"classifier": "e5m2", "features": "e4m3fn"}}, level="op")
    with pytest.raises(PolicyError, match="level 'op'"):
        trainer(max_steps=60, callbacks=[cb]).fit(model, digits())
    assert torch.equal(init, model.classifier.weight) and no_hooks_left(model)


# -- crash and resume -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["layer", "batch"])
def test_crash_then_resume_mid_schedule_with_the_right_precision(tmp_path, level):
    def schedule():
        return PrecisionSchedule({0: None, 2: "e4m3fn", 6: "bf16"}, level=level)

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    model = LogisticRegression()
    t = trainer(max_steps=10, limit_val_batches=0, enable_checkpointing=True,
                callbacks=[schedule(), ckpt, CrashAt(5)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        t.fit(model, digits(batch_size=32))
    assert no_hooks_left(model)
    assert all(not opt._optimizer_step_post_hooks for opt in t.optimizers)
    path = tmp_path / "epoch=0-step=3.ckpt"
    cb = schedule()
    assert torch.load(path, weights_only=False)["callbacks"][cb.state_key]["phase"] == 1

    spy, logger = _PhaseSpy(), SpyLogger()
    resumed = LogisticRegression()
    t2 = trainer(max_steps=8, limit_val_batches=0, logger=logger, log_every_n_steps=100, callbacks=[spy, cb])
    t2.fit(resumed, digits(batch_size=32), ckpt_path=path)
    steps = sorted(spy.by_step())
    assert steps == [3, 4, 5, 6, 7]
    if level == "layer":
        assert spy.by_step() == {3: {"e4m3fn"}, 4: {"e4m3fn"}, 5: {"e4m3fn"}, 6: {"bf16"}, 7: {"bf16"}}
    else:
        assert on_grid(resumed.classifier.weight, "bf16")
    # Re-entering phase 1 at the resume is not a switch; only the switch at step 6 is logged.
    assert [(s, m["precision_phase"]) for s, m in logger.calls if "precision_phase" in m] == [(6, 2.0)]
    assert cb.history == [(3, 1), (6, 2)]
    assert no_hooks_left(resumed)


def test_loading_a_checkpoint_of_another_schedule_warns_and_follows_this_one():
    other = PrecisionSchedule({0: "bf16", 10: "e5m2"}).state_dict()
    cb = PrecisionSchedule({0: "bf16", 4: "e5m2"})
    with pytest.warns(UserWarning, match="differs from this one"):
        cb.load_state_dict(other)
    assert cb.phase_at(5) == 1
