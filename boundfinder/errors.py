"""One exception family for everything boundfinder rejects."""

from __future__ import annotations

__all__ = ["BoundfinderError", "FormatError", "PolicyError", "StatisticsError"]


class BoundfinderError(Exception):
    """Base class of every error boundfinder raises on purpose."""


class FormatError(BoundfinderError, ValueError):
    """A number format, format name, rounding mode or quantize input is invalid."""


class PolicyError(BoundfinderError, ValueError):
    """A precision policy does not fit the model it is applied to (pattern, role, level, conflict)."""


class StatisticsError(BoundfinderError, ValueError):
    """Measurements handed to the bound estimator are malformed (shapes, types, levels, tolerance)."""
