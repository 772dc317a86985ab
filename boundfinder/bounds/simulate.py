"""Paired accuracy measurements with a known true bound, for calibration studies and planning.

Generative model (per repetition): a test set of N items and S training seeds. Item ``i`` of seed ``s`` is
right at full precision with probability ``baseline_accuracy``. Reducing precision to ``b`` bits turns a right
item wrong with probability ``f_s(b)`` and a wrong item right with probability ``g(b)``, through one uniform
``U[s, i]`` shared by all levels, so errors are nested as bits fall (as they are in real networks). Items are
correlated across seeds: ``U`` and the baseline draw are Gaussian copulas with a shared item component
(``item_rho``), so fragile items are fragile for every seed. Between-seed variance multiplies seed ``s``'s
drop by ``m_s = exp(sigma z - sigma^2 / 2)`` (lognormal, mean 1, right-skewed) or ``max(0, 1 + sigma z)``
(``seed_dist="normal"``, symmetric). The true drop at ``b`` is the mean over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from boundfinder.errors import StatisticsError

__all__ = ["CURVE_FAMILIES", "NOISES", "ContinuousScenario", "Scenario", "curve_drop"]

CURVE_FAMILIES = ("logistic", "exp2", "cliff")


def curve_drop(family, bits):
    """Mean accuracy drop (absolute) at ``bits`` for the study's curve families (baseline accuracy 0.9).

    * ``logistic``: ``0.8 / (1 + exp(1.5 (b - 6)))``; the drop is 0.0379 at 8 bits, 0.0089 at 9: true bound 9,
      with the level at the bound only just safe (hard to certify).
    * ``exp2``: error decaying as ``2^-b``: ``0.0108 * 2^-(b - 9)``, capped at 0.8; 0.0108 at 9 bits (just
      unsafe: the worst case for the false-safe rate), 0.0054 at 10: true bound 10.
    * ``cliff``: 0.004 from 8 bits up, 0.4 below: true bound 8 behind a sharp cliff.
    """
    b = np.asarray(bits, dtype=float)
    if family == "logistic":
        return 0.8 * special.expit(-1.5 * (b - 6.0))
    if family == "exp2":
        return np.minimum(0.0108 * 2.0 ** -(b - 9.0), 0.8)
    if family == "cliff":
        return np.where(b >= 8, 0.004, 0.4)
    raise StatisticsError(f"family must be one of {CURVE_FAMILIES}, got {family!r}")


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One setting of the calibration study. ``seed_sd`` is the sd of the log drop multiplier (0: none)."""

    family: str
    n_items: int
    n_seeds: int = 1
    seed_sd: float = 0.0
    seed_dist: str = "lognormal"
    item_rho: float = 0.5
    baseline_accuracy: float = 0.9
    bits: tuple = tuple(range(4, 17))
    tolerance: float = 0.01

    def __post_init__(self):
        if self.family not in CURVE_FAMILIES:
            raise StatisticsError(f"family must be one of {CURVE_FAMILIES}, got {self.family!r}")
        if not (self.n_items >= 2 and self.n_seeds >= 1):
            raise StatisticsError(
                f"n_items >= 2 and n_seeds >= 1 must hold, got {self.n_items=}, {self.n_seeds=}"
            )
        if self.seed_dist not in ("lognormal", "normal"):
            raise StatisticsError(f"seed_dist must be 'lognormal' or 'normal', got {self.seed_dist!r}")
        if not (0.0 <= self.item_rho < 1.0 and self.seed_sd >= 0.0):
            raise StatisticsError(
                f"0 <= item_rho < 1 and seed_sd >= 0 must hold, got {self.item_rho=}, {self.seed_sd=}"
            )

    def _multiplier(self, z):
        """Seed drop multiplier from standard normal ``z``: mean 1, sd about ``seed_sd``."""
        if self.seed_dist == "lognormal":  # right-skewed: a few seeds much more sensitive
            return np.exp(self.seed_sd * z - self.seed_sd**2 / 2.0)
        return np.maximum(1.0 + self.seed_sd * z, 0.0)  # symmetric (clipped at 0 beyond 1/sd sds)

    def _rates(self):
        a0 = self.baseline_accuracy
        d = curve_drop(self.family, self.bits)
        # Flips both ways, as rounding noise does: wrong->right at half the drop (capped), right->wrong the
        # rest.
        p01 = 0.5 * np.minimum(d, 0.05)
        return a0, d, p01

    def true_drop(self):
        """Mean drop over the seed distribution at each tested level (Gauss–Hermite over the multiplier)."""
        a0, d, p01 = self._rates()
        if self.seed_sd == 0.0:
            return np.minimum(d + p01, a0) - p01
        x, w = np.polynomial.hermite_e.hermegauss(80)
        m = self._multiplier(x)
        p10 = np.minimum(m[:, None] * d[None, :] + p01[None, :], a0)
        return (w[:, None] * p10).sum(axis=0) / w.sum() - p01

    def true_bound(self):
        """Smallest tested level from which every tested level is truly safe; None if the top is unsafe."""
        safe = self.true_drop() <= self.tolerance
        if not safe[-1]:
            return None
        j = len(safe) - 1
        while j > 0 and safe[j - 1]:
            j -= 1
        return int(self.bits[j])

    def sample(self, rng):
        """(bits, correct (L, S, N) bool, baseline (S, N) bool) for one repetition."""
        a0, d, p01 = self._rates()
        s, n = self.n_seeds, self.n_items
        m = self._multiplier(rng.standard_normal(s))
        f = np.minimum((m[:, None] * d[None, :] + p01[None, :]) / a0, 1.0)  # (S, L) right -> wrong
        g = p01 / (1.0 - a0)  # (L,) wrong -> right
        r = math.sqrt(self.item_rho)
        q = math.sqrt(1.0 - self.item_rho)
        u = special.ndtr(r * rng.standard_normal(n)[None, :] + q * rng.standard_normal((s, n)))
        base = special.ndtr(r * rng.standard_normal(n)[None, :] + q * rng.standard_normal((s, n))) < a0
        right_kept = u[None, :, :] >= f.T[:, :, None]
        wrong_fixed = u[None, :, :] < g[:, None, None]
        correct = np.where(base[None], right_kept, wrong_fixed)
        return np.array(self.bits), correct, base


