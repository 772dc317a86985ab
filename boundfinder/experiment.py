"""A user's experiment: the model, the data, what counts as right, where it runs, and what the claim covers.

:class:`Experiment` carries this through sweeps, sensitivity tables, searches and reports, so that none of them
special-cases a built-in model or data set:

* ``model``: a factory (a ``LightningModule`` class, or any callable returning a module), trained afresh from
  each seed; or a trained module instance, evaluated as it is (one model, no training);
* ``data``: any ``LightningDataModule``; an item is its position in the unshuffled validation / test loader;
* ``score``: ``score(model, batch) -> tensor[batch]`` saying which items are right (:data:`TOP1` by default), or
  a per-item metric (a loss, an error: :data:`CONTINUOUS_SCORES`, or a function with its direction);
* ``trainer``: ``accelerator`` / ``devices`` / ``precision`` (and a few more) as ``lightning.Trainer`` takes them.

Import rule: the core does not import Lightning at import time; the functions that need it import it when
called.

>>> score = resolve_score("top5")
>>> score.name, score.kind
('top5', 'binary')
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from boundfinder.errors import BoundfinderError

__all__ = [
    "BUILTIN_SCORES",
    "CONTINUOUS_SCORES",
    "SCORES",
    "TOP1",
    "TOP5",
    "Experiment",
    "LoaderData",
    "Score",
    "as_experiment",
    "eval_loader",
    "evaluate",
    "first_nonfinite",
    "resolve_object",
    "resolve_score",
    "split_batch",
]

log = logging.getLogger(__name__)

#: keys a dict batch may name its inputs / targets by (the first present is taken)
INPUT_KEYS = ("x", "input", "inputs", "image", "images", "features")
TARGET_KEYS = ("y", "target", "targets", "label", "labels")
SCORE_KINDS = ("binary", "continuous")
#: Trainer arguments taken from ``--accelerator/--devices/--precision`` or a config's ``trainer:`` section; the
#: rest of a Trainer's settings (epochs, logging, checkpoints, callbacks) belong to the command
TRAINER_KEYS = ("accelerator", "devices", "precision", "strategy", "num_nodes", "gradient_clip_val",
                "gradient_clip_algorithm", "accumulate_grad_batches")


# -- score functions -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class Score:
    """What is measured for one item: ``fn(model, batch) -> tensor[batch_size]``.

    ``kind="binary"``: one bool (or 0/1) per item, right or wrong; the paired statistics compare which items each
    model gets right. ``kind="continuous"``: one float per item, a per-item metric such as a loss or an error,
    read in the direction ``higher_is_better`` (a loss: ``False``); the drop is the paired mean difference in that
    direction, and a tolerance is in the metric's ``units`` (or relative to the baseline mean). ``relative_only``:
    an absolute tolerance has no fixed meaning for this metric (perplexity), so only a relative one is taken.

    >>> loss = Score(name="my_loss", fn=lambda m, b: m(b[0]).sub(b[1]).abs(), kind="continuous",
    ...              higher_is_better=False)
    >>> loss.metric, loss.direction
    ('my_loss', 'lower is better')
    """

    name: str
    fn: Callable[[nn.Module, Any], torch.Tensor]
    kind: str = "binary"
    higher_is_better: bool = True
    #: what a tolerance is measured in, for messages and reports (e.g. "nats per token")
    units: str = ""
    relative_only: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SCORE_KINDS:
            raise BoundfinderError(f"unknown score kind {self.kind!r}; valid kinds are {SCORE_KINDS}.")
        if not callable(self.fn):
            raise BoundfinderError(f"a score's fn must be callable fn(model, batch), but got {self.fn!r}.")
        if not isinstance(self.higher_is_better, bool):
            raise BoundfinderError(f"higher_is_better must be a bool, but got {self.higher_is_better!r}.")
        if self.kind == "binary" and (not self.higher_is_better or self.relative_only):
            raise BoundfinderError(f"score {self.name!r} is binary (right or wrong: higher is better, accuracy "
                                   "points); higher_is_better=False and relative_only are for continuous scores.")

    @property
    def continuous(self) -> bool:
        return self.kind == "continuous"

    @property
    def metric(self) -> str:
        """The metric's name in reports and MLflow keys: ``"accuracy"`` for binary scores, else the score's name
        (a function's own name for an import path: ``pkg.mod:my_loss`` -> ``my_loss``)."""
        if not self.continuous:
            return "accuracy"
        return self.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1] or self.name

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def tolerance_hint(self) -> str:
        """How a tolerance for this score is given (for the messages that ask for one)."""
        if not self.continuous:
            return "a tolerance in accuracy points (0.01 = one point)"
        if self.relative_only:
            return (f"a relative tolerance, a fraction of the baseline {self.metric} (e.g. 0.02 = 2%)")
        units = f" ({self.units})" if self.units else ""
        return (f"a tolerance in the units of {self.metric}{units}, the largest acceptable mean "
                f"{'drop' if self.higher_is_better else 'increase'} per item, or a relative one (a fraction of the "
                "baseline mean) with relative=True / --relative")

    def __call__(self, model: nn.Module, batch: Any) -> np.ndarray:
        """The per-item results of one batch, checked: one bool (binary) or one float (continuous; non-finite
        values are passed on, for the caller to name the item) per item of the batch."""
        out = self.fn(model, batch)
        size = _batch_size(batch)
        if not isinstance(out, torch.Tensor) or out.ndim != 1 or (size is not None and len(out) != size):
            got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise BoundfinderError(f"score {self.name!r} must return a 1-D tensor with one value per item of the "
                                   f"batch ({size} items), but returned {got}.")
        if self.continuous:
            if out.dtype == torch.bool or out.is_complex():
                raise BoundfinderError(
                    f"score {self.name!r} is continuous ({self.direction}) but returned {out.dtype} values; a "
                    "continuous score returns one real number per item (a loss or an error). For right/wrong "
                    "per item leave the direction out (no --higher-is-better / --lower-is-better).")
            return out.detach().to(torch.float64).cpu().numpy()
        if out.dtype != torch.bool:
            values = out.detach()
            if values.is_floating_point() and not torch.isfinite(values).all():
                raise BoundfinderError(f"score {self.name!r} returned non-finite values; return one bool per item.")
            odd = values[(values != 0) & (values != 1)]
            if odd.numel():
                raise BoundfinderError(
                    f"score {self.name!r} returned values other than 0/1 (e.g. {float(odd[0]):g}): a continuous "
                    "score (a per-item loss or error). Say which way it is better: --lower-is-better or "
                    "--higher-is-better (Python: Score(name=..., fn=..., kind='continuous', higher_is_better=...), "
                    "or set fn.higher_is_better); a binary score returns one bool per item, right or wrong.")
            out = values != 0
        return out.detach().cpu().numpy().astype(bool)


