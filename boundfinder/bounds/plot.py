"""Matplotlib drawing of a `BoundEstimate` (imported lazily: the core does not need matplotlib to compute)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_estimate"]


def plot_estimate(est, ax):
    """Accuracy vs bits: measured points with per-level bars (baseline minus the drop bounds), the fitted
    curve with its band at the estimate's confidence, the tolerance line and the bound marker.

    Continuous scores: the metric in its own units vs bits (y label ``"<metric> (<direction>)"``), the bars
    the baseline moved by the drop bounds in the metric's direction (up for a loss), no curve."""
    if est.continuous:
        return _plot_continuous(est, ax)
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


def _plot_continuous(est, ax):
    bits = np.array([lv.bits for lv in est.levels], dtype=float)
    mean = np.array([lv.accuracy for lv in est.levels])
    base = est.baseline_accuracy
    scale = base if est.relative else 1.0
    sign = 1.0 if est.higher_is_better else -1.0  # the metric moves by -sign * drop
    up = np.array([lv.upper for lv in est.levels])
    lo = np.array([lv.lower for lv in est.levels])
    finite = np.isfinite(up) & np.isfinite(lo)
    ends = np.vstack([base - sign * up * scale, base - sign * lo * scale])
    y_lo, y_hi = ends.min(axis=0), ends.max(axis=0)
    yerr = np.vstack([np.clip(mean - y_lo, 0, None), np.clip(y_hi - mean, 0, None)])
    yerr[:, ~finite] = 0.0
    ax.errorbar(bits, mean, yerr=yerr, fmt="o", color="C0", capsize=3, label=f"measured ({est.method} bounds)")
    ax.axhline(base, color="gray", lw=0.8, ls=":", label="baseline")
    ax.axhline(base - sign * est.tolerance * scale, color="C3", lw=1, ls="--", label=f"tolerance {est.tolerance:g}")
    if est.bits is not None:
        ax.axvline(est.bits, color="C2", lw=1.5, label=f"minimum safe bits {est.bits}")
    ax.set_xlabel("bits")
    ax.set_ylabel(f"{est.metric} ({est.direction})")
    ax.set_title(f"{est.status}: {est.bits} bits ({est.confidence:.0%})")
    ax.legend(fontsize="small")
    return ax
