"""A user's project: a small transformer encoder that reads an 8x8 digit as a sequence of 8 rows, and a
LightningDataModule over scikit-learn's bundled digits (no download). Nothing here knows boundfinder.

Batches are dicts {"image": [B, 1, 8, 8], "label": [B]}; the model's output is class logits [B, 10].
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Block(nn.Module):
    """Pre-norm encoder block: self-attention over the rows, then a two-layer MLP, each with a residual."""

    def __init__(self, d_model: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class RowEmbedding(nn.Module):
    """One token per image row: its 8 pixels projected to ``d_model``, plus a learned position per row."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(8, d_model)
        self.position = nn.Parameter(torch.zeros(1, 8, d_model))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image.reshape(-1, 8, 8)) + self.position


class RowTransformer(pl.LightningModule):
    def __init__(self, d_model: int = 32, heads: int = 4, hidden: int = 64, depth: int = 1, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = RowEmbedding(d_model)
        self.blocks = nn.Sequential(*(Block(d_model, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(image))).mean(dim=1))

    def _step(self, batch, name: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        self.log(f"{name}_loss", loss, prog_bar=True)
        self.log(f"{name}_acc", (logits.argmax(1) == batch["label"]).float().mean(), prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class _Digits(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": self.y[i]}


class DigitRows(pl.LightningDataModule):
    """scikit-learn's 1,797 digits: a fixed shuffle (seed), then test, validation and training items."""

    def __init__(self, batch_size: int = 64, test_size: int = 450, val_size: int = 300, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.test_size, self.val_size, self.seed = batch_size, test_size, val_size, seed

    def setup(self, stage: str | None = None) -> None:
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        y = torch.tensor(y)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        x, y = x[order], y[order]
        t, v = self.test_size, self.test_size + self.val_size
        self.test, self.val, self.train = _Digits(x[:t], y[:t]), _Digits(x[t:v], y[t:v]), _Digits(x[v:], y[v:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=self.batch_size)
