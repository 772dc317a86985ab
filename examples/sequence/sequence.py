"""A small sequence model on scikit-learn's bundled digits (no download), scored by the negative log-likelihood
of each sequence. Nothing here knows boundfinder.

Each 8x8 digit is read row by row as a sequence of 64 pixel tokens, each pixel's ink (0-16) quantised to 4 levels
(0-3); a small causal convolutional language model predicts every token from the ones before it (the first
from a start token).

    boundfinder sweep --model examples/sequence/sequence.py:PixelLM --data examples/sequence/sequence.py:DigitTokens \
        --score nll --tolerance 0.01 --seeds 0,1,2 --epochs 5
    boundfinder sensitivity --model examples/sequence/sequence.py:PixelLM \
        --data examples/sequence/sequence.py:DigitTokens --score nll --tolerance 0.01 --seeds 0,1,2 \
        --epochs 5

``nll`` is each digit's mean token negative log-likelihood in nats: ``--tolerance 0.01`` accepts a mean increase
of 0.01 nats per token (``--score perplexity --tolerance 0.01``: 1% of the perplexity, relative). Batches are
``(tokens [B, 64], targets [B, 64])``; the model's output is logits ``[B, 64, 4]``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

LEVELS = 4  # pixel tokens 0..3
START = LEVELS  # the start token, input only


def digit_tokens() -> torch.Tensor:
    """Every digit as 64 tokens in reading order: ink 0-16 -> 0-3 (0-4 -> 0, 5-8 -> 1, 9-12 -> 2, 13-16 -> 3)."""
    pixels = torch.tensor(load_digits().data, dtype=torch.long)
    return torch.div(pixels - 1, 4, rounding_mode="floor").clamp(min=0)


class PixelLM(pl.LightningModule):
    """A causal convolutional language model: token and position embeddings, a convolution over the ``context``
    tokens before each position (the row above included), a pointwise layer, and next-token logits."""

    def __init__(self, embed: int = 16, hidden: int = 32, context: int = 9, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(LEVELS + 1, embed)
        self.position = nn.Embedding(64, embed)  # a module of its own: every parameter belongs to a named layer
        self.pad = nn.ConstantPad1d((context - 1, 0), 0.0)  # left padding only: position t sees inputs <= t
        self.conv = nn.Conv1d(embed, hidden, context)
        self.mix = nn.Conv1d(hidden, hidden, 1)
        self.head = nn.Linear(hidden, LEVELS)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = (self.embed(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))).transpose(1, 2)
        h = F.relu(self.mix(F.relu(self.conv(self.pad(h)))))
        return self.head(h.transpose(1, 2))

    def _loss(self, batch) -> torch.Tensor:
        tokens, targets = batch
        return F.cross_entropy(self(tokens).transpose(1, 2), targets)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_nll", loss)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val_nll", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class DigitTokens(pl.LightningDataModule):
    """The 1797 digits as token sequences, split 1047 / 300 / 450 (train / validation / test) by a generator
    seeded with ``seed``. Inputs are the start token then the first 63 tokens; targets are the 64 tokens."""

    def __init__(self, batch_size: int = 128, val: int = 300, test: int = 450, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        targets = digit_tokens()
        inputs = torch.cat([torch.full((len(targets), 1), START), targets[:, :-1]], dim=1)
        order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
        inputs, targets = inputs[order], targets[order]
        n_train = len(targets) - val - test
        cut = {"train": slice(0, n_train), "val": slice(n_train, n_train + val), "test": slice(n_train + val, None)}
        self.splits = {k: TensorDataset(inputs[s], targets[s]) for k, s in cut.items()}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=256)
