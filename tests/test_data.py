"""DataModules: digits split, MNIST idx files and CIFAR-10 pickles written by the tests (no download)."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import boundfinder.data as data_mod
from boundfinder.data import CIFAR10DataModule, DigitsDataModule, MNISTDataModule, read_idx
from boundfinder.errors import BoundfinderError


# -- digits --------------------------------------------------------------------------------------------------
def test_digits_split_is_disjoint_complete_and_seeded():
    dm = DigitsDataModule(batch_size=50, seed=3)
    train, val, test = dm.train_items, dm.val_items, dm.test_items
    allidx = torch.cat([train, val, test])
    assert sorted(allidx.tolist()) == list(range(1797))
    assert len(test) == round(1797 * 0.25) and len(val) == round(1797 * 0.15)
    again = DigitsDataModule(batch_size=7, seed=3)
    assert torch.equal(again.test_items, test) and torch.equal(again.train_items, train)
    other = DigitsDataModule(seed=4)
    assert not torch.equal(other.test_items, test)


def test_digits_items_match_the_source_images():
    digits = load_digits()
    dm = DigitsDataModule(batch_size=1000, seed=0)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    idx = dm.test_items[: len(y)]
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
    expected = torch.from_numpy(digits.images[idx.numpy()].astype(np.float32) / 16).unsqueeze(1)
    assert torch.equal(x, expected)
    assert torch.equal(y, torch.from_numpy(digits.target[idx.numpy()]))
    assert torch.equal(dm.test_targets[: len(y)], y)


def test_digits_training_order_is_independent_of_the_global_rng():
    dm = DigitsDataModule(batch_size=16)
    torch.manual_seed(1)
    a = next(iter(dm.train_dataloader()))[1]
    torch.manual_seed(2)
    b = next(iter(dm.train_dataloader()))[1]
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction < 1"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_digits_bad_arguments(kwargs, match):
    with pytest.raises(BoundfinderError, match=match):
        DigitsDataModule(**kwargs)


# -- MNIST ---------------------------------------------------------------------------------------------------
def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def _write_mnist(folder, n_train=30, n_test=12, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        _write_idx(folder / name, array, gz)
    return arrays


@pytest.mark.parametrize(("gz", "sub"), [(False, ""), (True, ""), (True, "MNIST/raw")])
def test_mnist_reads_idx_files(tmp_path, gz, sub):
    arrays = _write_mnist(tmp_path / sub if sub else tmp_path, gz=gz)
    dm = MNISTDataModule(tmp_path, batch_size=100, val_size=5)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (12, 1, 28, 28)
    assert torch.equal(x, torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().unsqueeze(1) / 255)
    assert torch.equal(y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]))
    assert torch.equal(dm.test_items, torch.arange(12))
    assert len(dm.val_items) == 5 and len(dm.train_items) == 25
    assert sorted(torch.cat([dm.val_items, dm.train_items]).tolist()) == list(range(30))
    xt, _ = next(iter(dm.val_dataloader()))
    images = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    assert torch.equal(xt, images[dm.val_items])


def test_mnist_missing_files_name_folder_and_files(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "_download", lambda *a: pytest.fail("must not download"))
    dm = MNISTDataModule(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere") as info:
        dm.prepare_data()
    assert "t10k-labels-idx1-ubyte" in str(info.value) and "download=True" in str(info.value)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        dm.setup("fit")


def test_mnist_downloads_only_when_asked(tmp_path, monkeypatch):
    fetched = []
    source = tmp_path / "mirror"
    _write_mnist(source, gz=True)

    def fake_download(url, dest):
        fetched.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((source / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(data_mod, "_download", fake_download)
    dm = MNISTDataModule(tmp_path / "data", download=True, val_size=3)
    dm.prepare_data()
    assert len(fetched) == 4 and all(u.endswith(".gz") for u in fetched)
    dm.prepare_data()  # files present now: no second fetch
    assert len(fetched) == 4
    assert len(dm.test_items) == 12


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd")
    with pytest.raises(BoundfinderError, match="not an idx-ubyte"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((2, 3)), gz=False)
    raw = (tmp_path / "short").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(BoundfinderError, match="declares shape"):
        read_idx(tmp_path / "short")


# -- CIFAR-10 ------------------------------------------------------------------------------------------------
def _write_cifar(root, per_batch=4, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        batch = {b"data": data, b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        batches[name] = batch
    return batches


def test_cifar10_reads_pickle_batches(tmp_path):
    batches = _write_cifar(tmp_path)
    dm = CIFAR10DataModule(tmp_path, batch_size=64, val_size=4)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.test_dataloader()))
    expected = torch.from_numpy(batches["test_batch"][b"data"].reshape(-1, 3, 32, 32)).float() / 255
    assert x.shape == (6, 3, 32, 32) and torch.equal(x, expected)
    assert y.tolist() == [int(v) for v in batches["test_batch"][b"labels"]]
    assert len(dm.train_items) == 16 and len(dm.val_items) == 4
    # Item 5 of the pool is the second image of data_batch_2 (4 per batch).
    pool = torch.from_numpy(np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]))
    xt, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(xt, pool[dm.val_items].reshape(-1, 3, 32, 32).float() / 255)


def test_cifar10_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "_download", lambda *a: pytest.fail("must not download"))
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as info:
        CIFAR10DataModule(tmp_path).prepare_data()
    assert "data_batch_5" in str(info.value) and "test_batch" in str(info.value)


def test_cifar10_rejects_a_foreign_pickle(tmp_path):
    _write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"images": []}, f)
    with pytest.raises(BoundfinderError, match="b'labels'"):
        CIFAR10DataModule(tmp_path, val_size=2).setup("fit")


@pytest.mark.parametrize("cls", [MNISTDataModule, CIFAR10DataModule])
def test_val_size_must_leave_training_items(tmp_path, cls):
    if cls is MNISTDataModule:
        _write_mnist(tmp_path, n_train=5)
    else:
        _write_cifar(tmp_path, per_batch=1)
    with pytest.raises(BoundfinderError, match="0 < val < 5"):
        cls(tmp_path, val_size=5).setup("fit")
    with pytest.raises(BoundfinderError, match="val_size"):
        cls(tmp_path, val_size=0)
