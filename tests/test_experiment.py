"""The experiment contract: scores, batches, import paths, evaluation loaders, configs and checkpoints."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from boundfinder.errors import BoundfinderError
from boundfinder.experiment import (
    TOP1,
    TOP5,
    Experiment,
    Score,
    check_loader,
    eval_loader,
    evaluate,
    load_experiment,
    resolve_object,
    resolve_score,
    split_batch,
)
from tests.user_project.data import DictDigits, NoValDigits
from tests.user_project.models import OddLogit, RowClassifier


def _batch(n=6, c=10):
    return {"image": torch.randn(n, 1, 8, 8), "label": torch.arange(n) % c}


def test_top1_and_top5_read_tuple_and_dict_batches():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    logits = model(x)
    assert np.array_equal(TOP1(model, (x, y)), (logits.argmax(1) == y).numpy())
    assert np.array_equal(TOP1(model, {"image": x, "label": y}), TOP1(model, [x, y]))
    top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1).numpy()
    assert np.array_equal(TOP5(model, {"x": x, "y": y}), top5)
    assert TOP5(model, (x, y)).sum() >= TOP1(model, (x, y)).sum()


def test_outputs_that_are_not_class_logits_are_refused_naming_score():
    """A one-logit binary classifier's argmax is always class 0: it would read 'safe at every width'."""
    batch = _batch()
    with pytest.raises(BoundfinderError, match=r"\[batch, classes >= 2\].*OddLogit returned a tensor of shape "
                       r"\[6, 1\].*--score"):
        TOP1(OddLogit(), batch)
    with pytest.raises(BoundfinderError, match=r"shape \[6, 1, 8, 8\]"):
        TOP1(nn.Identity(), batch)

    class Pair(nn.Module):
        def forward(self, x):
            return x.flatten(1), x.flatten(1)

    with pytest.raises(BoundfinderError, match=r"returned a tuple; .*--score package.module:fn"):
        TOP1(Pair(), batch)
    with pytest.raises(BoundfinderError, match="at least 5 classes"):
        TOP5(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), batch)


def test_batches_without_known_keys_name_the_keys_and_score():
    assert split_batch((1, 2, 3)) == (1, 2)
    with pytest.raises(BoundfinderError, match=r"keys \['pixels', 'target'\].*--score"):
        split_batch({"pixels": 1, "target": 2})
    with pytest.raises(BoundfinderError, match="got a Tensor"):
        split_batch(torch.zeros(3))


def test_score_results_are_checked_and_float_results_need_a_direction():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert resolve_score(None) is TOP1 and resolve_score("top5") is TOP5
    ones = resolve_score(lambda m, b: torch.ones(len(b["label"])))
    assert ones(model, _batch()).dtype == bool and ones(model, _batch()).all()
    with pytest.raises(BoundfinderError, match=r"other than 0/1 \(e.g. 0.5\).*continuous"):
        Score(name="half", fn=lambda m, b: torch.full((6,), 0.5))(model, _batch())
    with pytest.raises(BoundfinderError, match=r"one value per item of the batch \(6 items\), but returned shape "
                       r"\[3\]"):
        Score(name="short", fn=lambda m, b: torch.ones(3, dtype=torch.bool))(model, _batch())
    half = Score(name="half", fn=lambda m, b: torch.full((6,), 0.5), kind="continuous", higher_is_better=False)
    assert half(model, _batch()).dtype == np.float64 and (half(model, _batch()) == 0.5).all()
    with pytest.raises(BoundfinderError, match=r"'bools' is continuous \(lower is better\) but returned torch.bool"):
        Score(name="bools", fn=lambda m, b: torch.ones(6, dtype=torch.bool), kind="continuous",
              higher_is_better=False)(model, _batch())
    with pytest.raises(BoundfinderError, match=r"binary.*higher_is_better=False and relative_only are for continuous"):
        Score(name="loss", fn=lambda m, b: None, higher_is_better=False)
    with pytest.raises(BoundfinderError, match=r"unknown score 'top3'.*'top1', 'top5', 'loss', 'nll'"):
        resolve_score("top3")
    cont = resolve_score("tests.user_project.scores:loss")
    with pytest.raises(BoundfinderError, match=r"continuous score .* --lower-is-better or --higher-is-better"):
        cont(RowClassifier(), _batch())
    loss = resolve_score("tests.user_project.scores:loss", higher_is_better=False)
    assert (loss.kind, loss.metric, loss.direction) == ("continuous", "loss", "lower is better")
    assert loss(RowClassifier(), _batch()).shape == (6,)


