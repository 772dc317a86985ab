"""Self-contained HTML reports of a sweep or a search: one file, charts embedded as PNG data, no external resources.

The charts are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``: building a
report changes no global plotting state and needs no display.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np

__all__ = ["figure_png", "search_html", "search_plot", "sensitivity_html", "sensitivity_plot", "sensitivity_png",
           "sweep_html"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 0.25em 0.7em; text-align: right; }
th { border-bottom: 1px solid #888; } tr.safe td { background: #eef8ee; } td.text { text-align: left; }
.verdict { font-size: 1.1em; padding: 0.6em 0.8em; background: #f3f3f7; border-left: 4px solid #557; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
footer { margin-top: 2em; color: #888; font-size: 0.8em; }
"""


def figure_png(draw: Callable[[Any], None], *, figsize: tuple[float, float] = (6.4, 4.0), dpi: int = 110) -> bytes:
    """PNG bytes of one chart: ``draw(ax)`` fills a fresh axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot())
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _page(title: str, body: list[str]) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>", *body,
        f"<footer>boundfinder report, {stamp}</footer>", "</body></html>",
    ])


def _table(header: list[str], rows: list[tuple[list[str], bool]], text_columns: int = 0) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for cells, safe in rows:
        tds = [f'<td class="text">{html.escape(c)}</td>' if i >= len(cells) - text_columns else
               f"<td>{html.escape(c)}</td>" for i, c in enumerate(cells)]
        out.append(f'<tr{" class=safe" if safe else ""}>' + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "–" if v is None or not np.isfinite(v) else format(v, fmt)


def _experiment_html(result) -> str:
    """What was measured and what the claim covers: model class, data, checkpoint, score."""
    exp = getattr(result, "experiment", None) or {}
    warning = getattr(result, "baseline_warning", None)
    warned = f'<p class="warning"><b>{html.escape(warning)}</b></p>' if warning else ""
    if not exp:
        return warned
    ckpt = exp.get("checkpoint")
    parts = [f"model <b>{html.escape(str(exp.get('model')))}</b> ({html.escape(str(exp.get('model_class')))})",
             f"data {html.escape(str(exp.get('data')))}",
             f"checkpoint {html.escape(ckpt)}" if ckpt else "trained from seeds",
             f"score {html.escape(str(exp.get('score')))}"
             + (f" ({html.escape(str(exp.get('metric')))}, {'higher' if exp.get('higher_is_better') else 'lower'} is "
                "better)" if exp.get("metric") not in (None, "accuracy") else "")]
    claim = getattr(result, "claim", "")
    return (warned + f'<p class="experiment">{"; ".join(parts)}</p>'
            + (f"<p>the confidence statement covers {html.escape(claim)}</p>" if claim else ""))


def _models(seeds) -> str:
    return f"{len(seeds)} seeds" if seeds else "the given trained model"


def sweep_html(sweep, bound, *, title: str) -> str:
    """The report of a sweep (``SweepResult``) and its bound (``BoundEstimate``)."""
    lo, hi = bound.ci
    verdict = (f"minimum safe bits: <b>{bound.bits}</b> ({html.escape(bound.status)}; {bound.confidence:.0%} CI "
               f"[{'–' if lo is None else lo}, {'above range' if hi is None else hi}])")
    metric = getattr(bound, "metric", "accuracy")
    continuous = getattr(bound, "continuous", False)
    num = ".4g" if continuous else ".4f"
    rows = [([str(lv.bits), fmt, _num(lv.accuracy, num), _num(lv.drop, num), _num(lv.upper, num),
              "yes" if lv.declared_safe else "no"], lv.declared_safe)
            for lv, fmt in zip(bound.levels, sweep.formats, strict=True)]
    if continuous:
        measured = (f"full-precision {metric} {sweep.baseline_accuracy:.6g} ({bound.direction}); tolerance "
                    f"{bound.tolerance:g} ({bound.drop_units} {bound.drop_name})")
    else:
        measured = f"full-precision accuracy {sweep.baseline_accuracy:.4f}; tolerance {bound.tolerance:g}"
    body = [
        f'<p class="verdict">{verdict}</p>', f"<p>{html.escape(bound.reason)}</p>", _experiment_html(sweep),
        f"<p>family {html.escape(sweep.family)}, level {html.escape(sweep.level)}, roles "
        f"{html.escape(', '.join(sweep.roles))}; {sweep.correct.shape[2]} test items × {_models(sweep.seeds)}; "
        f"{html.escape(measured)}, method {html.escape(bound.method)}</p>",
        *([f"<p>training diverged (NaN or infinite loss; the fit stopped there and the model was measured as it "
           f"was) for {len(sweep.diverged)} model(s): "
           + "; ".join(html.escape(f"{d['format']} seed {d['seed']} at epoch {d['epoch']}, batch {d['batch']}")
                       for d in sweep.diverged) + "</p>"] if sweep.diverged else []),
        f"<h2>{html.escape(metric.capitalize())} against bits</h2>", _img(figure_png(bound.plot),
                                                                          f"{metric} against bits"),
        "<h2>Levels</h2>", _table(["bits", "format", metric, bound.drop_name if continuous else "drop",
                                   "upper bound", "declared safe"], rows),
        "<h2>Text report</h2>", f"<pre>{html.escape(bound.report())}</pre>",
    ]
    return _page(title, body)


def search_plot(result, ax) -> Any:
    """Test drop (with its upper confidence bound) against cost for each candidate of a search."""
    conf = result.confirmation
    cost = np.array([c.cost for c in result.candidates])
    drop = np.array([lv.drop for lv in conf.levels])
    upper = np.array([lv.upper for lv in conf.levels])
    safe = np.array([lv.declared_safe for lv in conf.levels])
    ax.errorbar(cost, drop, yerr=[np.zeros_like(drop), np.clip(upper - drop, 0, None)], fmt="none", ecolor="gray",
                capsize=3, label=f"upper bound ({conf.confidence:.0%})")
    ax.scatter(cost[safe], drop[safe], color="C2", zorder=3, label="declared safe")
    ax.scatter(cost[~safe], drop[~safe], color="C3", zorder=3, label="not certified")
    val = np.array([c.val_drop for c in result.candidates])
    word = result.drop_name if getattr(result, "continuous", False) else "drop"
    ax.scatter(cost, val, marker="x", color="C0", label=f"validation {word}")
    ax.axhline(conf.tolerance, color="C3", lw=1, ls="--", label=f"tolerance {conf.tolerance:g}")
    if result.chosen is not None:
        ax.axvline(result.chosen.cost, color="C2", lw=1.2, label="chosen")
    ax.set_xlabel(result.cost_label)
    ax.set_ylabel(f"{result.metric} {word}" if getattr(result, "continuous", False) else "accuracy drop")
    ax.legend(fontsize=8)
    return ax


def search_html(result, *, title: str) -> str:
    """The report of a search (``SearchResult``): the candidates, their test bounds and the choice."""
    conf = result.confirmation
    verdict = "not confirmed on test items" if conf is None else "no configuration certified"
    if result.chosen is not None:
        verdict = (f"chosen: <b>{html.escape(result.chosen.describe())}</b> ({result.chosen.cost:.3f} "
                   f"{html.escape(result.cost_label)})")
    body = [f'<p class="verdict">{verdict}</p>', f"<p>{html.escape(result.reason)}</p>", _experiment_html(result),
            f"<p>study {html.escape(result.study_name)} in {html.escape(result.storage)}; family "
            f"{html.escape(result.family)}; {result.n_configurations} configurations measured; groups "
            f"{html.escape(', '.join(result.groups))}"
            + (f"; switch epochs {list(result.switch_points)} of {result.epochs}" if result.switch_points else "")
            + "</p>"]
    if conf is not None:
        continuous = getattr(result, "continuous", False)
        num = ".4g" if continuous else ".4f"
        word = (f"{result.metric} {result.drop_name}" if continuous else "drop")
        rows = [([_num(c.cost, ".3f" if result.cost_kind == "bits" else ".4g"), _num(c.val_drop, num),
                  _num(lv.drop, num), _num(lv.upper, num), "yes" if lv.declared_safe else "no", c.origin,
                  c.describe()], lv.declared_safe)
                for c, lv in reversed(list(zip(result.candidates, conf.levels, strict=True)))]
        if result.confirm_seeds:
            models = f"{conf.n_seeds} fresh seeds"
        elif result.experiment.get("trained"):
            models = "the given trained model"
        else:
            models = f"the search's {conf.n_seeds} trained model{'s' if conf.n_seeds != 1 else ''}"
        how = ("from the most expensive down" if result.procedure == "fixed_cost"
               else f"by the {result.procedure} procedure")
        body += ["<h2>Candidates against cost</h2>", _img(figure_png(lambda ax: search_plot(result, ax)),
                                                          "test drop against cost"),
                 f"<h2>Candidates</h2><p>the uniform configurations and the validation Pareto front (strategy "
                 f"{html.escape(result.strategy)}), tested on {conf.n_items} test items × {html.escape(models)}, "
                 f"{how} ({html.escape(conf.method)}, {conf.confidence:.0%} confidence"
                 + (f"; {html.escape(result.metric)}, {'higher' if result.higher_is_better else 'lower'} is better, "
                    f"tolerance {conf.tolerance:g} {html.escape(result.drop_name)}" if continuous else "")
                 + f"); cost: {html.escape(result.cost_label)}</p>",
                 _table(["cost", f"val {word}", f"test {word}", "upper bound", "declared safe", "origin",
                         "configuration"], rows, text_columns=2)]
    body += ["<h2>Text report</h2>", f"<pre>{html.escape(result.report())}</pre>"]
    return _page(title, body)


def sensitivity_plot(result, ax) -> Any:
    """Minimum safe bits of each (layer, role) with its confidence interval; cells without a bound are marked."""
    cells = result.cells
    y = np.arange(len(cells))[::-1]
    top = max(result.bits)
    for yi, c in zip(y, cells, strict=True):
        lo, hi = c.bound.ci
        if lo is not None:  # None: every tested width is confidently unsafe, the bound lies above the range
            hi = top + 0.5 if hi is None else hi
            ax.plot([lo, hi], [yi, yi], color="gray", lw=3, alpha=0.5, solid_capstyle="butt")
        if c.bound.bits is not None:
            ax.scatter([c.bound.bits], [yi], color="C0", zorder=3)
        else:
            ax.scatter([top + 0.5], [yi], marker=">", color="C3", zorder=3)
    ax.set_yticks(y, [f"{c.layer} · {c.role}" for c in cells], fontsize=8)
    ax.set_xlabel(f"minimum safe bits of {result.family}")
    level = f"{result.confidence:.0%} {'simultaneous' if result.simultaneous else 'per bound'}"
    ax.set_title(f"bound (dot) and {level} interval (bar)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return ax


def sensitivity_png(result) -> bytes:
    """The sensitivity chart as PNG, one row per cell."""
    return figure_png(lambda ax: sensitivity_plot(result, ax), figsize=(6.4, 1.2 + 0.32 * len(result.cells)))


def _sensitivity_measured(result) -> str:
    """``full-precision accuracy 0.9621; tolerance 0.01``, or the metric with its direction and tolerance kind."""
    if not getattr(result, "continuous", False):
        return (f"full-precision accuracy {result.baseline_accuracy:.4f}; tolerance {result.tolerance:g}"
                + (" (relative)" if getattr(result, "relative", False) else ""))
    return (f"full-precision {result.metric} {result.baseline_accuracy:.6g} ({result.direction}); tolerance "
            f"{result.tolerance:g} ({'relative' if result.relative else 'absolute'} {result.metric} "
            f"{'drop' if result.higher_is_better else 'increase'})")


def sensitivity_html(result, *, title: str) -> str:
    """The report of a per-layer, per-role sensitivity analysis (``SensitivityResult``)."""
    rows = []
    for c in result.cells:
        b = c.bound
        lo, hi = b.ci
        fmt = "" if b.bits is None else c.sweep.formats[c.sweep.bits.index(b.bits)]
        rows.append(([c.layer, c.role, "–" if b.bits is None else str(b.bits),
                      f"[{'–' if lo is None else lo}, {'above range' if hi is None else hi}]", b.status, fmt],
                     b.bits is not None))
    body = [
        f'<p class="verdict">minimum safe bits of {html.escape(result.family)} per layer and role, each alone '
        f"(everything else at full precision)</p>", _experiment_html(result),
        f"<p>{result.confidence:.0%} confidence "
        + (f"for all {len(result.cells)} bounds together (each at {result.per_bound_confidence:.4g}, Bonferroni)"
           if result.simultaneous else "for each bound on its own")
        + f"; {result.level} level; "
        + (f"seeds {html.escape(str(list(result.seeds)))}" if result.seeds else "the given trained model")
        + "; " + html.escape(_sensitivity_measured(result)) + "</p>",
        _img(sensitivity_png(result), "minimum safe bits"),
        "<h2>Cells</h2>",
        _table(["layer", "role", "min safe bits", "CI", "status", "format"], rows),
        "<h2>Text report</h2>", f"<pre>{html.escape(result.report())}</pre>",
    ]
    return _page(title, body)
