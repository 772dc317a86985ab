"""Accuracy-vs-bits curves fitted by maximum likelihood (statsmodels ``GenericLikelihoodModel``).

Two families, compared by AIC:

* ``logistic4``: ``acc(b) = floor + (top - floor) / (1 + exp(-slope (b - midpoint)))``: a floor (chance level
  when the network is destroyed), a top (full-precision accuracy), a slope and a midpoint in bits.
* ``exponential``: ``acc(b) = top - exp(log_amplitude - rate * b)``: error that decays geometrically with
  every extra bit (``rate = ln 2`` is error proportional to ``2^-b``).

Counts of correct items per level (and per seed) are the data; the baseline counts enter as the level
``b = infinity`` where both curves equal ``top``. One seed: binomial likelihood. Several seeds: beta-binomial
per (seed, level), whose extra parameter ``rho`` (intra-seed correlation) absorbs between-seed variance.
The fit works on unconstrained parameters (logits and logs) so the optimiser needs no bounds; reported
parameters and standard errors are on the natural scale (delta method through the transform).

A fit that does not converge, or whose Hessian cannot be inverted, is returned with ``converged=False`` and a
message; nothing here raises on bad luck in the data.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats
from statsmodels.base.model import GenericLikelihoodModel

__all__ = ["CurveFit", "fit_curves"]

_EPS = 1e-9
FAMILIES = ("logistic4", "exponential")
_NAMES = {
    "logistic4": ("top", "floor", "slope", "midpoint"),
    "exponential": ("top", "log_amplitude", "rate"),
}


def _accuracy(family, theta, bits):
    """Accuracy at ``bits`` (inf allowed = baseline) from unconstrained parameters ``theta``."""
    bits = np.asarray(bits, dtype=float)
    top = special.expit(theta[0])
    if family == "logistic4":
        floor = top * special.expit(theta[1])
        slope = math.exp(min(theta[2], 50.0))
        with np.errstate(over="ignore", invalid="ignore"):
            z = np.where(np.isinf(bits), np.inf, slope * (bits - theta[3]))
        acc = floor + (top - floor) * special.expit(z)
    else:
        rate = math.exp(min(theta[2], 50.0))
        with np.errstate(over="ignore", invalid="ignore"):
            gap = np.where(np.isinf(bits), 0.0, np.exp(np.minimum(theta[1] - rate * bits, 50.0)))
        acc = top - gap
    return np.clip(acc, _EPS, 1.0 - _EPS)


def _natural(family, theta):
    """Natural-scale parameters from the unconstrained ones."""
    top = special.expit(theta[0])
    if family == "logistic4":
        return np.array([top, top * special.expit(theta[1]), math.exp(min(theta[2], 50.0)), theta[3]])
    return np.array([top, theta[1], math.exp(min(theta[2], 50.0))])


class _CurveModel(GenericLikelihoodModel):
    """Binomial (or beta-binomial, with one more parameter) likelihood of correct counts per row."""

    def __init__(self, endog, exog, *, family, n_items, overdispersed, **kwargs):
        self.family = family
        self.n_items = n_items
        self.overdispersed = overdispersed
        names = list(_NAMES[family]) + (["rho"] if overdispersed else [])
        # exog carries (bits, is_baseline); every parameter beyond its two columns is declared "extra" so
        # statsmodels counts them, then the list is renamed to the curve's own parameter names.
        super().__init__(endog, exog, extra_params_names=names[exog.shape[1] :], **kwargs)
        self.exog_names[:] = names

    def loglikeobs(self, params):
        k = self.endog
        # statsmodels rejects inf in exog, so baseline rows carry a flag and become b = inf here.
        bits = np.where(self.exog[:, 1] > 0.5, np.inf, self.exog[:, 0])
        n_curve = len(_NAMES[self.family])
        p = _accuracy(self.family, params[:n_curve], bits)
        if not self.overdispersed:
            return stats.binom.logpmf(k, self.n_items, p)
        rho = float(np.clip(special.expit(params[n_curve]), 1e-7, 1.0 - 1e-7))
        scale = (1.0 - rho) / rho
        return stats.betabinom.logpmf(k, self.n_items, p * scale, (1.0 - p) * scale)


@dataclass(frozen=True, kw_only=True)
class CurveFit:
    """A fitted accuracy-vs-bits curve with its covariance, on which drop bands are computed.

    ``params`` and ``stderr`` are on the natural scale (``top``, ``floor`` in accuracy units, ``slope``
    per bit, ``midpoint`` in bits, ``rate`` per bit, ``rho`` the beta-binomial intra-seed correlation).
    ``aic`` maps every family tried to its AIC (None when that fit failed). ``theta``/``cov`` are the
    unconstrained estimates and their covariance, kept for bands.
    """

    family: str
    params: dict
    stderr: dict
    aic: dict
    loglike: float
    converged: bool
    message: str
    theta: tuple = field(repr=False)
    cov: tuple | None = field(repr=False)
    relative: bool = False

    def accuracy(self, bits):
        """Fitted accuracy at ``bits`` (array-like)."""
        return _accuracy(self.family, np.asarray(self.theta[: len(_NAMES[self.family])]), bits)

    def drop(self, bits):
        """Fitted drop at ``bits``: ``top - acc(bits)``, divided by ``top`` when relative."""
        theta = np.asarray(self.theta)
        return _drop(self.family, theta, bits, self.relative)

    def drop_band(self, bits, alpha):
        """(drop, lower, upper): pointwise one-sided delta-method bounds on the drop at level ``alpha``.

        Without a usable covariance the bounds are (-inf, +inf): an unconverged curve certifies nothing.
        """
        bits = np.atleast_1d(np.asarray(bits, dtype=float))
        theta = np.asarray(self.theta)
        d = _drop(self.family, theta, bits, self.relative)
        if self.cov is None:
            return d, np.full_like(d, -np.inf), np.full_like(d, np.inf)
        cov = np.asarray(self.cov)
        jac = _jacobian(lambda t: _drop(self.family, t, bits, self.relative), theta, 1e-5)
        se = np.sqrt(np.maximum(np.einsum("bj,jk,bk->b", jac, cov, jac), 0.0))
        z = stats.norm.ppf(1.0 - alpha)
        return d, d - z * se, d + z * se

    def summary(self):
        """JSON-safe dict (plain floats, None for missing)."""
        return {
            "family": self.family,
            "params": {k: _clean(v) for k, v in self.params.items()},
            "stderr": {k: _clean(v) for k, v in self.stderr.items()},
            "aic": {k: _clean(v) for k, v in self.aic.items()},
            "loglike": _clean(self.loglike),
            "converged": bool(self.converged),
            "message": self.message,
        }


def _jacobian(f, theta, rel_step):
    """Central-difference Jacobian of the vector function ``f`` at ``theta``: rows are outputs, columns
    parameters; each step is ``rel_step`` times the parameter's magnitude (at least ``rel_step``)."""
    theta = np.asarray(theta, dtype=float)
    cols = []
    for j in range(len(theta)):
        h = rel_step * max(1.0, abs(theta[j]))
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        cols.append((np.asarray(f(tp)) - np.asarray(f(tm))) / (2 * h))
    return np.stack(cols, axis=-1)