def test_import_paths_as_module_and_as_file():
    assert resolve_object("tests.user_project.models:RowClassifier") is RowClassifier
    by_file = resolve_object("tests/user_project/models.py:RowClassifier")
    assert by_file.__name__ == "RowClassifier" and issubclass(by_file, pl.LightningModule)
    assert resolve_object("tests/user_project/models.py:RowClassifier") is by_file  # imported once
    with pytest.raises(BoundfinderError, match=r"has no 'Nope'; it defines \[.*'RowClassifier'"):
        resolve_object("tests.user_project.models:Nope")
    with pytest.raises(BoundfinderError, match=r"no file 'missing.py'"):
        resolve_object("missing.py:Model")
    with pytest.raises(BoundfinderError, match=r"package.module:Name or path/to/file.py:Name"):
        resolve_object("RowClassifier")
    with pytest.raises(BoundfinderError, match="No module named 'no_such_pkg'"):
        resolve_object("no_such_pkg.mod:X")


def test_a_shuffling_test_loader_is_refused_by_name():
    dm = DictDigits(shuffle_test=True)
    dm.setup()
    with pytest.raises(BoundfinderError, match=r"DictDigits.test_dataloader\(\) shuffles.*shuffle=False"):
        eval_loader(dm, "test")
    # a sampler that reorders on each pass without being a RandomSampler: two passes disagree
    dm = DictDigits(reshuffle_test=True)
    dm.setup()
    with pytest.raises(BoundfinderError, match=r"yields different data on two passes.*same order"):
        check_loader(dm, "test")
    with pytest.raises(BoundfinderError, match=r"NoValDigits has no val_dataloader\(\)"):
        eval_loader(NoValDigits(), "val")


def test_loader_digest_follows_the_data_the_loaders_yield():
    a, b, c = DictDigits(), DictDigits(batch_size=50), DictDigits(n_test=300)
    for dm in (a, b, c):
        dm.setup()
    da, db, dc = (check_loader(dm, "test") for dm in (a, b, c))
    assert da.n_items == 400 and dc.n_items == 300
    assert da.digest != dc.digest
    assert da.digest != db.digest  # other batches: the same items, batched differently, are hashed per batch


def test_evaluate_returns_one_result_per_item_in_loader_order():
    dm = DictDigits()
    dm.setup()
    model = RowClassifier()
    got = evaluate(model, dm.test_dataloader(), TOP1)
    x = torch.stack([dm.test[i]["image"] for i in range(len(dm.test))])
    y = torch.stack([dm.test[i]["label"] for i in range(len(dm.test))])
    with torch.no_grad():
        assert np.array_equal(got, (model(x).argmax(1) == y).numpy())


def test_experiment_knows_what_it_claims_and_refuses_training_a_given_model():
    trained = Experiment(model=RowClassifier(), data=DictDigits(), checkpoint="run/last.ckpt")
    assert trained.trained and trained.model_name == "RowClassifier"
    assert "the trained model RowClassifier loaded from run/last.ckpt, as it is" in trained.claim()
    with pytest.raises(BoundfinderError, match="trains models, but the model given is the trained RowClassifier"):
        trained.build(0)
    fresh = Experiment(model=RowClassifier, data=DictDigits())
    assert "trained afresh from seeds" in fresh.claim([0, 1]) and "[0, 1]" in fresh.claim([0, 1])
    w0, w1 = fresh.build(0).rows.weight, fresh.build(0).rows.weight
    assert torch.equal(w0, w1)
    with pytest.raises(BoundfinderError, match=r"trainer settings \['max_epochs'\] are not taken"):
        Experiment(model=RowClassifier, data=DictDigits(), trainer={"max_epochs": 3})
    with pytest.raises(BoundfinderError, match=r"checkpoint='x.ckpt' names a trained model"):
        Experiment(model=RowClassifier, data=DictDigits(), checkpoint="x.ckpt")


