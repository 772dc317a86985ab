"""A regression network on scikit-learn's bundled diabetes data (442 patients, 10 features; no download), scored
by its per-item squared error. Nothing here knows boundfinder.

    boundfinder sweep --model examples/regression/regression.py:Regressor \
        --data examples/regression/regression.py:Diabetes --score squared_error --tolerance 0.02 --seeds 0,1,2
    boundfinder sensitivity --model examples/regression/regression.py:Regressor \
        --data examples/regression/regression.py:Diabetes --score squared_error --tolerance 0.02 --seeds 0,1,2

Features and target are standardised with the training split's mean and standard deviation, so a squared error
is in units of the target's variance: ``--tolerance 0.02`` accepts a mean increase of 2% of it per patient.
Batches are ``(x [B, 10], y [B])``; the model's output is ``[B]``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_diabetes
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Regressor(pl.LightningModule):
    """An MLP ``10 -> hidden -> hidden -> 1`` with ReLU, trained on the mean squared error with Adam."""

    def __init__(self, hidden: int = 32, lr: float = 3e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class Diabetes(pl.LightningDataModule):
    """scikit-learn's diabetes data split 232 / 60 / 150 (train / validation / test) by a generator seeded with
    ``seed``: the same split in every process and on every ``setup`` call."""

    def __init__(self, batch_size: int = 32, val: int = 60, test: int = 150, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.val, self.test, self.seed = batch_size, val, test, seed
        x, y = load_diabetes(return_X_y=True)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        x = torch.tensor(x, dtype=torch.float32)[order]
        y = torch.tensor(y, dtype=torch.float32)[order]
        n_train = len(y) - val - test
        mx, sx = x[:n_train].mean(0), x[:n_train].std(0)
        my, sy = y[:n_train].mean(), y[:n_train].std()
        x, y = (x - mx) / sx, (y - my) / sy
        self.splits = {"train": TensorDataset(x[:n_train], y[:n_train]),
                       "val": TensorDataset(x[n_train:n_train + val], y[n_train:n_train + val]),
                       "test": TensorDataset(x[n_train + val:], y[n_train + val:])}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=256)
