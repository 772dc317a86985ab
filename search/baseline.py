"""Is the full-precision model worth measuring? A warning when its accuracy is near chance.

A bound on a model that did not learn is not a statement about the architecture: every precision "keeps" an
accuracy that was never there. Sweeps, sensitivity tables and searches therefore compare the full-precision
accuracy of each model with the rate a constant guess gets on the same items, the majority-class rate (for
``top5``: the share of the items in the 5 most frequent classes, what always guessing those 5 gets), and say so
before their results when a model is below :data:`CHANCE_FACTOR` times that rate.

The class labels are read where they can be read without guessing: the score is one of the built-in ``top1`` /
``top5`` and every batch holds an integer class tensor of shape ``[batch]`` where that score reads its targets
(``(x, y, ...)`` or a dict with a ``y`` / ``target`` / ``label`` key). Otherwise (a custom score, other batch
layouts) no chance rate is known, and no warning is given.

>>> labels = np.array([0] * 30 + [1] * 20 + [2] * 50)
>>> majority_rate(labels)
0.5
>>> print(near_chance(labels == 2, labels))  # doctest: +NORMALIZE_WHITESPACE
WARNING: the full-precision model is near chance on the 100 test items: top1 accuracy 0.5000, majority-class
rate 0.5000 (ratio 1.00), below the 0.7500 a model that learned should reach (1.5 x the majority-class rate, at
most 50% of the way from it to 1). A bound on a model that did not learn is not a statement about the
architecture: train it longer, or fix its learning rate or initialisation, before reading the results.
>>> near_chance(labels == labels, labels) is None
True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from boundfinder.errors import BoundfinderError
from boundfinder.experiment import SCORES, Experiment, eval_loader, split_batch

__all__ = ["CHANCE_FACTOR", "baseline_warning", "chance_rate", "class_labels", "majority_rate", "near_chance"]

log = logging.getLogger(__name__)

#: a full-precision accuracy below this multiple of the majority-class rate is near chance (issue 25); above a rate
#: of 1/2 the floor is capped at ``CHANCE_FACTOR - 1`` of the way from the rate to 1 (see :func:`near_chance`)
CHANCE_FACTOR = 1.5
#: how many guesses each built-in score allows
_TOP_K = {"top1": 1, "top5": 5}


def class_labels(exp: Experiment, split: str = "test") -> np.ndarray | None:
    """The class of each ``split`` item, in loader order, as the built-in score reads it; ``None`` where none can be
    read (a custom score, a batch without an integer class tensor of shape ``[batch]``). One pass over the loader.
    """
    if not any(exp.score is s for s in SCORES.values()):
        return None
    rows = []
    for batch in eval_loader(exp.data, split):
        try:
            _, y = split_batch(batch)
        except BoundfinderError:  # the built-in score refuses these batches itself, with its message
            return None
        classes = isinstance(y, torch.Tensor) and y.ndim == 1 and not (
            y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
        if not classes:
            log.debug("no class labels in the %s batches (targets %s): no near-chance check", split,
                      f"{y.dtype} {list(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__)
            return None
        rows.append(y.detach().cpu().numpy())
    return np.concatenate(rows) if rows else None


def majority_rate(labels: np.ndarray, *, k: int = 1) -> float:
    """The share of the items in the ``k`` most frequent classes: the accuracy of always guessing them.

    >>> majority_rate(np.array([3, 3, 3, 1, 1, 0]), k=2)
    0.8333333333333334
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not len(labels):
        raise BoundfinderError(f"class labels are one class per item, a non-empty 1-D array, but got shape "
                               f"{list(labels.shape)}.")
    counts = np.sort(np.unique(labels, return_counts=True)[1])[::-1]
    return float(counts[:k].sum() / len(labels))


def chance_rate(exp: Experiment, split: str = "test") -> float | None:
    """The majority-class rate of the experiment's ``split`` items for its score (the 5 most frequent classes for
    ``top5``), or ``None`` where the labels cannot be read (see :func:`class_labels`)."""
    labels = class_labels(exp, split)
    return None if labels is None else majority_rate(labels, k=_TOP_K[exp.score.name])


def _floor(rate: float) -> float:
    # CHANCE_FACTOR x rate, but no higher than the same fraction of the way from the rate to 1: above a rate of 1/2,
    # 1.5 x rate would reach (or pass) 100% and flag every model of an imbalanced problem
    return rate + (CHANCE_FACTOR - 1) * min(rate, 1 - rate)


