"""Minimum safe precision with confidence, from paired accuracy measurements.

Measurements are *paired*: for each tested bit level (and training seed), which test items the
reduced-precision model gets right next to which items the full-precision model gets right. The *drop* at a
level is baseline accuracy minus accuracy there (absolute points, or relative to the baseline); a level is
*safe* when its true drop is <= the tolerance; the *minimum safe bits* is the smallest tested level such that
it and every larger tested level are declared safe at the requested confidence. See `estimate_bound`.

Scores may also be continuous per item (a loss, an error: floats), with the metric's direction
(``higher_is_better``): the drop is then the paired mean difference in that direction, in the metric's units
or relative to the baseline mean.
"""

from __future__ import annotations

from boundfinder.bounds.curves import CurveFit
from boundfinder.bounds.estimate import (
    METHODS,
    SEEDS_FOR_SKEWED_SPREAD,
    STATUSES,
    BoundEstimate,
    LevelBound,
    estimate_bound,
)
from boundfinder.bounds.power import min_detectable_drop, required_items
from boundfinder.bounds.suggest import suggest_next_bits

__all__ = [
    "METHODS",
    "SEEDS_FOR_SKEWED_SPREAD",
    "STATUSES",
    "BoundEstimate",
    "CurveFit",
    "LevelBound",
    "estimate_bound",
    "min_detectable_drop",
    "required_items",
    "suggest_next_bits",
]
