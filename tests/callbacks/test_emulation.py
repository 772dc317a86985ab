"""PrecisionEmulation on a real CPU Trainer: every level on digits models, foreign models, errors, crash/resume."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos import LightningTransformer
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from boundfinder.callbacks import PrecisionEmulation
from boundfinder.emulation import layer
from boundfinder.errors import PolicyError
from boundfinder.models import LeNet, LogisticRegression
from boundfinder.policy import PrecisionPolicy, Rule, layer_modules
from tests.callbacks.helpers import CrashAt, digits, no_hooks_left, on_grid, token_loader, trainer

LEVELS = ("layer", "op", "batch")
MODELS = {"logreg": LogisticRegression, "lenet": lambda **kw: LeNet(channels=(4, 8), hidden=16, **kw)}


# -- arguments ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"level": "tile"}, PolicyError, "level"),
        ({"rounding": "banker"}, PolicyError, "rounding"),
        ({"stages": ("fit", "train")}, PolicyError, "stages"),
        ({"stages": ()}, PolicyError, "stages"),
        ({"accumulate_chunk": 4}, PolicyError, "only the 'op' level"),
        ({"level": "op", "accumulate_chunk": 0}, PolicyError, "accumulate_chunk"),
        ({"seed": "1"}, PolicyError, "seed"),
    ],
)
def test_arguments_are_checked_in_init(kwargs, error, match):
    with pytest.raises(error, match=match):
        PrecisionEmulation("e5m2", **kwargs)


def test_bad_formats_and_roles_fail_at_construction():
    with pytest.raises(PolicyError, match="unknown format name 'e9m99x'"):
        PrecisionEmulation("e9m99x")
    with pytest.raises(PolicyError, match="unknown tensor role"):
        PrecisionEmulation({"*": {"wieght": "e5m2"}})
    # A sign is no gradient: binary is a valid format, but not for the grad_output role.
    with pytest.raises(PolicyError, match="not valid for role 'grad_output'"):
        PrecisionEmulation({"*": {"grad_output": "binary"}})


def test_the_callers_dict_is_neither_kept_nor_mutated():
    spec = {"features.*": "e5m2", "classifier.*": {"weight": "bf16"}}
    before = json.dumps(spec)
    cb = PrecisionEmulation(spec)
    key = cb.state_key
    spec["classifier.*"]["weight"] = "fp16"
    spec["extra"] = "e4m3fn"
    assert cb.state_key == key
    assert [r.pattern for r in cb.policy.rules] == ["features.*", "classifier.*"]
    assert str(cb.policy.rules[1].formats["weight"]) == "bf16"
    spec2 = json.loads(before)
    cb2 = PrecisionEmulation(spec2)
    t = trainer(max_steps=1, limit_val_batches=0, callbacks=[cb2])
    t.fit(MODELS["lenet"](), digits())
    assert json.dumps(spec2) == before


def test_state_key_and_state_dict_are_plain_and_from_constructor_args():
    a = PrecisionEmulation({"features.*": "e5m2"}, level="batch")
    b = PrecisionEmulation({"features.*": "e5m2"}, level="batch")
    c = PrecisionEmulation({"features.*": "e5m2"}, level="layer")
    assert a.state_key == b.state_key != c.state_key
    json.dumps(a.state_dict())  # plain values only


# -- levels on the digits models ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_batch_level_e8m3_leaves_every_parameter_and_state_representable(name):
    model = MODELS[name](lr=0.1, momentum=0.9)
    init = [p.detach().clone() for p in model.parameters()]
    t = trainer(max_steps=4, limit_val_batches=0, callbacks=[PrecisionEmulation("e8m3", level="batch")])
    t.fit(model, digits())
    params = list(model.parameters())
    assert all(on_grid(p, "e8m3") for p in params)
    assert any(not torch.equal(p, q) for p, q in zip(params, init, strict=True))  # it did train
    # The policy names every role, optimizer_state included: SGD's momentum buffers are on the grid too.
    buffers = [s["momentum_buffer"] for s in t.optimizers[0].state.values()]
    assert buffers and all(on_grid(b, "e8m3") for b in buffers)
    assert no_hooks_left(model)


def test_roles_limit_a_plain_format_to_some_tensors():
    model = LogisticRegression(lr=0.1, momentum=0.9)
    cb = PrecisionEmulation("e8m3", level="batch", roles=("weight", "bias"))
    t = trainer(max_steps=3, limit_val_batches=0, callbacks=[cb])
    t.fit(model, digits())
    assert all(on_grid(p, "e8m3") for p in model.parameters())
    buffers = [s["momentum_buffer"] for s in t.optimizers[0].state.values()]
    assert buffers and not all(on_grid(b, "e8m3") for b in buffers)  # optimizer_state was not named
    with pytest.raises(PolicyError, match="roles"):
        PrecisionEmulation("e8m3", roles=("weights",))


class _GridSpy(Callback):
    """Checks, during training, that what crosses layer boundaries is on the grid of ``fmt``:

    - the input of every layer but the first (= the previous layer's rounded activation);
    - the gradient arriving at every layer's raw output (rounded by the activation boundary's backward);
    - every parameter's ``.grad`` before the optimizer step (``weight_grad``).
    Hooks are registered before the emulation's (on setup), so they see tensors before this layer's rounding.
    """

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.checks: dict[str, list[bool]] = {"input": [], "grad": [], "weight_grad": [], "logits": []}
        self.handles: list = []

    def setup(self, trainer, pl_module, stage):
        layers = list(layer_modules(pl_module).items())
        for i, (_, module) in enumerate(layers):
            if i > 0:
                self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._post))
        self.handles.append(pl_module.register_forward_hook(self._top))

    def _pre(self, module, args):
        if module.training:
            self.checks["input"].append(on_grid(args[0], self.fmt))

    def _post(self, module, args, output):
        if module.training and output.requires_grad:
            output.register_hook(lambda g: self.checks["grad"].append(on_grid(g, self.fmt)))

    def _top(self, module, args, output):
        if module.training:
            self.checks["logits"].append(on_grid(output, self.fmt))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.checks["weight_grad"] += [on_grid(p.grad, self.fmt) for p in pl_module.parameters()]

    def teardown(self, trainer, pl_module, stage):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("name", MODELS)
def test_layer_level_activations_and_gradients_are_on_the_grid(name, monkeypatch):
    # the hooks' path, whose roundings sit at the layer boundaries the spy watches (the fused native Linear
    # rounds inside its forward, with the same results: tests/emulation/test_native.py)
    monkeypatch.setattr(layer, "FUSE", False)
    model = MODELS[name]()
    spy = _GridSpy("e5m2")
    t = trainer(max_steps=3, limit_val_batches=0, callbacks=[spy, PrecisionEmulation("e5m2", level="layer")])
    t.fit(model, digits())
    for what, results in spy.checks.items():
        assert results and all(results), what
    assert no_hooks_left(model)
    # The spy itself proves it can fail: without emulation the same checks are not all true.
    bare = _GridSpy("e5m2")
    trainer(max_steps=1, limit_val_batches=0, callbacks=[bare]).fit(MODELS[name](), digits())
    assert not all(bare.checks["logits"]) and not all(bare.checks["weight_grad"])


class _OpSpy(TorchDispatchMode):
    """Entered inside the rounding mode, so it sees every op's output after rounding.

    Ops that compute nothing (views, copies, allocations, constants) are skipped: their values are inputs or
    constants, which emulation does not round on purpose. Digits inputs are k/16 and lie on the e4m3 grid anyway.
    """

    SKIP = ("empty", "fill", "lift_fresh", "_to_copy", "copy_", "_local_scalar_dense", "scalar_tensor")

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.fmt, self.results = fmt, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not any(s in name for s in self.SKIP):
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    self.results.append((name, on_grid(t, self.fmt)))
        return out


def _op_spied(base):
    class Spied(base):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.spy = _OpSpy("e4m3fn")

        def training_step(self, batch, batch_idx):
            with self.spy:
                return super().training_step(batch, batch_idx)

        def backward(self, loss, *args, **kwargs):
            with self.spy:
                loss.backward(*args, **kwargs)

    return Spied


@pytest.mark.parametrize("name", MODELS)
def test_op_level_every_op_output_is_on_the_grid(name):
    base = LogisticRegression if name == "logreg" else LeNet
    kwargs = {} if name == "logreg" else {"channels": (4, 8), "hidden": 16}
    model = _op_spied(base)(**kwargs)
    t = trainer(max_steps=2, limit_val_batches=0, callbacks=[PrecisionEmulation("e4m3fn", level="op")])
    t.fit(model, digits())
    ops = {n for n, _ in model.spy.results}
    assert {"addmm", "log_softmax", "nll_loss_forward", "mm"} & ops  # forward and backward ops were seen
    bad = [n for n, ok in model.spy.results if not ok]
    assert not bad, bad
    # Without the callback the spy does see ops off the grid.
    bare = _op_spied(base)(**kwargs)
    trainer(max_steps=1, limit_val_batches=0).fit(bare, digits())
    assert not all(ok for _, ok in bare.spy.results)


@pytest.mark.parametrize("level", LEVELS)
def test_fp32_is_bit_identical_to_no_callback(level):
    def run(callbacks):
        torch.manual_seed(0)
        model = MODELS["lenet"](lr=0.1, momentum=0.9)
        trainer(max_steps=4, limit_val_batches=0, callbacks=callbacks).fit(model, digits())
        return [p.detach().clone() for p in model.parameters()]

    plain = run([])
    emulated = run([PrecisionEmulation("fp32", level=level)])
    assert all(torch.equal(a, b) for a, b in zip(plain, emulated, strict=True))


# -- models the tests did not write ---------------------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_boring_model_runs_unmodified_for_every_entry_point(level):
    model = BoringModel()
    cb = PrecisionEmulation("bf16", level=level)
    t = trainer(max_steps=2, limit_val_batches=2, limit_test_batches=2, limit_predict_batches=2, callbacks=[cb])
    t.fit(model)
    assert no_hooks_left(model)
    t.validate(model, verbose=False)
    t.test(model, verbose=False)
    preds = t.predict(model)
    assert no_hooks_left(model)
    assert len(preds) == 2
    if level != "batch":  # layer and op round the output; batch rounds parameters only
        assert all(on_grid(p, "bf16") for p in preds)
    else:
        assert all(on_grid(p, "bf16") for p in model.parameters())


@pytest.mark.parametrize("level", LEVELS)
def test_lightning_demo_transformer_trains_unmodified(level, monkeypatch):
    model = LightningTransformer(vocab_size=50)
    # Its prepare_data downloads WikiText-2; the tests feed random tokens instead (the model code is untouched).
    monkeypatch.setattr(model, "prepare_data", lambda: None)
    # op level rounds every op with one format; the other levels take per-layer formats.
    spec = "bf16" if level == "op" else {"*encoder*": "bf16", "model.transformer.decoder": "e5m2"}
    cb = PrecisionEmulation(spec, level=level)
    t = trainer(max_steps=2, callbacks=[cb])
    t.fit(model, train_dataloaders=token_loader())
    assert t.global_step == 2
    assert no_hooks_left(model)


def test_stages_limit_where_emulation_is_active():
    model = BoringModel()
    seen = []
    handle = model.register_forward_hook(lambda m, a, out: seen.append((m.training, on_grid(out, "e4m3fn"))))
    t = trainer(max_steps=2, limit_val_batches=0, limit_test_batches=2, callbacks=[
        PrecisionEmulation("e4m3fn", stages=("test",))
    ])
    t.fit(model)
    assert seen and not any(ok for _, ok in seen)
    seen.clear()
    t.test(model, verbose=False)
    assert seen and all(ok for _, ok in seen)
    handle.remove()
    assert no_hooks_left(model)


# -- errors against the model ---------------------------------------------------------------------------------
def test_unknown_pattern_names_the_existing_layers():
    model = MODELS["lenet"]()
    t = trainer(max_steps=1, callbacks=[PrecisionEmulation({"featurez.*": "e5m2"})])
    with pytest.raises(PolicyError, match="featurez") as info:
        t.fit(model, digits())
    assert "features.conv1" in str(info.value) and "classifier.fc2" in str(info.value)
    assert no_hooks_left(model)


def test_conflicting_rules_are_rejected_in_setup():
    cb = PrecisionEmulation({"features.*": "e5m2", "*conv1": "e4m3fn"})
    with pytest.raises(PolicyError, match=r"conflicting rules for layer 'features\.conv1'"):
        trainer(max_steps=1, callbacks=[cb]).fit(MODELS["lenet"](), digits())


def test_a_policy_selecting_no_layer_is_rejected():
    policy = PrecisionPolicy(rules=(Rule(module_type=nn.Conv2d, formats={"weight": "e5m2"}),))
    model = LogisticRegression()
    with pytest.raises(PolicyError, match="selects no layer"):
        trainer(max_steps=1, callbacks=[PrecisionEmulation(policy)]).fit(model, digits())
    assert no_hooks_left(model)


# -- crash and resume -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["batch", "layer"])
def test_crash_cleans_up_and_resume_continues_under_the_policy(tmp_path, level):
    model = MODELS["logreg"](lr=0.1)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    t = trainer(max_steps=10, limit_val_batches=0, enable_checkpointing=True,
                callbacks=[PrecisionEmulation("e8m3", level=level), ckpt, CrashAt(3)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        t.fit(model, digits())
    assert no_hooks_left(model)
    assert all(not opt._optimizer_step_post_hooks for opt in t.optimizers)
    path = tmp_path / "epoch=0-step=2.ckpt"
    saved = torch.load(path, weights_only=False)
    cb = PrecisionEmulation("e8m3", level=level)
    assert saved["callbacks"][cb.state_key] == cb.state_dict()

    resumed = MODELS["logreg"](lr=0.1)
    spy = _GridSpy("e8m3")
    t2 = trainer(max_steps=5, limit_val_batches=0, callbacks=[spy, cb])
    t2.fit(resumed, digits(), ckpt_path=path)
    assert t2.global_step == 5
    if level == "batch":
        assert all(on_grid(p, "e8m3") for p in resumed.parameters())
    else:
        assert spy.checks["logits"] and all(spy.checks["logits"])
    assert no_hooks_left(resumed)


@pytest.mark.parametrize("fmt", ["e5m10", "e4m3fn"])
def test_batch_level_buffers_checkpoint_and_resume(tmp_path, fmt):
    """Formats whose batch-level parameters live in one buffer (emulation/flat.py): checkpoints written under
    the buffer restore into a fresh model, and a crash gives the parameters their own storage back."""
    model = MODELS["lenet"](lr=0.1)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    t = trainer(max_steps=10, limit_val_batches=0, enable_checkpointing=True,
                callbacks=[PrecisionEmulation(fmt, level="batch"), ckpt, CrashAt(3)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        t.fit(model, digits())
    assert no_hooks_left(model)
    assert all(p.data._base is None for p in model.parameters())  # own storage again
    saved = torch.load(tmp_path / "epoch=0-step=2.ckpt", weights_only=False)["state_dict"]
    assert all(on_grid(v, fmt) for v in saved.values() if v.is_floating_point())
    resumed = MODELS["lenet"](lr=0.1)
    t2 = trainer(max_steps=5, limit_val_batches=0, callbacks=[PrecisionEmulation(fmt, level="batch")])
    t2.fit(resumed, digits(), ckpt_path=tmp_path / "epoch=0-step=2.ckpt")
    assert t2.global_step == 5
    assert all(on_grid(p, fmt) for p in resumed.parameters())
    assert all(p.data._base is None for p in resumed.parameters())


# -- more Trainer set-ups -------------------------------------------------------------------------------------
def test_batch_level_rounds_after_manual_optimization_steps():
    from lightning.pytorch.demos.boring_classes import ManualOptimBoringModel

    model = ManualOptimBoringModel()  # calls optimizer.step() itself: the post-step hook still fires
    t = trainer(max_steps=3, limit_val_batches=0, callbacks=[PrecisionEmulation("e4m3fn", level="batch")])
    t.fit(model)
    assert all(on_grid(p, "e4m3fn") for p in model.parameters())
    assert no_hooks_left(model)


def test_op_level_with_chunked_accumulation_trains():
    model = LogisticRegression()
    init = model.classifier.weight.detach().clone()
    cb = PrecisionEmulation("bf16", level="op", accumulate_chunk=8)
    trainer(max_steps=2, limit_val_batches=0, callbacks=[cb]).fit(model, digits(batch_size=16))
    assert not torch.equal(init, model.classifier.weight)
    assert no_hooks_left(model)


def test_stochastic_rounding_is_reproducible_with_a_seed():
    def run(seed):
        torch.manual_seed(0)
        model = LogisticRegression()
        cb = PrecisionEmulation("e5m2", level="batch", rounding="stochastic", seed=seed)
        trainer(max_steps=3, limit_val_batches=0, callbacks=[cb]).fit(model, digits())
        return model.classifier.weight.detach().clone()

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert on_grid(a, "e5m2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("level", LEVELS)
def test_rounding_runs_on_the_models_gpu(level):
    model = MODELS["lenet"]()
    outputs = []
    handle = model.register_forward_hook(lambda m, a, out: outputs.append(out.detach()))

    class LastParameters(Callback):
        # Lightning moves the module back to the CPU in teardown: look at the parameters before that
        def on_train_end(self, trainer, pl_module):
            self.params = [p.detach().clone() for p in pl_module.parameters()]

    last = LastParameters()
    cb = PrecisionEmulation("e5m2", level=level)
    t = trainer(accelerator="gpu", max_steps=2, limit_val_batches=0, callbacks=[cb, last])
    t.fit(model, digits())
    handle.remove()
    assert outputs and all(o.is_cuda for o in outputs)
    if level == "batch":
        assert all(p.is_cuda and on_grid(p, "e5m2") for p in last.params)
    else:
        assert all(on_grid(o, "e5m2") for o in outputs)


def test_loading_a_checkpoint_written_under_another_policy_warns():
    old = PrecisionEmulation("e5m2", level="batch").state_dict()
    cb = PrecisionEmulation("bf16", level="batch")
    with pytest.warns(UserWarning, match="resuming under"):
        cb.load_state_dict(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same policy: silent
        cb.load_state_dict(cb.state_dict())