def near_chance(baseline: np.ndarray, labels: np.ndarray, *, k: int = 1, seeds: Sequence[int] = (),
                split: str = "test") -> str | None:
    """A warning (one paragraph starting ``WARNING:``) when a full-precision model is near chance, else ``None``.

    ``baseline``: ``[N]`` or ``[S, N]`` (one row per seed), which items the full-precision model gets right;
    ``labels``: ``[N]``, the class of each item; ``k``: the guesses the score allows (5 for ``top5``); ``seeds``:
    the seed of each row, for the message.

    A model is near chance when its accuracy (any seed's) is below
    ``m + (CHANCE_FACTOR - 1) * min(m, 1 - m)`` for the majority rate ``m``: :data:`CHANCE_FACTOR` times ``m`` up to
    ``m = 1/2``; above it, where that multiple would approach or pass 100% and flag every model of an imbalanced
    problem, the same fraction of the way from ``m`` to 1 (``m = 0.8``: 0.9).
    """
    baseline = np.asarray(baseline, dtype=bool)
    rows = baseline.reshape(1, -1) if baseline.ndim == 1 else baseline
    labels = np.asarray(labels)
    if rows.ndim != 2 or labels.shape != (rows.shape[1],):
        raise BoundfinderError(f"the baseline is [N] or [S, N] and the labels [N], but got shapes "
                               f"{list(baseline.shape)} and {list(labels.shape)}.")
    seeds = tuple(seeds)
    if seeds and len(seeds) != len(rows):
        raise BoundfinderError(f"one seed per baseline row: {len(rows)} rows, but got seeds={list(seeds)}.")
    rate = majority_rate(labels, k=k)
    floor = _floor(rate)
    accuracy = rows.mean(axis=1)
    mean = float(accuracy.mean())
    low = [i for i, a in enumerate(accuracy) if a < floor]  # (the mean is below only when some seed is)
    if not low:
        return None

    def ratio(a: float) -> str:
        return f"{a / rate:.2f}" if rate > 0 else "inf"

    names = [f"seed {s}" for s in seeds] if seeds else [f"model {i + 1}" for i in range(len(rows))]
    what = "majority-class rate" if k == 1 else f"rate of the {k} most frequent classes"
    score = f"top{k}"
    if len(rows) == 1:
        measured = f"{score} accuracy {mean:.4f}, {what} {rate:.4f} (ratio {ratio(mean)})"
        which = ""
    else:
        per = ", ".join(f"{n}: {a:.4f}" for n, a in zip(names, accuracy, strict=True))
        measured = (f"{score} accuracy {per} (mean {mean:.4f}), {what} {rate:.4f} (ratios "
                    f"{', '.join(ratio(float(a)) for a in accuracy)}; mean {ratio(mean)})")
        which = f" for {', '.join(names[i] for i in low)}"
    n = rows.shape[1]
    return (f"WARNING: the full-precision model is near chance on the {n} {split} items: {measured}, below the "
            f"{floor:.4f} a model that learned should reach{which} ({CHANCE_FACTOR:g} x the {what}, at most "
            f"{CHANCE_FACTOR - 1:.0%} of the way from it to 1). A bound on a model that did not learn is not a "
            "statement about the architecture: train it longer, or fix its learning rate or initialisation, before "
            "reading the results.")


def baseline_warning(exp: Experiment, split: str, baseline: np.ndarray, *,
                     seeds: Sequence[int] = ()) -> str | None:
    """The near-chance warning of :func:`near_chance` for the experiment's full-precision results on ``split``
    (``"test"`` or ``"val"``), logged with ``logging.warning`` when given; ``None`` when the model is above chance
    or no chance rate is known (see :func:`class_labels`).

    ``baseline``: ``[N]`` or ``[S, N]``, which ``split`` items the full-precision model of each seed gets right
    (``Rounded.baseline``, ``SweepResult.baseline``); ``seeds``: the seed of each row, for the message (leave it
    empty for one trained model). Call it after ``Experiment.prepare`` (the loaders are set up). One pass over the
    loader, to read the labels.
    """
    labels = class_labels(exp, split)
    if labels is None:
        return None
    if len(labels) != np.shape(baseline)[-1]:
        raise BoundfinderError(f"the {split} loader yields {len(labels)} labelled items, but the baseline has "
                               f"{np.shape(baseline)[-1]}: the baseline must be measured on the same {split} items.")
    warning = near_chance(baseline, labels, k=_TOP_K[exp.score.name], seeds=seeds, split=split)
    if warning is not None:
        log.warning("%s", warning)
    return warning
