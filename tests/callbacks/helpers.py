"""Small Trainer, data and spies shared by the callback tests (kept tiny: the suite must stay fast on 2 cores)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from boundfinder.data import DigitsDataModule
from boundfinder.quantize import quantize


def trainer(**kw: Any) -> pl.Trainer:
    """A CPU Trainer with everything that costs time or writes files switched off unless asked for."""
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "max_epochs": 1,
        "deterministic": True,
    }
    defaults.update(kw)
    return pl.Trainer(**defaults)


def digits(batch_size: int = 64) -> DigitsDataModule:
    return DigitsDataModule(batch_size=batch_size, seed=0)


def on_grid(t: torch.Tensor, fmt: str) -> bool:
    """The representability check of the format core: quantize is idempotent on representable values."""
    t = t.detach()
    return bool(torch.equal(quantize(t, fmt), t))


def no_hooks_left(model: nn.Module) -> bool:
    """True when no module of ``model`` carries a hook, a shadowed / swapped parameter or an own ``forward``."""
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
            return False
        if any(not isinstance(p, nn.Parameter) for p in module._parameters.values() if p is not None):
            return False
        if any(name in module.__dict__ for name in module._parameters):
            return False
        if "forward" in module.__dict__:  # the fused native Linear's forward, set on the instance
            return False
    return True


class SpyLogger(Logger):
    """Records every ``log_metrics`` call, as (step, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "spy"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class CrashAt(pl.Callback):
    """Raises at the start of the training batch whose global step is ``step`` (a crash mid-fit)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def token_loader(vocab: int = 50, n: int = 8, length: int = 6) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (n, length), generator=g)
    y = torch.randint(0, vocab, (n, length), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)
