"""A user's DataModule: scikit-learn's digits as dict batches {"image", "label"}, with options a user might get
wrong (a shuffling test loader, a test order that changes on every pass) or leave out (no validation loader)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset, Sampler


class _Dicts(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": self.y[i]}


class _Reshuffled(Sampler):
    """A new order on every pass, from the global generator: not a RandomSampler, so only two passes see it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(torch.randperm(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class DictDigits(pl.LightningDataModule):
    def __init__(self, batch_size: int = 128, n_test: int = 400, shuffle_test: bool = False,
                 reshuffle_test: bool = False) -> None:
        super().__init__()
        self.batch_size, self.n_test = batch_size, n_test
        self.shuffle_test, self.reshuffle_test = shuffle_test, reshuffle_test

    def setup(self, stage: str | None = None) -> None:
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        y = torch.tensor(y)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        n_val = 300
        self.test = _Dicts(x[:self.n_test], y[:self.n_test])
        self.val = _Dicts(x[self.n_test:self.n_test + n_val], y[self.n_test:self.n_test + n_val])
        self.train = _Dicts(x[self.n_test + n_val:], y[self.n_test + n_val:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(1))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        if self.reshuffle_test:
            return DataLoader(self.test, batch_size=self.batch_size, sampler=_Reshuffled(len(self.test)))
        return DataLoader(self.test, batch_size=self.batch_size, shuffle=self.shuffle_test)


class NoValDigits(DictDigits):
    """No validation loader: a sweep or a sensitivity table measures on test items; a search cannot run."""

    val_dataloader = pl.LightningDataModule.val_dataloader


class ResplitDigits(DictDigits):
    """Splits anew on every setup() with the global generator (an unseeded random_split, a common pattern): each
    Trainer.fit sees other test items than the ones checked before it."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        order = torch.randperm(len(self.test.y))
        self.test = _Dicts(self.test.x[order], self.test.y[order])


class FitStageOnly(DictDigits):
    """Lightning's documented pattern: the validation split is built under stage 'fit' only."""

    def setup(self, stage: str | None = None) -> None:
        val = getattr(self, "val", None)
        super().setup(stage)
        if stage != "fit":  # no validation split unless a "fit" setup built one
            if val is None:
                del self.val
            else:
                self.val = val
