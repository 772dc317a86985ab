"""Self-contained HTML reports: one file that opens anywhere, charts embedded, text escaped."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re

import matplotlib.pyplot as plt

from boundfinder.reports.html import search_html, sweep_html


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _self_contained(page: str) -> bool:
    # no script, stylesheet, image or link fetched from elsewhere
    return not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page


def test_sweep_report_embeds_its_chart_and_states_the_bound(sweep_and_bound):
    sweep, bound = sweep_and_bound
    before = plt.get_fignums()
    page = sweep_html(sweep, bound, title="digits <mlp> & e8m{b}")
    assert plt.get_fignums() == before  # drawn without pyplot's global figures
    assert page.startswith("<!DOCTYPE html>") and _self_contained(page)
    images = _images(page)
    assert len(images) == 1 and images[0].startswith(b"\x89PNG\r\n\x1a\n")
    assert "<title>digits &lt;mlp&gt; &amp; e8m{b}</title>" in page
    assert bound.status == "ok" and f"minimum safe bits: <b>{bound.bits}</b>" in page
    # one table row per level, the declared-safe ones marked
    assert page.count("<tr class=safe>") == sum(lv.declared_safe for lv in bound.levels)
    for name in sweep.formats:
        assert f"<td>{name}</td>" in page
    assert "training diverged" not in page
    failed = dataclasses.replace(sweep, diverged=({"format": "e8m1", "seed": 1, "epoch": 0, "batch": 3, "step": 4,
                                                   "loss": float("nan")},))
    assert "for 1 model(s): e8m1 seed 1 at epoch 0, batch 3" in sweep_html(failed, bound, title="t")


def test_search_report_lists_every_candidate_with_its_verdict(search_result):
    page = search_html(search_result, title="search sim")
    assert _self_contained(page) and len(_images(page)) == 1
    assert search_result.chosen is not None
    assert f"chosen: <b>{search_result.chosen.describe()}</b>" in page
    for cand in search_result.candidates:
        assert f'<td class="text">{cand.describe()}</td>' in page
    assert page.count("<tr class=safe>") == sum(lv.declared_safe for lv in search_result.confirmation.levels)


def test_search_report_without_a_choice_escapes_its_reason_and_its_summary_is_strict_json(search_result):
    widest = dataclasses.replace(search_result.candidates[-1], val_drop=math.nan)  # never measured on validation
    bare = dataclasses.replace(search_result, chosen=None, reason="<b>upper</b> bound > tolerance & more",
                               candidates=(*search_result.candidates[:-1], widest))
    page = search_html(bare, title="t")
    assert "no configuration certified" in page and "&lt;b&gt;upper&lt;/b&gt; bound &gt; tolerance &amp; more" in page
    assert json.loads(json.dumps(bare.summary(), allow_nan=False))["candidates"][-1]["val_drop"] is None
    unconfirmed = dataclasses.replace(bare, confirmation=None, candidates=())
    assert "not confirmed on test items" in search_html(unconfirmed, title="t")


def test_search_report_of_a_switching_search_names_its_epochs_and_cost(search_result):
    cands = tuple(dataclasses.replace(c, switch=s, epochs=10) for c, s in zip(search_result.candidates,
                                                                              (10, 10, 5, 0), strict=True))
    switching = dataclasses.replace(search_result, candidates=cands, switch_points=(0, 5, 10), epochs=10,
                                    chosen=cands[search_result.candidates.index(search_result.chosen)])
    page = search_html(switching, title="t")
    assert "switch epochs [0, 5, 10] of 10" in page and "mean bits per parameter over training" in page
    assert "features.*=e8m1 classifier=e8m8 training throughout" in page
    assert "features.*=e8m4 classifier=e8m8 before epoch 5, fp32 from it on" in page
    assert "fp32 training throughout" in page
    assert json.loads(json.dumps(switching.summary()))["cost_label"] == "mean bits per parameter over training"


def test_sensitivity_report_draws_every_cell_and_tabulates_its_bound(sweep_and_bound):
    from boundfinder.reports.html import sensitivity_html
    from boundfinder.search.sensitivity import sensitivity_table

    sweep, _ = sweep_and_bound
    table = sensitivity_table([("features.*", "weight", sweep), ("classifier", "activation", sweep)])
    page = sensitivity_html(table, title="sensitivity <sim>")
    assert _self_contained(page) and len(_images(page)) == 1
    assert "<title>sensitivity &lt;sim&gt;</title>" in page and "each at 0.975, Bonferroni" in page
    for c in table.cells:
        assert f"<td>{c.layer}</td><td>{c.role}</td><td>{c.bound.bits}</td>" in page
    assert page.count("<tr class=safe>") == sum(c.bound.bits is not None for c in table.cells)


def test_sensitivity_chart_draws_no_interval_below_a_bound_above_the_range(sweep_and_bound):
    from matplotlib.figure import Figure

    from boundfinder.reports.html import sensitivity_html, sensitivity_plot
    from boundfinder.search.sensitivity import sensitivity_table

    sweep, _ = sweep_and_bound
    table = sensitivity_table([("a", "weight", sweep), ("b", "weight", sweep)])
    # cell b: every tested width confidently unsafe (ci low None): only the "above the range" marker
    above = dataclasses.replace(table.cells[1], bound=dataclasses.replace(table.cells[1].bound, bits=None,
                                                                          ci=(None, None), status="above_range"))
    table = dataclasses.replace(table, cells=(table.cells[0], above))
    ax = sensitivity_plot(table, Figure().add_subplot())
    assert len(ax.lines) == 1  # the interval bar of cell a alone
    assert "[–, above range]" in sensitivity_html(table, title="t")
