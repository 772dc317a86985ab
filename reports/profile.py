"""Reports of ``boundfinder profile``: an HTML page (error against layer per format, cost ratio against model size
per level, both tables) and an MLflow run.

MLflow run: params (level, rounding, roles, formats, items, model; cost format, batch, repeats, steps); metrics
``error_median/<format>``, ``error_p90/<format>``, ``error_alone_median/<format>`` and ``error_median/float32`` with
the layer's position in execution order as the step (MLflow's charts plot them against depth), and per cost row
``step_ratio/<level>/<kind>_d<depth>_w<width>`` and ``eval_ratio/...``; tag ``boundfinder.kind`` = ``profile``;
artifacts ``summary.json``, ``error_vs_layer.png``, ``cost_ratio.png``, ``report.html``.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import numpy as np

from boundfinder.profile import REFERENCE
from boundfinder.reports.html import _img, _page, _table, figure_png
from boundfinder.reports.mlflow_log import _experiment_params, _finite, _log, _metric_key

__all__ = ["cost_plot", "error_plot", "log_profile", "profile_html"]


def _positive(values: np.ndarray) -> np.ndarray:
    """Log axes show no zero or infinity: those points are left out (the tables keep them)."""
    v = np.asarray(values, dtype=float).copy()
    v[~np.isfinite(v) | (v <= 0)] = np.nan
    return v


def error_plot(profile, ax: Any) -> None:
    """Median relative error against layer (execution order) per format, log scale; dotted: the layer alone."""
    x = np.arange(len(profile.layers))
    ax.plot(x, _positive(profile.median(REFERENCE)), color="0.5", marker=".", label="float32 (no format)")
    for fmt in profile.formats:
        (line,) = ax.plot(x, _positive(profile.median(fmt)), marker="o", label=fmt)
        alone = profile.median(fmt, alone=True)
        if np.isfinite(alone).any():
            ax.plot(x, _positive(alone), linestyle=":", color=line.get_color(), label=f"{fmt}, layer alone")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(profile.layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("||y - y_f64|| / ||y_f64||, median over items")
    ax.set_title(f"error of each layer's output, {profile.level} level")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def cost_plot(cost, ax: Any) -> None:
    """Step-time ratio to float32 (solid; evaluation dashed) against parameter count, per level and model kind."""
    for i, level in enumerate(dict.fromkeys(r.level for r in cost.rows)):
        color = f"C{i}"
        for kind, marker in (("mlp", "o"), ("cnn", "s")):
            rows = sorted((r for r in cost.rows if r.level == level and r.kind == kind), key=lambda r: r.parameters)
            if not rows:
                continue
            p = [r.parameters for r in rows]
            ax.plot(p, [r.step_ratio for r in rows], marker=marker, color=color, label=f"{level} step ({kind})")
            ax.plot(p, [r.eval_ratio for r in rows], marker=marker, color=color, linestyle="--", alpha=0.6,
                    label=f"{level} eval ({kind})")
    ax.axhline(1.0, color="0.5", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"time / float32 time ({cost.format})")
    ax.set_title("cost of emulation against model size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _n(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else (
        "inf" if not math.isfinite(v) else f"{v:.2e}")


def profile_html(profile=None, cost=None, *, title: str = "boundfinder profile") -> str:
    """One self-contained page for an ``ErrorProfile`` and/or a ``CostTable``."""
    body: list[str] = []
    if profile is not None:
        exp = profile.experiment or {}
        what = f"model {exp.get('model', '?')} on {exp.get('data', '?')}, " if exp else ""
        body.append(f"<p>{html.escape(what)}{profile.n_items} items, level {html.escape(profile.level)}, roles "
                    f"{html.escape(','.join(profile.roles))}, rounding {html.escape(profile.rounding)}. Error: "
                    "||y - y_f64|| / ||y_f64|| per item against a float64 run of the same weights; alone: only that "
                    "layer rounded, every other layer float32.</p>")
        body.append(_img(figure_png(lambda ax: error_plot(profile, ax), figsize=(7.5, 4.8)), "error per layer"))
        header = ["#", "layer", "type", "float32 median"]
        for fmt in profile.formats:
            header += [f"{fmt} median", f"{fmt} p90", f"{fmt} alone"]
        rows = []
        for i, (name, module) in enumerate(zip(profile.layers, profile.modules, strict=True)):
            cells = [str(i), name, module, _n(profile.rows[REFERENCE][i].median)]
            for fmt in profile.formats:
                r = profile.rows[fmt][i]
                cells += [_n(r.median), _n(r.p90), _n(r.alone_median)]
            rows.append((cells, False))
        body += ["<h2>Error layer by layer</h2>", _table(header, rows)]
    if cost is not None:
        body.append("<h2>Cost of emulation</h2>")
        body.append(f"<p>{html.escape(cost.report().splitlines()[0])}</p>")
        body.append(_img(figure_png(lambda ax: cost_plot(cost, ax), figsize=(7.0, 4.4)), "cost ratio"))
        header = ["model", "depth", "width", "params", "level", "step fp32 ms", "step ms", "ratio", "eval fp32 ms",
                  "eval ms", "ratio"]
        rows = [([r.kind, str(r.depth), str(r.width), str(r.parameters), r.level, f"{r.step_fp32_ms:.3f}",
                  f"{r.step_ms:.3f}", f"{r.step_ratio:.2f}x", f"{r.eval_fp32_ms:.3f}", f"{r.eval_ms:.3f}",
                  f"{r.eval_ratio:.2f}x"], False) for r in cost.rows]
        body.append(_table(header, rows))
    return _page(title, body)


def log_profile(profile=None, cost=None, *, tracking_uri: str | None = None, experiment: str = "boundfinder",
                run_name: str | None = None, params: dict[str, Any] | None = None, run_id: str | None = None) -> str:
    """Log an ``ErrorProfile`` and/or a ``CostTable`` as one MLflow run (``run_id``: one opened before the work by
    ``start_run``); returns the run id."""
    metrics: list[tuple[str, float, int]] = []
    run_params: dict[str, Any] = {"kind": "profile"}
    artifacts: dict[str, bytes | str] = {}
    note = []
    if profile is not None:
        run_params |= {"level": profile.level, "rounding": profile.rounding, "roles": ",".join(profile.roles),
                       "formats": ",".join(profile.formats), "items": profile.n_items, "layers": len(profile.layers),
                       **_experiment_params(profile)}
        for fmt in (REFERENCE, *profile.formats):
            key = _metric_key(fmt)
            for i, row in enumerate(profile.rows[fmt]):
                for name, v in (("error_median", row.median), ("error_p90", row.p90),
                                ("error_alone_median", row.alone_median)):
                    if v is not None and _finite(v) and not (fmt == REFERENCE and name != "error_median"):
                        metrics.append((f"{name}/{key}", v, i))
        artifacts["error_vs_layer.png"] = figure_png(lambda ax: error_plot(profile, ax), figsize=(7.5, 4.8))
        last = {fmt: profile.rows[fmt][-1].median for fmt in profile.formats}
        note.append(f"profile of {len(profile.layers)} layers at level {profile.level}; last layer's median error: "
                    + ", ".join(f"{f} {_n(v)}" for f, v in last.items()))
    if cost is not None:
        run_params |= {"cost_format": cost.format, "batch_size": cost.batch_size, "repeats": cost.repeats,
                       "steps": cost.steps, "threads": cost.threads, "device": cost.device}
        for r in cost.rows:
            model = f"{r.kind}_d{r.depth}_w{r.width}"
            metrics += [(f"step_ratio/{r.level}/{model}", r.step_ratio, 0),
                        (f"eval_ratio/{r.level}/{model}", r.eval_ratio, 0)]
        artifacts["cost_ratio.png"] = figure_png(lambda ax: cost_plot(cost, ax), figsize=(7.0, 4.4))
        note.append(f"cost of {len(cost.rows)} (model, level) rows under {cost.format}")
    summary = {"error_profile": None if profile is None else profile.summary(),
               "cost": None if cost is None else cost.summary()}
    artifacts["summary.json"] = json.dumps(summary, indent=2)
    artifacts["report.html"] = profile_html(profile, cost, title=run_name or "boundfinder profile")
    return _log(tracking_uri, experiment, run_name, params={**run_params, **(params or {})}, metrics=metrics,
                tags={"mlflow.note.content": "; ".join(note), "boundfinder.kind": "profile",
                      "boundfinder.status": "ok"},
                artifacts=artifacts, run_id=run_id)
