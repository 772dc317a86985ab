"""Minimum safe precision with confidence, from paired accuracy measurements.

Measurements are *paired*: for each tested bit level (and training seed), which test items the
reduced-precision model gets right next to which items the full-precision model gets right. The *drop* at a
level is baseline accuracy minus accuracy there (absolute points, or relative to the baseline); a level is
*safe* when its true drop is <= the tolerance; the *minimum safe bits* is the smallest tested level such that
it and every larger tested level are declared safe at the requested confidence. See `estimate_bound`.
"""

from __future__ import annotations

from boundfinder.bounds.curves import CurveFit
from boundfinder.bounds.estimate import METHODS, STATUSES, BoundEstimate, LevelBound, estimate_bound
from boundfinder.bounds.power import min_detectable_drop, required_items
from boundfinder.bounds.suggest import suggest_next_bits

__all__ = [
    "METHODS",
    "STATUSES",
    "BoundEstimate",
    "CurveFit",
    "LevelBound",
    "estimate_bound",
    "min_detectable_drop",
    "required_items",
    "suggest_next_bits",
]
