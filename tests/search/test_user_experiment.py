"""Sweep, sensitivity and search on a user's own model and DataModule (tests/user_project, outside the package):
import paths and files, dict batches, custom scores, a trained checkpoint, refusals before training."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from boundfinder.cli import main
from boundfinder.errors import BoundfinderError
from boundfinder.experiment import Experiment, load_experiment
from boundfinder.search import sweep as sweep_mod
from boundfinder.search.sensitivity import precision_sensitivity
from boundfinder.search.study import CONFIG_KEY, precision_search
from boundfinder.search.sweep import precision_sweep
from tests.user_project.data import DictDigits, NoValDigits
from tests.user_project.models import OddLogit, RowClassifier
from tests.user_project.scores import odd_right

MODEL = "tests.user_project.models:RowClassifier"
MODEL_FILE = "tests/user_project/models.py:RowClassifier"
DATA = "tests.user_project.data:DictDigits"


@pytest.fixture
def no_training(monkeypatch):
    """Refusals must come before any model is trained."""

    def train(*args, **kwargs):
        raise AssertionError("a model was trained before the refusal")

    monkeypatch.setattr(sweep_mod, "_train", train)
    monkeypatch.setattr("boundfinder.search.measure._train", train)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A RowClassifier trained by a real Trainer.fit (two epochs), saved as a Lightning checkpoint."""
    root = tmp_path_factory.mktemp("fit")
    pl.seed_everything(0, verbose=False)
    model = RowClassifier(width=8)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", default_root_dir=root, logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=DictDigits())
    path = root / "rows.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def test_sweep_of_a_user_model_on_dict_batches_pairs_items_by_position():
    result = precision_sweep(RowClassifier, DictDigits(), "e8m{b}", [0, 23], seeds=[0], epochs=1)
    assert result.correct.shape == (2, 1, 400)
    assert np.array_equal(result.correct[1], result.baseline)  # e8m23 is float32
    assert result.baseline_accuracy > 0.3  # one epoch: well above chance (0.1)
    assert result.experiment["model_class"] == "tests.user_project.models.RowClassifier"
    assert result.experiment["data"] == "DictDigits" and "trained afresh from seeds" in result.claim


def test_a_one_logit_classifier_is_refused_until_a_score_says_what_is_right():
    """Before: argmax over one logit is always class 0, so every width read 'safe' with drop 0."""
    dm = DictDigits()
    with pytest.raises(BoundfinderError, match=r"top1.*\[batch, classes >= 2\].*\[128, 1\].*--score"):
        precision_sweep(OddLogit, dm, "e8m{b}", [0, 23], seeds=[0], epochs=1)
    result = precision_sweep(OddLogit, dm, "e8m{b}", [0, 23], seeds=[0], epochs=1, score=odd_right)
    assert result.baseline_accuracy > 0.6 and result.experiment["score"] == "odd_right"
    assert np.array_equal(result.correct[1], result.baseline)
    # the score is what is measured: recomputed by hand on the same trained model
    model = sweep_mod._seeded_model(OddLogit, 0)
    sweep_mod._train(model, dm, epochs=1, seed=0, trainer={"accelerator": "cpu"})
    model.eval()
    with torch.no_grad():
        right = np.concatenate([odd_right(model, b).numpy() for b in dm.test_dataloader()])
    assert np.array_equal(right, result.baseline[0])