NOISES = ("lognormal", "t3", "normal")


def _standard_noise(kind, rng, size):
    """Mean 0, sd 1 draws: ``lognormal`` (log-sd 1: skewness 6.2, right tail), ``t3`` (Student t, 3 df:
    symmetric, infinite kurtosis) or ``normal``."""
    if kind == "lognormal":
        return (np.exp(rng.standard_normal(size)) - math.exp(0.5)) / math.sqrt((math.e - 1.0) * math.e)
    if kind == "t3":
        return rng.standard_t(3, size) / math.sqrt(3.0)
    return rng.standard_normal(size)


@dataclass(frozen=True, kw_only=True)
class ContinuousScenario:
    """Paired continuous per-item scores (a loss: lower is better) with a known true bound.

    Per repetition: baseline losses ``l[s, i] ~ Gamma(2, 0.5)`` for S seeds and N items; at ``b`` bits the
    loss of item ``i`` of seed ``s`` rises by ``D[b, s, i] = m_s d(b) + sigma(b) e[s, i]`` with ``d`` the
    ``family``'s drop curve (`curve_drop`, read as a loss increase in the metric's units), ``m_s`` the seed
    factor (log-normal with log-sd ``seed_sd``, mean 1, right-skewed; 1 without seed spread) and ``e`` mean-0,
    sd-1 ``noise`` (`NOISES`), shared by every level (an item hurt at b bits is hurt below b too) and correlated
    across seeds through an item component (``item_rho``). The noise scale grows with the drop,
    ``sigma(b) = item_sd sqrt(d(b) / tolerance)``, and ``item_sd`` defaults to ``boundary_se * tolerance *
    sqrt(N)``: the standard error of one seed's mean at the level where the drop reaches the tolerance is
    ``boundary_se`` tolerances, whatever N (0.3: the exp2 level below the bound, unsafe by 8% of the
    tolerance, is a quarter of a standard error from it, so every interval is tested near its edge). The true
    drop at ``b`` is ``d(b)``.
    """

    family: str = "exp2"
    n_items: int
    n_seeds: int = 1
    seed_sd: float = 0.0
    noise: str = "lognormal"
    boundary_se: float = 0.3
    item_rho: float = 0.5
    bits: tuple = tuple(range(4, 17))
    tolerance: float = 0.01

    def __post_init__(self):
        if self.family not in CURVE_FAMILIES:
            raise StatisticsError(f"family must be one of {CURVE_FAMILIES}, got {self.family!r}")
        if self.noise not in NOISES:
            raise StatisticsError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if not (self.n_items >= 2 and self.n_seeds >= 1 and self.boundary_se > 0 and self.seed_sd >= 0):
            raise StatisticsError(
                f"n_items >= 2, n_seeds >= 1, boundary_se > 0 and seed_sd >= 0 must hold, got {self.n_items=}, "
                f"{self.n_seeds=}, {self.boundary_se=}, {self.seed_sd=}"
            )

    @property
    def item_sd(self):
        return self.boundary_se * self.tolerance * math.sqrt(self.n_items)

    def true_drop(self):
        return curve_drop(self.family, self.bits)

    def true_bound(self):
        """Smallest tested level from which every tested level is truly safe; None if the top is unsafe."""
        safe = self.true_drop() <= self.tolerance
        if not safe[-1]:
            return None
        j = len(safe) - 1
        while j > 0 and safe[j - 1]:
            j -= 1
        return int(self.bits[j])

    def sample(self, rng):
        """(bits, scores (L, S, N) float, baseline (S, N) float) for one repetition; lower is better."""
        s, n = self.n_seeds, self.n_items
        d = self.true_drop()
        m = np.exp(self.seed_sd * rng.standard_normal(s) - self.seed_sd**2 / 2.0)
        base = rng.gamma(2.0, 0.5, size=(s, n))
        r, q = math.sqrt(self.item_rho), math.sqrt(1.0 - self.item_rho)
        e = r * _standard_noise(self.noise, rng, n)[None, :] + q * _standard_noise(self.noise, rng, (s, n))
        sigma = self.item_sd * np.sqrt(d / self.tolerance)
        rise = m[None, :, None] * d[:, None, None] + sigma[:, None, None] * e[None]
        return np.array(self.bits), base[None] + rise, base
