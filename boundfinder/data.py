"""DataModules for the embedded default (scikit-learn's 8x8 digits) and for MNIST / CIFAR-10 from local files.

Import rule: like :mod:`boundfinder.models`, this module imports Lightning (a ``LightningDataModule`` base
class) and is therefore not imported by ``import boundfinder``.

Every split is fixed by a seed through a private ``torch.Generator``, never by the global RNG, so two runs
(or two precisions) see the same items; ``test_items`` names the test items in the order the test and
predict loaders yield them, which is what paired accuracy measurements need.

Nothing is downloaded unless ``download=True`` is passed; otherwise a missing file raises
:class:`FileNotFoundError` naming the folder searched and the files expected.

>>> dm = DigitsDataModule(batch_size=32, seed=0)
>>> dm.setup("fit")
>>> x, y = next(iter(dm.train_dataloader()))
>>> tuple(x.shape), x.dtype, float(x.min()) >= 0.0, float(x.max()) <= 1.0
((32, 1, 8, 8), torch.float32, True, True)
>>> len(dm.test_items) + len(dm.val_items) + len(dm.train_items)
1797
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from boundfinder.errors import BoundfinderError

__all__ = ["CIFAR10DataModule", "DigitsDataModule", "MNISTDataModule"]


class _Images(Dataset):
    """uint8 (or float) images scaled to [0, 1] float32 on access, so CIFAR-10 stays 180 MB, not 720 MB."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, scale: float) -> None:
        self.images, self.targets, self.scale = images, targets, scale

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].to(torch.float32) / self.scale, self.targets[i]