def first_nonfinite(values: np.ndarray, score: Score, where: str) -> None:
    """Refuse NaN / infinite per-item values of a continuous score, naming the first one's item (its position in
    the loader) and ``where`` it was measured (format, seed)."""
    values = np.asarray(values)
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    item = int(np.argmax(bad.reshape(-1)))
    raise BoundfinderError(
        f"score {score.name!r} is {float(values.reshape(-1)[item])} for test item {item} (its position in the loader) "
        f"{where} ({int(bad.sum())} non-finite value(s) of {values.size}): a mean with a NaN or infinite item says "
        "nothing. The model overflowed or diverged there; leave that width out (--bits), or use a score that "
        "stays finite.")


def _describe_output(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {list(out.shape)}"
    return f"a {type(out).__name__}"


def _score_hint() -> str:
    return ("name a score function that says which items are right: --score package.module:fn or "
            "path/to/file.py:fn (Python: score=fn), a function score(model, batch) -> tensor[batch] of bools")


def _metric_hint() -> str:
    return ("or give your own per-item metric: --score package.module:fn (a function score(model, batch) -> "
            "tensor[batch] of floats) with --lower-is-better or --higher-is-better")


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """``(inputs, targets)`` of a batch ``(x, y, ...)`` or ``{"x"/"input"/...: ..., "y"/"target"/"label"/...: ...}``.

    >>> split_batch({"image": 1, "label": 2})
    (1, 2)
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if x is not None and y is not None:
            return x, y
        raise BoundfinderError(f"the built-in scores read a dict batch's inputs from one of {INPUT_KEYS} and its "
                               f"targets from one of {TARGET_KEYS}, but the batch has keys {sorted(batch)}; "
                               + _score_hint() + ".")
    raise BoundfinderError(f"the built-in scores take batches (inputs, targets, ...) or dicts, but got a "
                           f"{type(batch).__name__}; " + _score_hint() + ".")


def _topk(k: int) -> Callable[[nn.Module, Any], torch.Tensor]:
    def fn(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = split_batch(batch)
        out = model(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 2:
            raise BoundfinderError(
                f"the built-in score 'top{k}' needs model outputs of shape [batch, classes >= 2] (class logits), "
                f"but {type(model).__name__} returned {_describe_output(out)}; " + _score_hint() + ".")
        if out.shape[1] < k:
            raise BoundfinderError(f"the built-in score 'top{k}' needs at least {k} classes, but "
                                   f"{type(model).__name__} returned {out.shape[1]}; use 'top1' or " + _score_hint()
                                   + ".")
        y = y.to(out.device)
        if k == 1:
            return out.argmax(dim=1) == y
        return (out.topk(k, dim=1).indices == y.unsqueeze(1)).any(dim=1)

    fn.__name__ = f"top{k}"
    return fn


#: targets equal to this are left out of ``nll`` / ``perplexity`` / ``loss`` on sequences (PyTorch's
#: ``cross_entropy`` default: padding, prompt tokens)
IGNORE_INDEX = -100


def _is_int(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _token_nll(name: str, model: nn.Module, out: Any, y: Any) -> torch.Tensor:
    """Mean negative log-likelihood per sequence: logits ``[N, T, V]`` and integer targets ``[N, T]`` (targets
    ``IGNORE_INDEX`` left out), or ``[N, C]`` and ``[N]`` (a one-token sequence: the per-item cross-entropy)."""
    ok = isinstance(out, torch.Tensor) and out.is_floating_point() and _is_int(y) and (
        (out.ndim == 3 and y.ndim == 2 and tuple(out.shape[:2]) == tuple(y.shape))
        or (out.ndim == 2 and y.ndim == 1 and out.shape[0] == y.shape[0])) and out.shape[-1] >= 2
    if not ok:
        got = f"targets {list(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise BoundfinderError(
            f"the built-in score {name!r} needs logits [batch, time, vocabulary] with integer targets "
            f"[batch, time] (or logits [batch, classes] with integer targets [batch]), but "
            f"{type(model).__name__} returned {_describe_output(out)} for {got}; " + _metric_hint() + ".")
    y = y.to(out.device)
    if out.ndim == 2:
        out, y = out[:, None], y[:, None]
    nll = nn.functional.cross_entropy(out.float().transpose(1, 2), y, reduction="none",
                                      ignore_index=IGNORE_INDEX)
    counted = (y != IGNORE_INDEX).sum(dim=1)
    if (counted == 0).any():
        item = int((counted == 0).nonzero()[0])
        raise BoundfinderError(f"the built-in score {name!r} averages the tokens of each sequence, but item {item} "
                               f"of a batch has every target = {IGNORE_INDEX} (ignored): no token to score.")
    return nll.sum(dim=1) / counted


def _nll(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = split_batch(batch)
    return _token_nll("nll", model, model(x), y)


def _perplexity(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = split_batch(batch)
    return _token_nll("perplexity", model, model(x), y).exp()


def _regression_pair(name: str, model: nn.Module, out: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and targets as ``[N, k]`` float pairs: the same number of values per item (``[N]`` and ``[N, 1]``
    alike), real targets."""
    ok = (isinstance(out, torch.Tensor) and out.is_floating_point() and out.ndim >= 1
          and isinstance(y, torch.Tensor) and not y.is_complex() and y.dtype != torch.bool and y.ndim >= 1
          and out.shape[0] == y.shape[0] and out[0].numel() == y[0].numel())
    if not ok:
        got = f"targets {list(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise BoundfinderError(
            f"the built-in score {name!r} compares a regressor's outputs with its targets, the same number of "
            f"values per item ([batch] or [batch, 1] against [batch], or [batch, k] against [batch, k]), but "
            f"{type(model).__name__} returned {_describe_output(out)} for {got}; for class logits use 'loss', "
            "'nll' or 'top1', " + _metric_hint() + ".")
    n = out.shape[0]
    return out.float().reshape(n, -1), y.to(out.device).float().reshape(n, -1)


