"""A user's models: plain LightningModules that know nothing of boundfinder."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn


def _xy(batch):
    return (batch["image"], batch["label"]) if isinstance(batch, dict) else (batch[0], batch[1])


class RowClassifier(pl.LightningModule):
    """Reads an 8x8 digit row by row: a shared row encoder, then a linear head on the concatenated rows."""

    def __init__(self, width: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.rows = nn.Linear(8, width)
        self.head = nn.Linear(8 * width, 10)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.rows(x.reshape(-1, 8, 8)))
        return self.head(h.flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = _xy(batch)
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def make_classifier(width: int = 16) -> RowClassifier:
    """A factory, as a user may name one instead of a class."""
    return RowClassifier(width=width, lr=0.05)


class OddLogit(pl.LightningModule):
    """A one-logit binary classifier ([batch, 1] output): is the digit odd?"""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = _xy(batch)
        return F.binary_cross_entropy_with_logits(self(x)[:, 0], (y % 2).float())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
