"""Matplotlib drawing of a `BoundEstimate` (imported lazily: the core does not need matplotlib to compute)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_estimate"]


def plot_estimate(est, ax):
    """Accuracy vs bits: measured points with per-level bars (baseline minus the drop bounds), the fitted
    curve with its band at the estimate's confidence, the tolerance line and the bound marker."""
    bits = np.array([lv.bits for lv in est.levels], dtype=float)
    acc = np.array([lv.accuracy for lv in est.levels])
    base = est.baseline_accuracy
    scale = base if est.relative else 1.0
    # The per-level bounds are on the drop; drawn in accuracy units as baseline - drop.
    up = np.array([lv.upper for lv in est.levels])
    lo = np.array([lv.lower for lv in est.levels])
    acc_lo = np.clip(base - np.clip(up, -1, 1) * scale, 0, 1)
    acc_hi = np.clip(base - np.clip(lo, -1, 1) * scale, 0, 1)
    yerr = np.vstack([np.clip(acc - acc_lo, 0, None), np.clip(acc_hi - acc, 0, None)])
    ax.errorbar(bits, acc, yerr=yerr, fmt="o", color="C0", capsize=3, label=f"measured ({est.method} bounds)")
    if est.curve is not None:
        grid = np.linspace(bits.min() - 0.5, bits.max() + 0.5, 200)
        fitted = est.curve.accuracy(grid)
        ax.plot(grid, fitted, color="C1", label=f"{est.curve.family} fit")
        if est.curve.converged:
            top = est.curve.params["top"]
            _d, dlo, dup = est.curve.drop_band(grid, 1.0 - est.confidence)
            s = top if est.relative else 1.0
            ax.fill_between(
                grid, top - dup * s, top - dlo * s, color="C1", alpha=0.25, label="confidence band"
            )
    ax.axhline(base, color="gray", lw=0.8, ls=":", label="baseline")
    ax.axhline(base - est.tolerance * scale, color="C3", lw=1, ls="--", label=f"tolerance {est.tolerance:g}")
    if est.bits is not None:
        ax.axvline(est.bits, color="C2", lw=1.5, label=f"minimum safe bits {est.bits}")
    ax.set_xlabel("bits")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{est.status}: {est.bits} bits ({est.confidence:.0%})")
    ax.legend(fontsize="small")
    return ax