def _clean(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _drop(family, theta, bits, relative):
    n_curve = len(_NAMES[family])
    acc = _accuracy(family, theta[:n_curve], bits)
    top = special.expit(theta[0])
    d = top - acc
    return d / top if relative else d


def _starts(family, bits, acc, top):
    """Starting values from the observed accuracies (unconstrained scale); a few slopes for robustness."""
    top = float(np.clip(top, 0.02, 0.995))
    if family == "logistic4":
        floor = float(np.clip(acc.min() * 0.9, 1e-3, top * 0.98))
        half = floor + 0.5 * (top - floor)
        below = bits[acc < half]
        mid = float(below.max() + 0.5) if below.size else float(bits.min() - 1.0)
        return [
            np.array([special.logit(top), special.logit(floor / top), ls, mid]) for ls in (0.0, 1.1, -1.2)
        ]
    gap = np.clip(top - acc, 1e-4, None)
    slope, intercept = np.polyfit(bits, np.log(gap), 1)
    rate = float(np.clip(-slope, 0.05, 5.0))
    return [np.array([special.logit(top), float(intercept), math.log(rate)])]


def _fit_one(family, rows_bits, rows_k, n_items, overdispersed, starts):
    """Best of several local ML fits (Nelder–Mead, then BFGS to polish) from the given starts."""
    is_base = np.isinf(rows_bits)
    exog = np.column_stack([np.where(is_base, 0.0, rows_bits), is_base.astype(float)])
    model = _CurveModel(rows_k, exog, family=family, n_items=n_items, overdispersed=overdispersed)
    best = None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for start in starts:
            if overdispersed:
                start = np.append(start, special.logit(0.01))
            res = model.fit(start_params=start, method="nm", maxiter=4000, disp=0)
            res = model.fit(start_params=res.params, method="bfgs", maxiter=500, disp=0)
            llf = float(model.loglike(np.asarray(res.params, dtype=float)))
            if math.isfinite(llf) and (best is None or llf > best[1]):
                best = (res, llf)
        if best is None:
            raise RuntimeError("no start gave a finite likelihood")
        res, llf = best
        theta = np.asarray(res.params, dtype=float)
        # BFGS often stops with "precision loss" at the optimum of a flat likelihood; a small score vector is
        # the convergence test that matters here.
        grad = np.asarray(model.score(theta), dtype=float)
        conv = bool(res.mle_retvals.get("converged", False)) or bool(np.max(np.abs(grad)) < 0.1)
        try:
            cov = np.asarray(res.cov_params(), dtype=float)
            if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) < 0):
                cov = None
        except Exception:  # noqa: BLE001 - a singular Hessian of any kind means: no standard errors
            cov = None
    return theta, llf, conv, cov