class _SplitDataModule(pl.LightningDataModule):
    """Train/val/test from a fixed, seeded split; subclasses implement ``_load() -> (x, y, n_train_pool)``.

    ``_load`` returns all images, all targets, and how many of the leading items form the pool that train and
    val are cut from (the rest is the test set, in file order). ``val_size`` items of the pool, chosen by a
    seeded permutation, are held out for validation.
    """

    _scale = 1.0

    def __init__(self, *, batch_size: int, seed: int, num_workers: int) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BoundfinderError(f"`batch_size` must be a positive int, but got batch_size={batch_size!r}.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise BoundfinderError(f"`num_workers >= 0` must hold, but got num_workers={num_workers!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise BoundfinderError(f"`seed` must be an int, but got seed={seed!r}.")
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self._splits: dict[str, tuple[torch.Tensor, _Images]] | None = None

    # -- subclass interface -------------------------------------------------------------------------------
    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (train-pool images, train-pool targets, test images, test targets)."""
        raise NotImplementedError

    def _val_count(self, pool: int) -> int:
        raise NotImplementedError

    # -- Lightning hooks ----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        x_pool, y_pool, x_test, y_test = self._load()
        n_val = self._val_count(len(y_pool))
        if not 0 < n_val < len(y_pool):
            raise BoundfinderError(
                f"the validation split must leave both splits non-empty: 0 < val < {len(y_pool)} must hold, "
                f"but got val={n_val}."
            )
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(y_pool), generator=gen)
        val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
        test_idx = torch.arange(len(y_test))
        self._splits = {
            "train": (train_idx, _Images(x_pool[train_idx], y_pool[train_idx], self._scale)),
            "val": (val_idx, _Images(x_pool[val_idx], y_pool[val_idx], self._scale)),
            "test": (test_idx, _Images(x_test, y_test, self._scale)),
        }

    def _split(self, name: str) -> tuple[torch.Tensor, _Images]:
        if self._splits is None:
            self.setup()
        assert self._splits is not None  # for type checkers; setup() always fills it or raises
        return self._splits[name]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        # A private generator seeded per loader keeps the shuffling order independent of the global RNG,
        # so runs that differ only in precision see the same batches.
        gen = torch.Generator().manual_seed(self.seed + 1) if shuffle else None
        return DataLoader(
            self._split(name)[1],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=gen,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split, unshuffled: predictions line up with ``test_items`` and ``test_targets``."""
        return self._loader("test", shuffle=False)

    # -- stable item identities ---------------------------------------------------------------------------
    @property
    def train_items(self) -> torch.Tensor:
        """Indices (into the train pool / source file) of the training items."""
        return self._split("train")[0].clone()

    @property
    def val_items(self) -> torch.Tensor:
        """Indices (into the train pool / source file) of the validation items, in loader order."""
        return self._split("val")[0].clone()

    @property
    def test_items(self) -> torch.Tensor:
        """Stable identities of the test items in the order test and predict loaders yield them."""
        return self._split("test")[0].clone()

    @property
    def test_targets(self) -> torch.Tensor:
        """True classes of the test items, aligned with ``test_items``."""
        return self._split("test")[1].targets.clone()


class DigitsDataModule(_SplitDataModule):
    """scikit-learn's bundled handwritten digits: 1,797 images of 1x8x8, scaled to [0, 1], 10 classes.

    The split is a seeded permutation of all 1,797 items: ``test_fraction`` for test, ``val_fraction`` for
    validation, the rest for training. ``test_items`` are indices into ``sklearn.datasets.load_digits()``.
    """

    _scale = 16.0  # digits pixels are integers 0..16

    def __init__(
        self,
        *,
        batch_size: int = 64,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise BoundfinderError(f"`0 < {name} < 1` must hold, but got {name}={value!r}.")
        if val_fraction + test_fraction >= 1:
            raise BoundfinderError(
                "`val_fraction + test_fraction < 1` must hold (training needs items), but got "
                f"val_fraction={val_fraction!r}, test_fraction={test_fraction!r}."
            )
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self._pool_idx: torch.Tensor | None = None
        self._test_idx: torch.Tensor | None = None

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        digits = load_digits()
        x = torch.from_numpy(digits.images.astype(np.float32)).unsqueeze(1)
        y = torch.from_numpy(digits.target.astype(np.int64))
        n = len(y)
        n_test = round(n * self.test_fraction)
        # The test set is cut with a seed of its own (seed, then the val cut uses seed again on the pool):
        # the same seed always yields the same test items whatever val_fraction is.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 10_007))
        self._test_idx = order[:n_test].sort().values
        self._pool_idx = order[n_test:].sort().values
        return x[self._pool_idx], y[self._pool_idx], x[self._test_idx], y[self._test_idx]

    def _val_count(self, pool: int) -> int:
        return round(pool * self.val_fraction / (1 - self.test_fraction))

    def _split(self, name: str) -> tuple[torch.Tensor, _Images]:
        idx, data = super()._split(name)
        assert self._pool_idx is not None and self._test_idx is not None  # set by _load in setup
        # Report identities as indices into load_digits() rather than into the pool.
        return (self._test_idx[idx] if name == "test" else self._pool_idx[idx]), data


# ------------------------------------------------------------------------------------------------------------
# MNIST: idx-ubyte files, optionally gzipped.
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx-ubyte file (MNIST's format; ``.gz`` is decompressed) into a uint8 array.

    Layout: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions, the dimensions as
    big-endian uint32, then the data in C order.
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BoundfinderError(f"{path} is not an idx-ubyte file (magic bytes {raw[:4].hex()!r}).")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise BoundfinderError(f"{path} declares shape {dims} but holds {data.size} values.")
    return data.reshape(dims)


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url) as response, open(tmp, "wb") as f:
        f.write(response.read())
    tmp.replace(dest)


class _FolderDataModule(_SplitDataModule):
    """A dataset read from standard files in ``root``, fetched there only when ``download=True``."""

    _scale = 255.0  # 8-bit pixels

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        batch_size: int = 128,
        seed: int = 0,
        val_size: int = 5000,
        download: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 1:
            raise BoundfinderError(f"`val_size` must be a positive int, but got val_size={val_size!r}.")
        self.root, self.val_size, self.download = Path(root), val_size, bool(download)


class MNISTDataModule(_FolderDataModule):
    """MNIST from the four idx-ubyte files (plain or ``.gz``) in ``root`` or ``root/MNIST/raw``.

    Images are 1x28x28 scaled to [0, 1]. The last ``val_size`` items of a seeded permutation of the 60,000
    training images form the validation split; the 10,000 test images keep file order (``test_items`` are
    their indices in ``t10k-*``). With ``download=True`` missing files are fetched into ``root`` in
    ``prepare_data``; otherwise nothing touches the network.
    """


    def _find(self) -> dict[str, Path] | None:
        for folder in (self.root, self.root / "MNIST" / "raw"):
            found = {}
            for key, name in _MNIST_FILES.items():
                for candidate in (folder / name, folder / (name + ".gz")):
                    if candidate.is_file():
                        found[key] = candidate
                        break
            if len(found) == len(_MNIST_FILES):
                return found
        return None

    def prepare_data(self) -> None:
        if self._find() is not None:
            return
        if not self.download:
            self._missing()
        for name in _MNIST_FILES.values():
            _download(_MNIST_URL + name + ".gz", self.root / (name + ".gz"))

    def _missing(self) -> None:
        names = ", ".join(f"{n}[.gz]" for n in _MNIST_FILES.values())
        raise FileNotFoundError(
            f"MNIST files not found in {str(self.root)!r} (nor in its MNIST/raw/); expected {names}. "
            "Pass download=True to fetch them, or point `root` at the folder that holds them."
        )

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        files = self._find()
        if files is None:
            self._missing()
        assert files is not None  # _missing always raises
        arrays = {key: read_idx(path) for key, path in files.items()}
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise BoundfinderError(
                    f"MNIST {split} files disagree: images of shape {images.shape}, labels of shape "
                    f"{labels.shape} (expected (N, H, W) and (N,))."
                )

        def as_tensors(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
            images = torch.from_numpy(arrays[f"{prefix}_images"].copy()).unsqueeze(1)
            return images, torch.from_numpy(arrays[f"{prefix}_labels"].astype(np.int64))

        return (*as_tensors("train"), *as_tensors("test"))

    def _val_count(self, pool: int) -> int:
        return self.val_size


# ------------------------------------------------------------------------------------------------------------
# CIFAR-10: the python pickle batches in cifar-10-batches-py/.
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch: dict[Any, Any] = pickle.load(f, encoding="bytes")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise BoundfinderError(f"{path} is not a CIFAR-10 batch: it lacks the keys b'data' and b'labels'.")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise BoundfinderError(
            f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape}, {len(labels)} labels."
        )
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


class CIFAR10DataModule(_FolderDataModule):
    """CIFAR-10 from the python pickle batches in ``root/cifar-10-batches-py/`` (3x32x32, scaled to [0, 1]).

    Validation is ``val_size`` items of a seeded permutation of the 50,000 training images; the test batch
    keeps file order. With ``download=True`` the archive is fetched and unpacked into ``root``.
    """


    @property
    def folder(self) -> Path:
        return self.root / _CIFAR_FOLDER

    def _complete(self) -> bool:
        return all((self.folder / name).is_file() for name in (*_CIFAR_TRAIN, _CIFAR_TEST))

    def _missing(self) -> None:
        raise FileNotFoundError(
            f"CIFAR-10 files not found in {str(self.folder)!r}; expected {', '.join(_CIFAR_TRAIN)}, "
            f"{_CIFAR_TEST} (the python version, cifar-10-python.tar.gz unpacked). "
            "Pass download=True to fetch them, or point `root` at the folder that holds cifar-10-batches-py/."
        )

    def prepare_data(self) -> None:
        if self._complete():
            return
        if not self.download:
            self._missing()
        archive = self.root / "cifar-10-python.tar.gz"
        if not archive.is_file():
            _download(_CIFAR_URL, archive)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(self.root, filter="data")

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self._complete():
            self._missing()
        parts = [_read_cifar_batch(self.folder / name) for name in _CIFAR_TRAIN]
        x_train = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        y_train = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        x_test, y_test = (torch.from_numpy(a) for a in _read_cifar_batch(self.folder / _CIFAR_TEST))
        return x_train, y_train, x_test, y_test

    def _val_count(self, pool: int) -> int:
        return self.val_size
