"""Built-in classifiers for the embedded default: logistic regression, an MLP and a small LeNet-style CNN.

Each is a :class:`lightning.pytorch.LightningModule` with training, validation, test and predict steps, an
optimizer chosen by constructor arguments, and the metrics ``val_acc`` / ``test_acc`` (and ``*_loss``)
logged per epoch.

Import rule: this module imports Lightning at import time (a LightningModule must inherit from the Lightning
class when the class statement runs). It is therefore *not* imported by ``import boundfinder``; the core
stays Lightning-free, and only code that asks for ``boundfinder.models`` pays for the Lightning import.

Layer names are stable and meant for policy patterns: ``features.*`` holds the hidden layers (``fc1``,
``conv1``, ...), ``classifier.*`` the output layer(s).

>>> import torch
>>> model = LeNet(in_channels=1, image_size=8, num_classes=10)
>>> model(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
>>> [name for name, _ in model.named_children()]
['features', 'classifier']
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from boundfinder.errors import BoundfinderError

__all__ = ["MLP", "MLP_INITS", "OPTIMIZERS", "LeNet", "LogisticRegression"]

#: Optimizers a built-in model can be asked for by name.
OPTIMIZERS = ("sgd", "adam", "adamw")
_ACTIVATIONS = {"relu": nn.ReLU, "hardtanh": nn.Hardtanh, "tanh": nn.Tanh}
#: Weight initialisations of an MLP's hidden layers (see :class:`MLP`).
MLP_INITS = ("auto", "torch", "kaiming")
#: ``torch.nn.init.calculate_gain``'s name for each activation: hardtanh is the identity around 0, so linear's 1
_GAIN_OF = {"relu": "relu", "tanh": "tanh", "hardtanh": "linear"}


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BoundfinderError(f"`{name}` must be a positive int, but got {name}={value!r}.")


class _Classifier(pl.LightningModule):
    """Shared steps: cross-entropy training, accuracy on validation/test, class predictions on predict.

    Batches are ``(inputs, targets)``; predict also accepts bare ``inputs``. ``predict_step`` returns the
    predicted class per item, in loader order, so predictions pair with a DataModule's ``test_items``.
    """

    def __init__(
        self, *, optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise BoundfinderError(f"`optimizer` must be one of {OPTIMIZERS}, but got {optimizer=!r}.")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise BoundfinderError(f"`lr > 0` must hold, but got lr={lr!r}.")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise BoundfinderError(f"`0 <= momentum < 1` must hold, but got momentum={momentum!r}.")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise BoundfinderError(f"`weight_decay >= 0` must hold, but got weight_decay={weight_decay!r}.")
        self.optimizer_name = optimizer
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def _loss_acc(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        return loss, acc

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, acc = self._loss_acc(batch)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, acc = self._loss_acc(batch)
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_acc", acc, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, acc = self._loss_acc(batch)
        self.log("test_loss", loss)
        self.log("test_acc", acc)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.parameters()
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


class LogisticRegression(_Classifier):
    """Multinomial logistic regression: flatten, then one linear layer (``classifier``).

    >>> LogisticRegression(num_features=64, num_classes=10).classifier
    Linear(in_features=64, out_features=10, bias=True)
    """

    def __init__(self, *, num_features: int = 64, num_classes: int = 10, **optim: Any) -> None:
        super().__init__(**optim)
        _check_positive_int("num_features", num_features)
        _check_positive_int("num_classes", num_classes)
        self.save_hyperparameters()
        self.features = nn.Flatten()
        self.classifier = nn.Linear(num_features, num_classes)


class MLP(_Classifier):
    """Fully connected network: ``features`` = (``fc{i}``, optional ``bn{i}``, ``act{i}``) per hidden layer.

    BinaryNet wants ``activation="hardtanh"`` and ``batch_norm=True`` (a sign of ReLU outputs is constant).

    ``init``: the hidden layers' weights. ``"torch"`` keeps ``nn.Linear``'s own (uniform, variance
    ``1 / (3 fan_in)``): after a ReLU each layer passes on about ``1 / sqrt(6)`` of the spread between items, so
    six hidden layers start with logits that hardly depend on the input and 15 epochs of SGD reach 20-42% on
    digits. ``"kaiming"`` draws them from He et al.'s normal, standard deviation ``gain / sqrt(fan_in)`` (gain
    ``sqrt(2)`` for ReLU, 5/3 for tanh, 1 for hardtanh), with zero biases: the spread is kept through any depth
    (six hidden layers: 94-95% after 15 epochs).
    ``"auto"`` (default): ``"torch"`` for one hidden layer (the built-in ``mlp`` model, whose published results
    stay as they were), ``"kaiming"`` for two or more. The output layer keeps ``nn.Linear``'s own in each case.

    >>> MLP(num_features=64, hidden=(32,), num_classes=10).features
    Sequential(
      (flatten): Flatten(start_dim=1, end_dim=-1)
      (fc1): Linear(in_features=64, out_features=32, bias=True)
      (act1): ReLU()
    )
    >>> deep = MLP(hidden=(64,) * 6)
    >>> deep.init, float(deep.features.fc6.bias.abs().max())
    ('kaiming', 0.0)
    """

    def __init__(
        self,
        *,
        num_features: int = 64,
        hidden: Sequence[int] = (64,),
        num_classes: int = 10,
        batch_norm: bool = False,
        activation: str = "relu",
        init: str = "auto",
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        _check_positive_int("num_features", num_features)
        _check_positive_int("num_classes", num_classes)
        if init not in MLP_INITS:
            raise BoundfinderError(f"`init` must be one of {MLP_INITS}, but got init={init!r}.")
        hidden = tuple(hidden)
        for width in hidden:
            _check_positive_int("hidden[i]", width)
        if activation not in _ACTIVATIONS:
            raise BoundfinderError(
                f"`activation` must be one of {tuple(_ACTIVATIONS)}, but got activation={activation!r}."
            )
        self.save_hyperparameters()
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        width_in = num_features
        for i, width in enumerate(hidden, start=1):
            layers.append((f"fc{i}", nn.Linear(width_in, width)))
            if batch_norm:
                layers.append((f"bn{i}", nn.BatchNorm1d(width)))
            layers.append((f"act{i}", _ACTIVATIONS[activation]()))
            width_in = width
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Linear(width_in, num_classes)
        #: the initialisation used (``"auto"`` resolved)
        self.init = init if init != "auto" else ("torch" if len(hidden) <= 1 else "kaiming")
        if self.init == "kaiming":
            # drawn after nn.Linear's own draws, so "torch" consumes the generator exactly as before
            gain = nn.init.calculate_gain(_GAIN_OF[activation])
            for i in range(1, len(hidden) + 1):
                fc = self.features.get_submodule(f"fc{i}")
                nn.init.normal_(fc.weight, std=gain / math.sqrt(fc.in_features))
                nn.init.zeros_(fc.bias)


class LeNet(_Classifier):
    """LeNet-style CNN: two (conv, act, 2x2 max-pool) blocks, then fc - act - fc.

    Works for 1x8x8 digits (default), 1x28x28 MNIST (``image_size=28``) and 3x32x32 CIFAR-10
    (``in_channels=3, image_size=32``). Convolutions keep the size (``padding = kernel_size // 2``), so the
    flattened size is ``channels[1] * (image_size // 4) ** 2``.

    >>> LeNet(in_channels=3, image_size=32)(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        kernel_size: int = 3,
        batch_norm: bool = False,
        activation: str = "relu",
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("hidden", hidden)):
            _check_positive_int(name, value)
        channels = tuple(channels)
        if len(channels) != 2:
            raise BoundfinderError(f"`channels` must hold 2 ints (one per conv), but got {channels=!r}.")
        for width in channels:
            _check_positive_int("channels[i]", width)
        if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
            raise BoundfinderError(f"`kernel_size` must be an odd positive int, but got {kernel_size=!r}.")
        if not (isinstance(image_size, int) and image_size >= 4):
            raise BoundfinderError(f"`image_size >= 4` must hold (two 2x2 pools), but got {image_size=!r}.")
        if activation not in _ACTIVATIONS:
            raise BoundfinderError(
                f"`activation` must be one of {tuple(_ACTIVATIONS)}, but got activation={activation!r}."
            )
        self.save_hyperparameters()
        act = _ACTIVATIONS[activation]
        pad = kernel_size // 2
        layers: list[tuple[str, nn.Module]] = []
        width_in = in_channels
        for i, width in enumerate(channels, start=1):
            layers.append((f"conv{i}", nn.Conv2d(width_in, width, kernel_size, padding=pad)))
            if batch_norm:
                layers.append((f"bn{i}", nn.BatchNorm2d(width)))
            layers += [(f"act{i}", act()), (f"pool{i}", nn.MaxPool2d(2))]
            width_in = width
        self.features = nn.Sequential(OrderedDict(layers))
        flat = channels[1] * (image_size // 4) ** 2
        head: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten()), ("fc1", nn.Linear(flat, hidden))]
        if batch_norm:
            head.append(("bn3", nn.BatchNorm1d(hidden)))
        head += [("act3", act()), ("fc2", nn.Linear(hidden, num_classes))]
        self.classifier = nn.Sequential(OrderedDict(head))