def test_refusals_before_training(no_training):
    with pytest.raises(BoundfinderError, match=r"OddLogit returned a tensor of shape \[128, 1\].*--score"):
        precision_search(OddLogit, DictDigits(), "e8m{b}", [0, 23], epochs=1, n_trials=1)
    with pytest.raises(BoundfinderError, match=r"DictDigits.test_dataloader\(\) shuffles"):
        precision_sweep(RowClassifier, DictDigits(shuffle_test=True), "e8m{b}", [0, 23], seeds=[0], epochs=1)
    with pytest.raises(BoundfinderError, match="yields different data on two passes"):
        precision_sensitivity(RowClassifier, DictDigits(reshuffle_test=True), "e8m{b}", [0, 23], epochs=1)
    with pytest.raises(BoundfinderError, match=r"needs validation items.*NoValDigits has no val_dataloader\(\).*"
                                               r"boundfinder sweep"):
        precision_search(RowClassifier, NoValDigits(), "e8m{b}", [0, 23], epochs=1, n_trials=1)
    with pytest.raises(BoundfinderError, match=r"continuous score .* --lower-is-better"):
        precision_sweep(RowClassifier(), DictDigits(), "e8m{b}", [0, 23], score="tests.user_project.scores:loss")
    trained = RowClassifier()
    with pytest.raises(BoundfinderError, match="the model given is the trained RowClassifier"):
        precision_sweep(trained, DictDigits(), "e8m{b}", [0, 23], train_under_emulation=True)
    with pytest.raises(BoundfinderError, match=r"seeds=\[0, 1\].*the model given is the trained"):
        precision_sweep(trained, DictDigits(), "e8m{b}", [0, 23], seeds=[0, 1])
    with pytest.raises(BoundfinderError, match=r"a switching search.*the model given is the trained"):
        precision_search(trained, DictDigits(), "e8m{b}", [0, 23], switch=[0, 1], epochs=1, n_trials=1)


def test_without_validation_items_sweep_and_sensitivity_measure_on_test_items():
    result = precision_sensitivity(RowClassifier, NoValDigits(), "e8m{b}", [0, 23], seeds=[0], epochs=1,
                                   roles=["weight"])
    assert {c.layer for c in result.cells} == {"rows", "head"}
    assert result.cells[0].sweep.correct.shape == (2, 1, 400)


def test_a_trained_model_is_measured_as_it_is(checkpoint):
    exp = load_experiment(model=MODEL, data=DATA, ckpt=checkpoint)
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    result = precision_sweep(exp, None, "e8m{b}", [0, 2, 23])
    assert result.seeds == () and result.correct.shape == (3, 1, 400)
    assert f"loaded from {checkpoint}, as it is" in result.claim
    assert result.experiment["checkpoint"] == checkpoint and result.experiment["trained"]
    # nothing trained: the model's weights are those of the checkpoint
    assert all(torch.equal(v, before[k]) for k, v in exp.model.state_dict().items())
    assert np.array_equal(result.correct[2], result.baseline)
    sens = precision_sensitivity(exp, None, "e8m{b}", [0, 23], roles=["weight"])
    assert sens.seeds == () and "the given trained model" in sens.report() and "claim: the trained model" in \
        sens.report()


def test_search_of_a_trained_model_certifies_on_its_test_items(checkpoint, tmp_path):
    exp = load_experiment(model=MODEL, data=DATA, ckpt=checkpoint)
    url = f"sqlite:///{tmp_path}/s.db"
    result = precision_search(exp, None, "e8m{b}", [1, 4, 8], n_trials=3, storage=url, sampler_seed=0)
    assert result.confirm_seeds == () and result.confirmation.n_seeds == 1 and result.confirmation.n_items == 400
    report = result.report()
    assert "tested on 400 test items of the given trained model" in report and "claim: the trained model" in report
    # a worker with another checkpoint (other weights), or other data, is refused
    other = Experiment(model=RowClassifier(width=8), data=DictDigits(), checkpoint="other.ckpt")
    with pytest.raises(BoundfinderError, match="checkpoint: study"):
        precision_search(other, None, "e8m{b}", [1, 4, 8], n_trials=3, storage=url, study_name=result.study_name)
    fewer = load_experiment(model=MODEL, data=DATA, data_args={"n_test": 300}, ckpt=checkpoint)
    with pytest.raises(BoundfinderError, match="test_items: study '400:"):
        precision_search(fewer, None, "e8m{b}", [1, 4, 8], n_trials=3, storage=url, study_name=result.study_name)


def test_search_workers_with_another_model_configuration_are_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    kw = {"model": MODEL, "data": DATA, "data_args": {"n_test": 200}}
    first = precision_search(load_experiment(**kw, model_args={"width": 4}), None, "e8m{b}", [2, 8], seeds=[0],
                             epochs=1, n_trials=2, storage=url, study_name="rows", confirm=False)
    assert first.n_configurations == 4  # 2 groups x 2 widths: the default strategy measures the whole space
    with pytest.raises(BoundfinderError, match=r"other settings \(source: .*'width': 4.*'width': 5"):
        precision_search(load_experiment(**kw, model_args={"width": 5}), None, "e8m{b}", [2, 8], seeds=[0],
                         epochs=1, n_trials=2, storage=url, study_name="rows", confirm=False)
    import optuna

    stored = optuna.load_study(study_name="rows", storage=url).user_attrs[CONFIG_KEY]
    assert stored["model_class"] == "tests.user_project.models.RowClassifier" and stored["score"] == "top1"
    assert stored["test_items"].startswith("200:") and stored["val_items"].startswith("300:")


