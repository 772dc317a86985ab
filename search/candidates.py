"""Candidate configurations a search measures besides its sampler's proposals.

- :func:`uniform_configurations`: every group at the same width, one configuration per width (what the uniform
  sweep measures), so a search's candidates always include the sweep's;
- :func:`sensitivity_path`: a greedy path from the widest configuration down, built from each group's validation
  drop *alone* (the measurements ``boundfinder sensitivity`` makes): at each step the group whose next lower width
  saves the most cost per unit of validation drop is lowered (AIMET's AMP orders its path the same way), so the
  path has ``groups x (widths - 1)`` steps;
- :func:`search_path`: a binary search along that path for its last point whose *measured* validation drop (all
  lowered groups together) is within the tolerance: ``ceil(log2(steps + 1))`` measurements where the drop grows
  along the path.

All three use validation measurements only; what they produce is certified on test items like any candidate.

>>> uniform_configurations(["a", "b"], [8, 4])
[{'a': 8, 'b': 8}, {'a': 4, 'b': 4}]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from boundfinder.errors import BoundfinderError

__all__ = ["search_path", "sensitivity_path", "uniform_configurations"]

Config = dict[str, int]


def uniform_configurations(groups: Sequence[str], widths: Sequence[int]) -> list[Config]:
    """One configuration per width with every group at that width, in the order of ``widths``."""
    if not groups:
        raise BoundfinderError("uniform configurations need at least one group.")
    return [dict.fromkeys(groups, w) for w in widths]


def sensitivity_path(alone: Mapping[str, Mapping[int, float]], cost: Callable[[Config], float], *,
                     floor: float = 1e-4) -> list[Config]:
    """The greedy path from every group at its widest width down to every group at its narrowest.

    ``alone[g][w]``: the validation drop with group ``g`` at width ``w`` and every other group at its widest
    (measured; the widest width's entry is the reference, usually about 0). ``cost(config)``: the configuration's
    cost. At each step the group whose next lower width has the best ratio of cost saved to drop added (the added
    drop counted at least ``floor``, so that free steps are taken cheapest-first by cost saved) is lowered; ties go
    to the group listed first. Returns the path's configurations, the widest first.
    """
    if not alone:
        raise BoundfinderError("a sensitivity path needs the drops of at least one group.")
    ladders = {}
    for g, drops in alone.items():
        widths = sorted(drops, reverse=True)
        if not widths:
            raise BoundfinderError(f"group {g!r} has no measured width.")
        ladders[g] = widths
    current = {g: ladder[0] for g, ladder in ladders.items()}
    step = dict.fromkeys(ladders, 0)
    path = [dict(current)]
    while True:
        best, best_score = None, None
        here = cost(current)
        for g, ladder in ladders.items():
            if step[g] + 1 >= len(ladder):
                continue
            w_now, w_next = ladder[step[g]], ladder[step[g] + 1]
            saved = here - cost({**current, g: w_next})
            added = max(alone[g][w_next] - alone[g][w_now], floor)
            score = saved / added
            if best_score is None or score > best_score:
                best, best_score = g, score
        if best is None:
            return path
        step[best] += 1
        current[best] = ladders[best][step[best]]
        path.append(dict(current))


def search_path(path: Sequence[Config], feasible: Callable[[Config], bool]) -> tuple[int | None, list[int]]:
    """Binary search for the last feasible point of ``path`` (``feasible`` measures one configuration on the
    validation items). Assumes feasibility only decreases along the path (the drop grows as groups are lowered);
    where it does not, the point found is feasible but a later feasible one may be missed. Returns (index of the
    last feasible point found, or None when not even the first is; the indices measured, in order).

    >>> search_path([{"a": w} for w in (8, 6, 4, 2)], lambda c: c["a"] >= 4)
    (2, [0, 2, 3])
    """
    measured: list[int] = []

    def check(i: int) -> bool:
        measured.append(i)
        return feasible(path[i])

    if not path or not check(0):
        return None, measured
    lo, hi = 0, len(path) - 1  # path[lo] is feasible; the answer lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if check(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo, measured