def fit_curves(bits, correct_counts, baseline_counts, n_items, *, relative=False):
    """Fit both families, choose by AIC; returns a `CurveFit` (possibly unconverged) or None.

    ``correct_counts`` has shape (L, S), ``baseline_counts`` shape (S,). None is returned only when no family
    produced a finite likelihood at all.
    """
    bits = np.asarray(bits, dtype=float)
    correct_counts = np.asarray(correct_counts, dtype=float)
    baseline_counts = np.asarray(baseline_counts, dtype=float)
    _n_levels, s = correct_counts.shape
    rows_bits = np.concatenate([np.repeat(bits, s), np.full(s, np.inf)])
    rows_k = np.concatenate([correct_counts.reshape(-1), baseline_counts])
    overdispersed = s > 1
    acc = correct_counts.mean(axis=1) / n_items
    top = baseline_counts.mean() / n_items
    fits = {}
    for family in FAMILIES:
        starts = _starts(family, bits, acc, top)
        try:
            fit = _fit_one(family, rows_bits, rows_k, n_items, overdispersed, starts)
            od = overdispersed
            # rho estimated at its boundary 0 leaves a singular Hessian; the binomial model is then the MLE
            # of the nested family (no detectable between-seed variance), so fit that instead, and say so.
            if od and (fit[3] is None or special.expit(fit[0][-1]) < 1e-4):
                fit = _fit_one(family, rows_bits, rows_k, n_items, False, starts)
                od = False
            fits[family] = (*fit, od)
        except Exception as exc:  # noqa: BLE001 - a fit that fails is reported, never raised
            fits[family] = exc
    aic = {}
    for family, fit in fits.items():
        if isinstance(fit, Exception) or not math.isfinite(fit[1]):
            aic[family] = None
        else:
            aic[family] = 2.0 * len(fit[0]) - 2.0 * fit[1]
    usable = [f for f in FAMILIES if aic[f] is not None]
    if not usable:
        return None

    # Prefer converged fits with a covariance; among those the smallest AIC.
    def rank(f):
        return (not (fits[f][2] and fits[f][3] is not None), aic[f])

    best = min(usable, key=rank)
    theta, llf, conv, cov, overdispersed = fits[best]
    names = list(_NAMES[best]) + (["rho"] if overdispersed else [])
    n_curve = len(_NAMES[best])
    natural = _natural(best, theta[:n_curve])
    if overdispersed:
        natural = np.append(natural, special.expit(theta[n_curve]))

    def to_natural(t):
        nat = _natural(best, t[:n_curve])
        return np.append(nat, special.expit(t[n_curve])) if overdispersed else nat

    if cov is not None:
        jac = _jacobian(to_natural, theta, 1e-6)
        se = np.sqrt(np.maximum(np.diag(jac @ cov @ jac.T), 0.0))
    else:
        se = np.full(len(theta), np.nan)
    if conv and cov is not None:
        message = f"{best} chosen by AIC among {', '.join(usable)}"
        if s > 1:
            message += (
                "; beta-binomial over seeds"
                if overdispersed
                else "; binomial (no between-seed overdispersion found)"
            )
    elif cov is None:
        message = f"{best} fit has a singular Hessian (parameters not identified by these levels); no band"
    else:
        message = f"{best} optimiser did not report convergence; band shown but not trusted"
    return CurveFit(
        family=best,
        params={k: float(v) for k, v in zip(names, natural, strict=True)},
        stderr={k: (float(v) if np.isfinite(v) else None) for k, v in zip(names, se, strict=True)},
        aic=aic,
        loglike=llf,
        converged=bool(conv and cov is not None),
        message=message,
        theta=tuple(float(t) for t in theta),
        cov=None if cov is None else tuple(tuple(float(x) for x in row) for row in cov),
        relative=relative,
    )