def test_cli_sweep_with_import_path_file_path_and_custom_score(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["sweep", "--model", "tests/user_project/models.py:OddLogit", "--data", DATA, "--score",
                 "tests.user_project.scores:odd_right", "--bits", "0,23", "--seeds", "0", "--epochs", "1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model OddLogit on DictDigits (400 test items, seeds [0])" in printed
    summary = json.loads(out.read_text())
    assert summary["sweep"]["experiment"]["score"] == "tests.user_project.scores:odd_right"
    assert summary["sweep"]["experiment"]["model_class"].endswith("models.OddLogit")
    # without a score: refused with the option to use
    assert main(["sweep", "--model", "tests.user_project.models:OddLogit", "--data", DATA, "--bits", "0,23",
                 "--seeds", "0", "--epochs", "1"]) == 2
    assert "--score" in capsys.readouterr().err


def test_cli_refusals(tmp_path, capsys, no_training):
    cases = [
        (["sweep", "--model", MODEL, "--data", DATA, "--data-args", '{"shuffle_test": true}'],
         "DictDigits.test_dataloader() shuffles"),
        (["search", "--model", MODEL, "--data", "tests.user_project.data:NoValDigits", "--storage", ""],
         "needs validation items"),
        (["sweep", "--model", MODEL, "--model-args", "{width: 3}"], "--model-args takes a JSON object"),
        (["sweep", "--model", MODEL, "--model-args", '{"widht": 3}'], "do not fit"),
        (["sweep", "--model", "resnet"], "unknown model 'resnet'"),
        (["sweep", "--model", MODEL, "--score", "f1"], "unknown score 'f1'"),
        (["sweep", "--model", MODEL, "--ckpt", str(tmp_path / "none.ckpt")], "no checkpoint file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--model", MODEL, "--modle.width", "3"])
    assert exit_.value.code == 2 and "unrecognized arguments: --modle.width 3" in capsys.readouterr().err


def test_cli_takes_lightningcli_dotted_arguments(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["sweep", "--model", MODEL, "--model.width", "3", "--data", DATA, "--data.n_test=100", "--bits",
                 "0,23", "--seeds", "0", "--epochs", "1", "--json", str(out)]) == 0
    assert "(100 test items, seeds [0])" in capsys.readouterr().out


def test_cli_with_a_checkpoint_and_a_lightningcli_config(checkpoint, tmp_path, capsys, no_training):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("trainer:\n  accelerator: cpu\n  max_epochs: 1\n"
                   f"model:\n  class_path: {MODEL.replace(':', '.')}\n  init_args:\n    width: 8\n"
                   f"data:\n  class_path: {DATA.replace(':', '.')}\n")
    out = tmp_path / "sens.json"
    assert main(["sensitivity", "--config", str(cfg), "--ckpt", checkpoint, "--bits", "0,2,23", "--roles",
                 "weight", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"model RowClassifier on DictDigits (400 test items, the trained model from {checkpoint}, as it is)" \
        in printed
    assert "claim: the trained model RowClassifier" in printed
    summary = json.loads(out.read_text())
    assert summary["experiment"]["checkpoint"] == checkpoint and summary["seeds"] == []
    for argv, message in (([], None), (["--train"], "--train"), (["--seeds", "0,1"], "seeds=[0, 1]")):
        code = main(["sweep", "--config", str(cfg), "--ckpt", checkpoint, "--bits", "0,23", *argv])
        err = capsys.readouterr().err
        if message is None:
            assert code == 0
        else:
            assert code == 2 and message in err and "evaluated as it is" in err
    assert main(["search", "--config", str(cfg), "--ckpt", checkpoint, "--switch", "0,1", "--storage", ""]) == 2
    assert "a switching search" in capsys.readouterr().err


def test_cli_search_from_a_config_trains_with_its_settings(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("trainer:\n  accelerator: cpu\n  max_epochs: 1\n"
                   f"model:\n  class_path: {MODEL.replace(':', '.')}\n  init_args:\n    width: 4\n"
                   f"data:\n  class_path: {DATA.replace(':', '.')}\n  init_args:\n    n_test: 200\n")
    out = tmp_path / "search.json"
    assert main(["search", "--config", str(cfg), "--bits", "2,8", "--trials", "2", "--seeds", "0", "--storage",
                 f"sqlite:///{tmp_path}/c.db", "--seed", "0", "--json", str(out), "--claim", "training"]) == 0
    printed = capsys.readouterr().out
    assert "study 'RowClassifier-e8mb-layer-nearest'" in printed and "claim: RowClassifier models trained" in printed
    summary = json.loads(out.read_text())
    assert summary["experiment"]["trainer"] == {"accelerator": "cpu"}
    assert summary["confirmation"]["n_items"] == 200 and summary["confirm_seeds"] == [1]


def test_cli_worker_with_another_model_configuration_is_refused(tmp_path, capsys):
    common = ["search", "--model", MODEL, "--data", DATA, "--data-args", '{"n_test": 200}', "--bits", "2,8",
              "--trials", "2", "--seeds", "0", "--epochs", "1", "--storage", f"sqlite:///{tmp_path}/w.db",
              "--study", "rows", "--no-confirm"]
    assert main([*common, "--model-args", '{"width": 4}']) == 0
    assert "4 configurations measured" in capsys.readouterr().out  # the whole space (2 groups x 2 widths)
    assert main([*common, "--model-args", '{"width": 4}', "--trials", "3"]) == 0  # the same: it joins
    assert main([*common, "--model.width", "5"]) == 2
    err = capsys.readouterr().err
    assert "was created with other settings" in err and "'width': 4" in err and "model_argv" in err


def test_a_data_module_that_splits_anew_in_setup_is_refused_after_training():
    # prepare() checked one set of test items; Trainer.fit calls setup() again and the items change
    from tests.user_project.data import ResplitDigits

    with pytest.raises(BoundfinderError, match=r"builds its splits anew in setup\(\).*random_split"):
        precision_sweep(RowClassifier, ResplitDigits(), "e8m{b}", [0, 23], seeds=[0], epochs=1)


def test_trainer_settings_that_cannot_be_honoured_are_refused(no_training):
    for settings, match in (({"devices": 2}, "devices=2"), ({"strategy": "ddp"}, "strategy='ddp'"),
                            ({"precision": "bf16-true"}, "bf16-true"), ({"num_nodes": 2}, "num_nodes=2")):
        with pytest.raises(BoundfinderError, match=match):
            Experiment(model=RowClassifier, data=DictDigits(), trainer=settings)
    Experiment(model=RowClassifier, data=DictDigits(), trainer={"devices": 1, "precision": "bf16-mixed"})
    Experiment(model=RowClassifier, data=DictDigits(), trainer={"devices": "auto"})  # LightningCLI's usual value


def test_a_trained_model_keeps_its_mode_and_a_fit_stage_only_validation_split_is_set_up(checkpoint):
    from tests.user_project.data import FitStageOnly

    model = RowClassifier.load_from_checkpoint(checkpoint)
    model.train()
    precision_sweep(model, DictDigits(), "e8m{b}", [0, 23])
    assert model.training
    exp = Experiment(model=model, data=FitStageOnly())
    assert set(exp.prepare(train=False, splits=("val", "test"))) == {"val", "test"}


def test_a_checkpoint_loaded_with_other_arguments_than_it_was_trained_with_is_refused(checkpoint):
    # width 8 was saved; a config giving width 4 must not load silently (shapes differ here, but any argument
    # that changes no shape would)
    with pytest.raises(BoundfinderError, match="width: checkpoint 8, given 4"):
        load_experiment(model=MODEL, data=DATA, model_args={"width": 4}, ckpt=checkpoint)
    load_experiment(model=MODEL, data=DATA, model_args={"width": 8}, ckpt=checkpoint)


def test_an_output_that_cannot_be_written_is_refused_before_any_work(capsys, no_training, tmp_path):
    assert main(["sweep", "--model", "logreg", "--bits", "0,23", "--seeds", "0", "--epochs", "1",
                 "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "cannot be written" in capsys.readouterr().err
