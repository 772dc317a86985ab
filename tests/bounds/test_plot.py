"""plot(ax): every promised element is drawn (Agg backend, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from boundfinder.bounds import estimate_bound


def test_plot_draws_points_curve_band_tolerance_and_marker():
    rng = np.random.default_rng(0)
    bits = list(range(4, 15))
    base = rng.random(3000) < 0.9
    u = rng.random(3000)
    correct = np.stack([base & (u >= 0.8 * 2.0 ** -(b - 3)) for b in bits])
    est = estimate_bound(bits, correct, base)
    fig, ax = plt.subplots()
    assert est.plot(ax) is ax
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(lbl.startswith("measured") for lbl in labels)
    assert any("fit" in lbl for lbl in labels)
    assert "confidence band" in labels
    assert any(lbl.startswith("tolerance") for lbl in labels)
    assert f"minimum safe bits {est.bits}" in labels
    # The marker is a vertical line at the bound.
    vlines = [ln for ln in ax.get_lines() if np.allclose(ln.get_xdata(), est.bits)]
    assert vlines
    plt.close(fig)


def test_plot_without_curve_or_bound():
    est = estimate_bound([8, 9], np.ones((2, 50), bool), np.ones(50, bool), fit_curve=False)
    fig, ax = plt.subplots()
    est.plot(ax)
    assert est.bits is None
    plt.close(fig)