def test_load_experiment_builds_built_ins_and_user_classes_with_checked_arguments(tmp_path):
    exp = load_experiment()
    assert exp.model_name == "mlp" and exp.data_name == "digits" and dict(exp.trainer) == {"accelerator": "cpu"}
    assert exp.describe()["model_class"] == "boundfinder.models.MLP"
    exp = load_experiment(model="tests.user_project.models:make_classifier", model_args={"width": 4},
                          data="tests/user_project/data.py:DictDigits", data_args={"n_test": 200},
                          trainer={"accelerator": "cpu", "devices": None})
    assert exp.build(0).rows.out_features == 4 and exp.data.n_test == 200 and dict(exp.trainer) == {
        "accelerator": "cpu"}
    with pytest.raises(BoundfinderError, match=r"do not fit tests.user_project.models.RowClassifier.*widht"):
        load_experiment(model="tests.user_project.models:RowClassifier", model_args={"widht": 4})
    with pytest.raises(BoundfinderError, match=r"Expected a <class 'int'>"):
        load_experiment(model="tests.user_project.models:RowClassifier", model_args={"width": "wide"})
    with pytest.raises(BoundfinderError, match=r"unknown model 'resnet'; the built-in ones are \('mlp'"):
        load_experiment(model="resnet")
    # LightningCLI's dotted form, applied over the JSON arguments
    exp = load_experiment(model="tests.user_project.models:RowClassifier", model_args={"width": 4, "lr": 0.5},
                          model_argv=["--model.width", "5", "--model.lr=0.2"], data_argv=["--data.batch_size", "32"])
    assert exp.build(0).rows.out_features == 5 and exp.build(0).lr == 0.2 and exp.data.batch_size == 32
    with pytest.raises(BoundfinderError, match=r"unrecognized arguments: --model.widht 5 \(its arguments: \['width', "
                                               r"'lr'\]\)"):
        load_experiment(model="tests.user_project.models:RowClassifier", model_argv=["--model.widht", "5"])


def test_a_lightningcli_config_gives_model_data_and_trainer(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("seed_everything: 3\n"
                   "trainer:\n  accelerator: cpu\n  max_epochs: 2\n  logger: false\n  callbacks: null\n"
                   "model:\n  class_path: tests.user_project.models.RowClassifier\n  init_args:\n    width: 6\n"
                   "data:\n  class_path: tests.user_project.data.DictDigits\n  init_args:\n    n_test: 250\n"
                   "ckpt_path: null\n")
    exp = load_experiment(config=str(cfg), model_args={"lr": 0.01})
    model = exp.build(0)
    assert isinstance(model, RowClassifier) and model.rows.out_features == 6 and model.lr == 0.01
    assert exp.data.n_test == 250 and dict(exp.trainer) == {"accelerator": "cpu"}
    from boundfinder.experiment import config_epochs

    assert config_epochs(str(cfg)) == 2
    # a config of a LightningCLI with a fixed model class holds the arguments alone: --model names the class
    plain = tmp_path / "plain.yaml"
    plain.write_text("model:\n  width: 5\n")
    assert load_experiment(model="tests.user_project.models:RowClassifier", config=str(plain)).build(0) \
        .rows.out_features == 5
    with pytest.raises(BoundfinderError, match="the config names the model class"):
        load_experiment(model="mlp", config=str(cfg))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(BoundfinderError, match="not valid YAML"):
        load_experiment(config=str(bad))
    with pytest.raises(BoundfinderError, match="cannot read the config file"):
        load_experiment(config=str(tmp_path / "none.yaml"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint written by a real Trainer.fit (one epoch)."""
    root = tmp_path_factory.mktemp("fit")
    pl.seed_everything(0, verbose=False)
    model = RowClassifier(width=8)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", default_root_dir=root, logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=DictDigits())
    path = root / "fit.ckpt"
    trainer.save_checkpoint(path)
    return str(path), model


def test_a_checkpoint_is_loaded_as_it_was_trained(checkpoint):
    path, fitted = checkpoint
    # saved hyperparameters: the class alone is enough
    exp = load_experiment(model="tests.user_project.models:RowClassifier", data="tests.user_project.data:DictDigits",
                          ckpt=path)
    assert exp.trained and exp.checkpoint == path
    for a, b in zip(exp.model.state_dict().values(), fitted.state_dict().values(), strict=True):
        assert torch.equal(a, b.cpu())
    # a factory with arguments: built, then the checkpoint's weights loaded
    exp = load_experiment(model="tests.user_project.models:make_classifier", model_args={"width": 8}, ckpt=path,
                          data="tests.user_project.data:DictDigits")
    assert torch.equal(exp.model.head.weight, fitted.head.weight.cpu())
    # other arguments than the checkpoint's saved hyperparameters: refused by name, before any weight is loaded
    with pytest.raises(BoundfinderError, match="width: checkpoint 8, given 3"):
        load_experiment(model="tests.user_project.models:make_classifier", model_args={"width": 3}, ckpt=path,
                        data="tests.user_project.data:DictDigits")
    with pytest.raises(BoundfinderError, match=r"no checkpoint file 'nope.ckpt'"):
        load_experiment(model="tests.user_project.models:RowClassifier", ckpt="nope.ckpt")