def _squared_error(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = split_batch(batch)
    return _squared_error_of("squared_error", model, model(x), y)


def _abs_error(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = split_batch(batch)
    out, y = _regression_pair("abs_error", model, model(x), y)
    return (out - y).abs().mean(dim=1)


def _loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = split_batch(batch)
    out = model(x)
    if _is_int(y):  # class targets: cross-entropy of the logits (per token, averaged per sequence)
        return _token_nll("loss", model, out, y)
    if isinstance(y, torch.Tensor) and y.is_floating_point():
        return _squared_error_of("loss", model, out, y)
    got = f"targets {y.dtype}" if isinstance(y, torch.Tensor) else f"targets of type {type(y).__name__}"
    raise BoundfinderError(f"the built-in score 'loss' reads integer class targets (cross-entropy) or float "
                           f"targets (squared error), but the batches hold {got}; " + _metric_hint() + ".")


def _squared_error_of(name: str, model: nn.Module, out: Any, y: torch.Tensor) -> torch.Tensor:
    out, y = _regression_pair(name, model, out, y)
    return (out - y).square().mean(dim=1)


TOP1 = Score(name="top1", fn=_topk(1))
TOP5 = Score(name="top5", fn=_topk(5))
#: built-in binary scores by name (right or wrong per item)
SCORES = {"top1": TOP1, "top5": TOP5}
#: built-in continuous scores by name, each lower is better (docs/bounds.md, "Built-in per-item metrics"):
#: ``loss``: cross-entropy of class logits [N, C] with integer targets [N] (per item), of logits [N, T, V] with
#: integer targets [N, T] (mean over each sequence's tokens, targets -100 left out), or the squared error against
#: float targets (mean over an item's values); ``nll``: the mean token negative log-likelihood of each sequence;
#: ``perplexity``: its exp (relative tolerance only); ``squared_error`` / ``abs_error``: a regressor's error per
#: item, averaged over the item's values
CONTINUOUS_SCORES = {
    "loss": Score(name="loss", fn=_loss, kind="continuous", higher_is_better=False,
                  units="nats for class targets, squared target units for float targets"),
    "nll": Score(name="nll", fn=_nll, kind="continuous", higher_is_better=False, units="nats per token"),
    "perplexity": Score(name="perplexity", fn=_perplexity, kind="continuous", higher_is_better=False,
                        relative_only=True),
    "squared_error": Score(name="squared_error", fn=_squared_error, kind="continuous", higher_is_better=False,
                           units="squared target units"),
    "abs_error": Score(name="abs_error", fn=_abs_error, kind="continuous", higher_is_better=False,
                       units="target units"),
}
BUILTIN_SCORES = {**SCORES, **CONTINUOUS_SCORES}


def resolve_score(score: Score | str | Callable | None, *, higher_is_better: bool | None = None) -> Score:
    """A :class:`Score` from a built-in name (:data:`BUILTIN_SCORES`), an import path (``pkg.mod:fn``,
    ``file.py:fn``, naming a function or a :class:`Score`) or a function.

    A function is binary (one bool per item) unless its direction is known: ``higher_is_better`` given here
    (``--higher-is-better`` / ``--lower-is-better``) or set on the function as ``fn.higher_is_better``; then it is
    continuous, one float per item. The built-in scores and :class:`Score` objects carry their own direction: a
    ``higher_is_better`` that contradicts it is refused.

    >>> resolve_score("nll").direction
    'lower is better'
    """
    if higher_is_better is not None and not isinstance(higher_is_better, bool):
        raise BoundfinderError(f"higher_is_better must be True, False or None, but got {higher_is_better!r}.")
    if score is None:
        score = TOP1
    if isinstance(score, str):
        if score in BUILTIN_SCORES:
            score = BUILTIN_SCORES[score]
        elif ":" not in score:
            raise BoundfinderError(f"unknown score {score!r}; the built-in scores are {tuple(BUILTIN_SCORES)}, or "
                                   "name a function as package.module:fn or path/to/file.py:fn.")
        else:
            fn = resolve_object(score, what="score")
            score = fn if isinstance(fn, Score) else _from_function(fn, score, higher_is_better)
    elif not isinstance(score, Score):
        if not callable(score):
            raise BoundfinderError(f"a score is a built-in name {tuple(BUILTIN_SCORES)}, an import path or a "
                                   f"function score(model, batch), but got {score!r}.")
        score = _from_function(score, getattr(score, "__qualname__", type(score).__name__), higher_is_better)
    if higher_is_better is not None and (not score.continuous or score.higher_is_better != higher_is_better):
        said = "--higher-is-better" if higher_is_better else "--lower-is-better"
        if not score.continuous:
            raise BoundfinderError(f"{said} is for continuous scores, but {score.name!r} is binary (right or "
                                   "wrong per item: higher is better).")
        raise BoundfinderError(f"{said} contradicts the score {score.name!r}, which is {score.direction}.")
    return score


def _from_function(fn: Callable, name: str, higher_is_better: bool | None) -> Score:
    own = getattr(fn, "higher_is_better", None)
    if own is not None and not isinstance(own, bool):
        raise BoundfinderError(f"the score function {name!r} sets higher_is_better={own!r}; it must be a bool.")
    if own is not None and higher_is_better is not None and own != higher_is_better:
        raise BoundfinderError(f"the score function {name!r} says higher_is_better={own}, but "
                               f"{'--higher-is-better' if higher_is_better else '--lower-is-better'} says "
                               "otherwise; drop the flag.")
    direction = higher_is_better if higher_is_better is not None else own
    if direction is None:
        return Score(name=name, fn=fn)
    return Score(name=name, fn=fn, kind="continuous", higher_is_better=direction)


# -- import paths ----------------------------------------------------------------------------------------------
def resolve_object(path: str, *, what: str = "object") -> Any:
    """The object an import path names: ``package.module:Name`` or ``path/to/file.py:Name`` (``Name`` may be
    dotted, ``module:Outer.Inner``). A file is imported once, as a module named after its path."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise BoundfinderError(f"a {what} is named as package.module:Name or path/to/file.py:Name, but got "
                               f"{path!r}.")
    where, name = path.split(":")
    if where.endswith(".py"):
        file = os.path.abspath(where)
        if not os.path.isfile(file):
            raise BoundfinderError(f"cannot import the {what} {path!r}: no file {where!r} (looked at {file}).")
        module_name = "boundfinder_user_" + hashlib.sha1(file.encode()).hexdigest()[:10] + "_" + \
            os.path.splitext(os.path.basename(file))[0]
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, file)
            if spec is None or spec.loader is None:
                raise BoundfinderError(f"cannot import the {what} {path!r}: {file} is not a Python module.")
            module = importlib.util.module_from_spec(spec)
            # the file's own folder first, as `python file.py` would have it: its sibling modules import
            sys.path.insert(0, os.path.dirname(file))
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
            finally:
                sys.path.remove(os.path.dirname(file))
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise BoundfinderError(f"cannot import the {what} {path!r}: {exc} (is the package installed, or the "
                                   "current folder the one that holds it?).") from exc
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in vars(module) if not n.startswith("_"))
            raise BoundfinderError(f"cannot import the {what} {path!r}: {where} has no {name!r}; it defines "
                                   f"{names}.")
        obj = getattr(obj, part)
    return obj


def qualified_name(obj: Any) -> str:
    """``module.QualName`` of a class or function (what a study records to tell two models apart)."""
    obj = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    module = getattr(obj, "__module__", "")
    if module.startswith("boundfinder_user_"):  # a file.py:Name import: its module name is made up, say the file
        module = module.split("_", 3)[3]
    elif module == "__main__":
        # a script's classes: the name the module has when imported (python -m pkg.mod), else the file's stem, so
        # that a worker run as a script and one importing it agree
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        module = getattr(spec, "name", None) or os.path.splitext(os.path.basename(getattr(main, "__file__", "")))[0]
    return f"{module}.{obj.__qualname__}"


# -- data ------------------------------------------------------------------------------------------------------
def _batch_size(batch: Any) -> int | None:
    for leaf in _leaves(batch):
        if isinstance(leaf, torch.Tensor) and leaf.ndim:
            return int(leaf.shape[0])
    return None


def _leaves(obj: Any) -> Iterable[Any]:
    if isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            yield from _leaves(obj[k])
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor moved to ``device`` (tuples, lists and dicts kept)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


_SPLIT_METHODS = {"val": "val_dataloader", "test": "test_dataloader"}


def has_loader(datamodule: Any, split: str) -> bool:
    """Whether the DataModule defines its ``val`` / ``test`` loader (Lightning's base class only raises)."""
    method = _SPLIT_METHODS[split]
    if not callable(getattr(datamodule, method, None)):
        return False
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden

    return not isinstance(datamodule, pl.LightningDataModule) or is_overridden(method, datamodule)


def eval_loader(datamodule: Any, split: str):
    """The DataModule's ``val`` or ``test`` loader, refused when it shuffles (items are positions in it)."""
    method = _SPLIT_METHODS[split]
    where = f"{type(datamodule).__name__}.{method}()"
    if not has_loader(datamodule, split):
        raise BoundfinderError(f"{type(datamodule).__name__} has no {method}(); the {split} items are the "
                               f"positions in that loader.")
    loader = getattr(datamodule, method)()
    if isinstance(loader, (list, tuple)):
        if len(loader) != 1:
            raise BoundfinderError(f"{where} returns {len(loader)} loaders; boundfinder measures one {split} loader "
                                   "(return one, or combine them into one dataset).")
        loader = loader[0]
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    if any(isinstance(s, torch.utils.data.RandomSampler) for s in (sampler, inner)):
        raise BoundfinderError(f"{where} shuffles (its DataLoader has a RandomSampler): an item is its position "
                               f"in the {split} loader, so the loader must yield the same items in the same order "
                               "on every pass. Build it with shuffle=False.")
    return loader


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoaderData:
    """What one evaluation loader yields: its item count and a digest of its data, checked over two passes."""

    split: str
    n_items: int
    digest: str


def _hash_batch(h, batch: Any) -> None:
    for leaf in _leaves(batch):
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu().contiguous()
            h.update(f"{t.dtype}{list(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(leaf).encode())


def _loader_digest(datamodule: Any, split: str) -> tuple[str, list[bytes], int]:
    """One pass over the ``split`` loader: (digest of everything it yields, per-batch digests, item count)."""
    h, batches, n = hashlib.sha1(), [], 0
    for batch in eval_loader(datamodule, split):
        b = hashlib.sha1()
        _hash_batch(b, batch)
        batches.append(b.digest())
        h.update(batches[-1])
        n += _batch_size(batch) or 0
    return h.hexdigest()[:16], batches, n


def check_loader(datamodule: Any, split: str) -> LoaderData:
    """Two passes over the ``split`` loader must yield the same data in the same order (items are positions).

    Returns the item count and a digest of everything the loader yields (what a study compares between workers).
    """
    (digest, first, n), (_, second, _) = _loader_digest(datamodule, split), _loader_digest(datamodule, split)
    if first != second:
        at = next((i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), min(len(first),
                                                                                                len(second)))
        raise BoundfinderError(
            f"{type(datamodule).__name__}.{_SPLIT_METHODS[split]}() yields different data on two passes (first "
            f"difference in batch {at}): an item is its position in the {split} loader, so the loader must yield "
            "the same items in the same order every time. Use shuffle=False, no random sampler and no random "
            "augmentation in evaluation loaders.")
    if n == 0:
        raise BoundfinderError(f"{type(datamodule).__name__}.{_SPLIT_METHODS[split]}() yields no items.")
    return LoaderData(split=split, n_items=n, digest=digest)


def evaluate(model: nn.Module, loader, score: Score, device: torch.device | None = None) -> np.ndarray:
    """Per-item results of ``model`` on ``loader`` (in loader order), in evaluation mode without gradients."""
    device = device if device is not None else _device_of(model)
    if _device_of(model) != device:
        model.to(device)
    was_training = model.training
    model.eval()
    rows = []
    try:
        with torch.no_grad():
            for batch in loader:
                rows.append(score(model, to_device(batch, device)))
    finally:
        model.train(was_training)  # a user's model is left in the mode it came in
    return np.concatenate(rows) if rows else np.zeros(0, dtype=float if score.continuous else bool)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def weights_digest(model: nn.Module) -> str:
    """A digest of a model's parameters and buffers: what tells two trained models apart."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _hash_batch(h, t)
    return h.hexdigest()[:16]


def _check_trainer(settings: Mapping[str, Any]) -> None:
    """Refuse Trainer settings the measurements cannot honour: several processes (each would run the whole command
    and report it) and parameters stored in a format other than float32 (the emulation's reference)."""
    devices = settings.get("devices", 1)
    # ("auto", as LightningCLI configs often say, is one device here: the Trainer gets devices=1)
    one = devices in (1, "1", "auto") or (isinstance(devices, (list, tuple)) and len(devices) == 1) or (
        isinstance(devices, str) and devices.rstrip(",").isdigit() and devices.endswith(","))
    if not one:
        raise BoundfinderError(f"devices={devices!r}: boundfinder trains and measures each model in this one "
                               "process; several devices would start a process per device, each running the whole "
                               "command. Give devices=1 (or one device index, e.g. [1]).")
    if settings.get("num_nodes", 1) not in (1, "1"):
        raise BoundfinderError(f"num_nodes={settings['num_nodes']!r}: boundfinder runs in one process; give 1.")
    strategy = str(settings.get("strategy", "auto")).lower()
    if any(k in strategy for k in ("ddp", "fsdp", "deepspeed")):
        raise BoundfinderError(f"strategy={settings['strategy']!r} starts several processes; boundfinder trains and "
                               "measures in one. Leave the strategy out (auto) or give 'single_device'.")
    precision = str(settings.get("precision", "32-true")).lower()
    if precision in ("64", "64-true", "16-true", "bf16-true") or precision.startswith("transformer-engine"):
        raise BoundfinderError(f"precision={settings['precision']!r} stores the parameters in another format than "
                               "float32, but the measurements and the emulation take float32 models as the "
                               "reference. Valid: 32-true (default), 16-mixed or bf16-mixed (float32 parameters).")


# -- the experiment --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment:
    """The user's experiment (see the module docstring); every command takes one.

    ``model``: a factory (trained afresh from each seed) or a trained ``nn.Module`` (evaluated as it is);
    ``data``: a ``LightningDataModule``; ``score``: a :class:`Score`, a built-in name or ``fn(model, batch)``;
    ``trainer``: keyword arguments of ``lightning.Trainer`` among :data:`TRAINER_KEYS`; ``model_name`` /
    ``data_name``: how reports and study names call them (default: the class names); ``checkpoint``: the file a
    trained model came from; ``source``: JSON-safe description of how the model and data were built (import paths
    and arguments), recorded by a study so that workers with another model or configuration are refused.
    """

    model: Any
    data: Any
    score: Any = TOP1
    trainer: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model_name: str = ""
    data_name: str = ""
    checkpoint: str | None = None
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module) and not callable(self.model):
            raise BoundfinderError(f"an experiment's model is a factory (a LightningModule class or a function "
                                   f"returning a module) or a trained module, but got {self.model!r}.")
        if self.data is None:
            raise BoundfinderError("an experiment needs data: a LightningDataModule with test_dataloader() (and "
                                   "train_dataloader() to train, val_dataloader() to search).")
        object.__setattr__(self, "score", resolve_score(self.score))
        bad = [k for k in self.trainer if k not in TRAINER_KEYS]
        if bad:
            raise BoundfinderError(f"trainer settings {bad} are not taken; valid keys are {TRAINER_KEYS} (epochs, "
                                   "logging and checkpoints belong to the command).")
        _check_trainer(self.trainer)
        object.__setattr__(self, "trainer", types.MappingProxyType(dict(self.trainer)))
        if self.checkpoint is not None and not self.trained:
            raise BoundfinderError(f"checkpoint={self.checkpoint!r} names a trained model: give the model instance "
                                   "loaded from it, not a factory.")
        if not self.model_name:
            cls = type(self.model) if self.trained else self.model
            name = cls.__name__ if inspect.isclass(cls) else getattr(cls, "__name__", type(cls).__name__)
            object.__setattr__(self, "model_name", "model" if name == "<lambda>" else name)
        if not self.data_name:
            object.__setattr__(self, "data_name", type(self.data).__name__)

    @property
    def trained(self) -> bool:
        """True when the model is a trained instance: it is evaluated as it is, nothing is trained."""
        return isinstance(self.model, nn.Module)

    def build(self, seed: int) -> nn.Module:
        """A fresh model, every generator seeded with ``seed`` first (its initial weights depend on the seed
        alone)."""
        if self.trained:
            raise BoundfinderError(self.needs_training("building a model from a seed"))
        import lightning.pytorch as pl

        pl.seed_everything(seed, verbose=False)
        model = self.model()
        if not isinstance(model, nn.Module):
            raise BoundfinderError(f"the model factory {self.model_name!r} must return a module (a LightningModule "
                                   f"to train), but returned {type(model).__name__}.")
        return model

    def probe(self) -> nn.Module:
        """A model to read the structure from (layers, parameter counts)."""
        return self.model if self.trained else self.build(0)

    def needs_training(self, what: str) -> str:
        """The message for ``what`` asked of a trained model given as it is."""
        return (f"{what} trains models, but the model given is the trained {self.model_name}"
                + (f" from {self.checkpoint}" if self.checkpoint else "")
                + ", evaluated as it is; give a model class or factory (without --ckpt) to train from seeds.")

    @property
    def device(self) -> torch.device:
        """Where models are evaluated (and emulated): the Trainer's accelerator, ``auto`` -> CUDA when present."""
        acc = str(self.trainer.get("accelerator", "auto")).lower()
        if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise BoundfinderError(f"accelerator={acc!r} asks for a GPU, but torch sees no CUDA device; valid "
                                       "here: 'cpu' or 'auto'.")
            return torch.device("cuda")
        return torch.device("cpu")

    def claim(self, seeds: Iterable[int] = ()) -> str:
        """What a confidence statement made with this experiment covers."""
        if self.trained:
            where = f" loaded from {self.checkpoint}" if self.checkpoint else ""
            return (f"the trained model {self.model_name}{where}, as it is, over the distribution its test items "
                    f"were drawn from")
        seeds = list(seeds)
        return (f"{self.model_name} models trained afresh from seeds (training randomness included; seeds {seeds}), "
                "over the distribution the test items were drawn from")

    def describe(self) -> dict[str, Any]:
        """JSON-safe description for reports: model, data, checkpoint, score (with its metric and direction),
        trainer settings."""
        cls = type(self.model) if self.trained else self.model
        model_class = self.source.get("model") or (
            qualified_name(cls) if inspect.isclass(cls) or inspect.isfunction(cls) else self.model_name)
        return {"model": self.model_name, "model_class": model_class,
                "data": self.data_name, "data_class": self.source.get("data") or qualified_name(self.data),
                "checkpoint": self.checkpoint,
                "score": self.score.name, "trainer": dict(self.trainer), "trained": self.trained,
                "metric": self.score.metric, "higher_is_better": self.score.higher_is_better}

    def prepare(self, *, train: bool, splits: Iterable[str] = ("test",)) -> dict[str, LoaderData]:
        """Prepare and set up the data, check each evaluation loader's order and the score on a test batch; before
        any training."""
        if train and not self.trained and not callable(getattr(self.data, "train_dataloader", None)):
            raise BoundfinderError(f"{self.data_name} has no train_dataloader(): models are trained from seeds.")
        if callable(getattr(self.data, "prepare_data", None)):
            self.data.prepare_data()
        setup = getattr(self.data, "setup", None)
        if callable(setup):
            if train or "val" in splits:
                # (Lightning's own DataModule pattern builds the validation split under stage "fit" only)
                setup("fit")
            setup("test")
        checked = {split: check_loader(self.data, split) for split in splits}
        self.check_score(self.probe(), next(iter(eval_loader(self.data, "test"))))
        object.__setattr__(self, "_checked", checked)
        return checked

    def verify_items(self, after: str) -> None:
        """The evaluation loaders still yield the items :meth:`prepare` checked (``after``: what ran since, for the
        message). A DataModule that splits its data anew in ``setup()`` (an unseeded ``random_split``) gives each
        training run other test items: the per-item pairing across seeds, and between workers, would be void."""
        for split, before in getattr(self, "_checked", {}).items():
            if _loader_digest(self.data, split)[0] != before.digest:
                raise BoundfinderError(
                    f"{self.data_name}.{_SPLIT_METHODS[split]}() yields other data after {after} than before it: "
                    "the data module builds its splits anew in setup() (Trainer.fit calls it again), so the "
                    f"{split} items differ between models and cannot be paired. Make the split reproducible, e.g. "
                    "random_split(..., generator=torch.Generator().manual_seed(0)), or split once in "
                    "prepare_data()/__init__.")

    def check_score(self, model: nn.Module, batch: Any) -> None:
        """The score works on one test batch (a model output it cannot read is refused before any training)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.score(model, to_device(batch, _device_of(model)))
        finally:
            model.train(was_training)


def as_experiment(model: Any, data: Any = None, *, score: Any = None, trainer: Mapping[str, Any] | None = None,
                  model_name: str | None = None) -> Experiment:
    """``model`` if it is an :class:`Experiment` (``data`` etc. must then be left out), else one made of the
    arguments: the form every command's Python API accepts."""
    if isinstance(model, Experiment):
        given = [k for k, v in (("data", data), ("score", score), ("trainer", trainer), ("model_name", model_name))
                 if v is not None]
        if given:
            raise BoundfinderError(f"an Experiment carries its own model, data, score and trainer settings; leave "
                                   f"{given} out or build the Experiment with them.")
        return model
    return Experiment(model=model, data=data, score=TOP1 if score is None else score, trainer=trainer or {},
                      model_name=model_name or "")


# -- building an experiment from names (the command line, a LightningCLI config) -----------------------------
#: built-in models and data: import path, default arguments; the built-in models are small enough that the CPU
#: is the fastest place to train them
BUILTIN_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("boundfinder.models:MLP", {"hidden": [64], "lr": 0.05, "momentum": 0.9}),
    "lenet": ("boundfinder.models:LeNet", {"lr": 0.05, "momentum": 0.9}),
    "logreg": ("boundfinder.models:LogisticRegression", {"lr": 0.05, "momentum": 0.9}),
}
BUILTIN_DATA: dict[str, tuple[str, dict[str, Any]]] = {
    "digits": ("boundfinder.data:DigitsDataModule", {"batch_size": 64, "seed": 0}),
}
BUILTIN_TRAINER = {"accelerator": "cpu"}


def _import_dotted(path: str, what: str) -> Any:
    """A LightningCLI ``class_path`` (``package.module.Class``) or one of :func:`resolve_object`'s forms."""
    if ":" in path:
        return resolve_object(path, what=what)
    module, _, name = path.rpartition(".")
    if not module:
        raise BoundfinderError(f"a {what} class_path is package.module.Class, but got {path!r}.")
    return resolve_object(f"{module}:{name}", what=what)


class _Builder:
    """Calls ``target`` (a class or a factory function) with ``args`` checked and converted by jsonargparse
    against its signature (as LightningCLI does: nested ``class_path`` / ``init_args`` are instantiated too)."""

    def __init__(self, target: Any, args: Mapping[str, Any], what: str, argv: Sequence[str] = ()) -> None:
        """``argv``: LightningCLI's dotted form, ``["--model.width", "64", "--model.lr=0.1"]``, applied over
        ``args``."""
        from jsonargparse import ArgumentParser

        if not callable(target):
            raise BoundfinderError(f"the {what} must be a class or a function returning one, but got {target!r}.")
        self.target, self.args, self.what = target, dict(args), what
        self.parser = ArgumentParser(exit_on_error=False)
        try:
            if inspect.isclass(target):
                self.parser.add_class_arguments(target, "obj", fail_untyped=False)
            else:
                self.parser.add_function_arguments(target, "obj", fail_untyped=False)
            self.cfg = self.parser.parse_object({"obj": self.args})
            if argv:
                prefix = f"--{what}."
                bad = [a for a in argv if a.startswith("--") and not a.startswith(prefix)]
                if bad:
                    raise ValueError(f"expected {prefix}NAME VALUE, got {bad}")
                self.cfg = self.parser.parse_args([a.replace(prefix, "--obj.", 1) if a.startswith(prefix) else a
                                                   for a in argv], namespace=self.cfg)
        except Exception as exc:  # jsonargparse's ArgumentError / ValueError / TypeError: one message each
            params = [p for p in inspect.signature(target).parameters if p not in ("self", "args", "kwargs")]
            given = {**self.args, **({"command line": " ".join(argv)} if argv else {})}
            message = " ".join(str(exc).split()).replace("--obj.", f"--{what}.").replace("obj.", f"{what}.")
            raise BoundfinderError(f"the {what} arguments {given} do not fit {qualified_name(target)}: "
                                   f"{message} (its arguments: {params}).") from exc

    def __call__(self) -> Any:
        instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes
        obj = instantiate(self.cfg).obj
        if not inspect.isclass(self.target):
            obj = self.target(**vars(obj))
        return obj


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``model:``, ``data:`` and ``trainer:`` sections of a LightningCLI config file (other sections, such as
    ``seed_everything`` or ``ckpt_path``, are not boundfinder's)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except OSError as exc:
        raise BoundfinderError(f"cannot read the config file {str(path)!r}: {exc.strerror}.") from exc
    except yaml.YAMLError as exc:
        raise BoundfinderError(f"the config file {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}") \
            from exc
    if not isinstance(cfg, dict) or not ({"model", "data", "trainer"} & set(cfg)):
        raise BoundfinderError(f"a LightningCLI config has model:, data: and trainer: sections, but {str(path)!r} "
                               f"has {sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__}.")
    return {k: cfg[k] for k in ("model", "data", "trainer") if cfg.get(k) is not None}


def _target_and_args(name: str | None, args: Mapping[str, Any] | None, section: Any, builtins: dict, what: str,
                     default: str) -> tuple[Any, dict[str, Any], str, bool]:
    """(target, arguments, display name, built-in?) from ``--model NAME`` / ``--model-args`` / a config section."""
    args = dict(args or {})
    if section is not None and not isinstance(section, Mapping):
        raise BoundfinderError(f"the config's {what} section must be a mapping (class_path and init_args, or the "
                               f"arguments of --{what}), but got {section!r}.")
    if section is not None and "class_path" in section:
        extra = set(section) - {"class_path", "init_args", "dict_kwargs"}
        if extra:
            raise BoundfinderError(f"the config's {what} section holds class_path and init_args, but also {extra}.")
        if name is not None:
            raise BoundfinderError(f"the config names the {what} class ({section['class_path']}); leave --{what} "
                                   f"out, or drop class_path from the config.")
        target = _import_dotted(section["class_path"], what)
        merged = {**(section.get("init_args") or {}), **(section.get("dict_kwargs") or {}), **args}
        return target, merged, target.__name__, False
    from_config = dict(section or {})
    name = name or default
    if name in builtins:
        path, defaults = builtins[name]
        return resolve_object(path, what=what), {**defaults, **from_config, **args}, name, True
    if ":" not in name:
        raise BoundfinderError(f"unknown {what} {name!r}; the built-in ones are {tuple(builtins)}, or name your own "
                               f"as package.module:Name or path/to/file.py:Name.")
    target = resolve_object(name, what=what)
    return target, {**from_config, **args}, getattr(target, "__name__", name.split(":")[1]), False


def _load_checkpoint(path: str, target: Any, build: _Builder, explicit: bool) -> nn.Module:
    """The trained model in a Lightning checkpoint: ``Class.load_from_checkpoint`` (its saved hyperparameters)
    when no arguments were given, else the model built from the arguments with the checkpoint's weights."""
    if not os.path.isfile(path):
        raise BoundfinderError(f"no checkpoint file {path!r} (looked at {os.path.abspath(path)}).")
    import lightning.pytorch as pl

    if inspect.isclass(target) and issubclass(target, pl.LightningModule) and not explicit:
        try:
            return target.load_from_checkpoint(path, map_location="cpu")
        except (TypeError, KeyError, RuntimeError) as exc:
            raise BoundfinderError(f"cannot load {qualified_name(target)} from the checkpoint {path!r}: "
                                   f"{' '.join(str(exc).split())[:400]} (give the model's arguments with "
                                   "--model-args or --config if they were not saved with save_hyperparameters()).") \
                from exc
    model = build()
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # the user's own file, as Lightning does
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike
        raise BoundfinderError(f"cannot read the checkpoint {path!r}: {exc}") from exc
    saved = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    if isinstance(saved, Mapping) and hasattr(model, "hparams"):
        # arguments that change no tensor's shape (heads, an activation) would load silently into the wrong model
        built = dict(getattr(model, "hparams", {}) or {})
        differ = {k: (saved[k], built[k]) for k in saved if k in built and _same_argument(saved[k], built[k]) is False}
        if differ:
            listed = ", ".join(f"{k}: checkpoint {a!r}, given {b!r}" for k, (a, b) in sorted(differ.items()))
            raise BoundfinderError(f"the checkpoint {path!r} was trained with other model arguments than those given "
                                   f"({listed}); give the arguments it was trained with, or leave them out to use "
                                   "the checkpoint's own.")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        raise BoundfinderError(f"the checkpoint {path!r} holds no state_dict (a Lightning checkpoint or a "
                               "state dict is expected).")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BoundfinderError(f"the checkpoint {path!r} does not fit {type(model).__name__}: "
                               f"{' '.join(str(exc).split())[:400]}") from exc
    return model


def _same_argument(a: Any, b: Any) -> bool | None:
    """Whether two saved / given hyperparameters are equal (tuples and lists alike); None where not comparable."""
    def norm(v: Any) -> Any:
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v

    try:
        return bool(norm(a) == norm(b))
    except Exception:  # noqa: BLE001 - objects whose comparison fails (tensors, modules): not compared
        return None


def load_experiment(*, model: str | None = None, data: str | None = None,
                    model_args: Mapping[str, Any] | None = None, data_args: Mapping[str, Any] | None = None,
                    config: str | os.PathLike | Mapping[str, Any] | None = None, ckpt: str | None = None,
                    score: Any = None, trainer: Mapping[str, Any] | None = None, model_argv: Sequence[str] = (),
                    data_argv: Sequence[str] = ()) -> Experiment:
    """An :class:`Experiment` from names, as the command line gives them.

    ``model`` / ``data``: a built-in name (:data:`BUILTIN_MODELS`, :data:`BUILTIN_DATA`; defaults ``mlp`` on
    ``digits``) or an import path ``package.module:Name`` / ``path/to/file.py:Name`` of a LightningModule /
    LightningDataModule class or a function returning one; ``model_args`` / ``data_args``: their arguments
    (checked against the signature by jsonargparse, as LightningCLI does). ``config``: a LightningCLI config file
    (or its parsed sections): ``model:`` / ``data:`` as ``class_path`` + ``init_args`` (or the arguments of
    ``model`` / ``data``), ``trainer:`` for the Trainer settings of :data:`TRAINER_KEYS`; arguments given here
    override the file's. ``ckpt``: a trained model's checkpoint, evaluated as it is (no training). ``trainer``:
    Trainer settings, overriding the config's. ``model_argv`` / ``data_argv``: LightningCLI's dotted form
    (``["--model.d_model", "64"]``), applied last. Import paths are resolved from the current folder too, as
    ``python -m`` would.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    sections = read_config(config) if isinstance(config, (str, os.PathLike)) else dict(config or {})
    m_target, m_args, m_name, m_builtin = _target_and_args(model, model_args, sections.get("model"),
                                                           BUILTIN_MODELS, "model", "mlp")
    d_target, d_args, d_name, _ = _target_and_args(data, data_args, sections.get("data"), BUILTIN_DATA, "data",
                                                   "digits")
    build_model = _Builder(m_target, m_args, "model", model_argv)
    datamodule = _Builder(d_target, d_args, "data", data_argv)()
    config_trainer = dict(sections.get("trainer") or {})
    settings = {k: v for k, v in config_trainer.items() if k in TRAINER_KEYS and v is not None}
    unused = sorted(k for k, v in config_trainer.items() if k not in (*TRAINER_KEYS, "max_epochs") and v is not None)
    if unused:
        log.info("the config's trainer settings %s are not used (boundfinder runs its own fits: epochs from "
                 "--epochs or max_epochs, no logger, no checkpoints); taken: %s", unused, TRAINER_KEYS)
    settings |= {k: v for k, v in (trainer or {}).items() if v is not None}
    if m_builtin and "accelerator" not in settings:
        settings |= BUILTIN_TRAINER
    explicit = bool(model_args) or bool(sections.get("model")) or bool(model_argv)
    source = {"model": qualified_name(m_target), "model_args": m_args, "data": qualified_name(d_target),
              "data_args": d_args, **({"model_argv": list(model_argv)} if model_argv else {}),
              **({"data_argv": list(data_argv)} if data_argv else {})}
    if ckpt is not None:
        trained = _load_checkpoint(str(ckpt), m_target, build_model, explicit)
        return Experiment(model=trained, data=datamodule, score=score if score is not None else TOP1,
                          trainer=settings, model_name=m_name, data_name=d_name, checkpoint=str(ckpt),
                          source=source | {"checkpoint": os.path.basename(str(ckpt))})

    def factory() -> nn.Module:
        return build_model()

    factory.__qualname__ = factory.__name__ = m_name
    return Experiment(model=factory, data=datamodule, score=score if score is not None else TOP1,
                      trainer=settings, model_name=m_name, data_name=d_name, source=source)


def config_epochs(config: str | os.PathLike | Mapping[str, Any] | None) -> int | None:
    """A LightningCLI config's ``trainer.max_epochs``, if it sets one."""
    sections = read_config(config) if isinstance(config, (str, os.PathLike)) else dict(config or {})
    epochs = (sections.get("trainer") or {}).get("max_epochs")
    return int(epochs) if isinstance(epochs, int) and epochs > 0 else None
