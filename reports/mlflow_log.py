"""Logging sweeps and searches to MLflow: one run each, with parameters, metrics, charts and the HTML report.

The tracking store is the embedded SQLite file ``sqlite:///mlflow.db`` unless a URI is given (a tracking
server ``http://host:5000``, another database). Artifacts of a SQLite store go next to its file, in
``mlartifacts/``. MLflow is the browsing layer: every figure logged here also lives in the result objects (and in
the Optuna storage for a search), so a failed logging call loses nothing that cannot be logged again.

What a run holds:

* sweep: params (family, level, roles, seeds, items, tolerance, confidence, method, ...); metrics ``accuracy``,
  ``drop`` and ``drop_upper`` with the bit width as their step (MLflow's charts then plot them against bits),
  and the bound as metrics ``min_safe_bits``, ``min_safe_bits_ci_low``, ``min_safe_bits_ci_high``,
  ``baseline_accuracy``, ``min_detectable_drop``; tags ``boundfinder.status`` and ``boundfinder.reason``;
  artifacts ``summary.json``, ``accuracy_vs_bits.png``, ``report.html``. For a continuous score the metrics are
  named for it (``nll`` here): ``nll_at_bits``, ``nll_drop``, ``nll_drop_upper``, ``baseline_nll``,
  ``min_detectable_nll_drop`` (the drop in the metric's direction: a loss's increase), params ``metric`` and
  ``higher_is_better``, artifact ``nll_vs_bits.png``; the bound's metrics are as above.
* sensitivity: ``baseline_accuracy`` and ``accuracy/<layer>/<role>`` per bit width (``baseline_nll``,
  ``nll_at_bits/<layer>/<role>`` for a continuous score), ``min_safe_bits/<layer>/<role>``, ``ci_low/...``,
  ``ci_high/...``.
* search: params (study, storage, family, groups, ...); metrics ``candidate_cost``, ``candidate_val_drop``,
  ``candidate_test_drop`` and ``candidate_test_upper`` with the candidate's rank as step, ``chosen_cost``,
  ``chosen_test_drop``, ``chosen_test_upper``, ``chosen_bits/<group>`` (and ``chosen_switch_epoch`` in a
  switching search); the same tags and artifacts. Nested under it, one run per configuration the study measured:
  params ``bits/<group>`` (``switch_epoch``) and ``configuration``; metrics ``cost``, ``val_drop``, and for the
  candidates ``candidate_rank``, ``test_drop``, ``test_upper``, ``declared_safe``; tags ``boundfinder.trial``,
  ``boundfinder.candidate``, ``boundfinder.chosen``. A continuous score's search names them for its metric
  (``candidate_val_nll_drop``, ``candidate_test_nll_drop``, ``candidate_test_nll_drop_upper``, ``val_nll_drop``,
  ...) and logs params ``metric``, ``higher_is_better`` and ``relative``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from boundfinder.errors import BoundfinderError

__all__ = ["DEFAULT_TRACKING_URI", "check_tracking_uri", "end_run", "log_search", "log_sensitivity", "log_sweep",
           "start_run"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def check_tracking_uri(uri: str | None, *, timeout: float = 5.0, open_store: bool = False) -> str:
    """The tracking URI to use, checked before any work is done: ``uri``, else ``$MLFLOW_TRACKING_URI``, else
    the embedded default.

    A server (``http://``, ``https://``) must answer its ``/health`` endpoint within ``timeout`` seconds;
    otherwise :class:`BoundfinderError` says which URI and why. With ``open_store``, any other store is opened
    and queried once (a database that cannot be written, a missing driver, an old schema show up here).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            cause = getattr(exc, "reason", exc)
            raise BoundfinderError(f"the MLflow tracking server {uri} is unreachable ({cause}); nothing was run. "
                                   "Start it, or leave the URI out to log to the local sqlite:///mlflow.db.") from exc
    elif "://" not in uri and uri != "databricks":
        raise BoundfinderError(f"an MLflow tracking URI looks like sqlite:///mlflow.db or http://host:5000, but got "
                               f"{uri!r}.")
    elif open_store:
        import mlflow

        try:
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:  # stores raise their own driver's errors (SQLAlchemy, HTTP): each is reported
            raise BoundfinderError(f"cannot open the MLflow store {uri}: {_cause(exc)}; nothing was run.") from exc
    return uri


def _cause(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _metric_key(text: str) -> str:
    """MLflow metric names allow letters, digits and ``_ - . / space``; layer patterns may hold ``*`` or ``?``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def start_run(*, tracking_uri: str | None = None, experiment: str = "boundfinder", run_name: str | None = None,
              kind: str) -> str:
    """Open a run before the work it will report (training included), so that its start and end times span the
    work; ``log_sweep`` / ``log_search`` / ``log_sensitivity`` with ``run_id=`` fill and finish it, and
    :func:`end_run` closes it as FAILED or KILLED when the work stops. Returns the run id."""
    import mlflow

    uri = check_tracking_uri(tracking_uri)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.create_run(_experiment(client, uri, experiment), run_name=run_name,
                                tags={"boundfinder.kind": kind, "boundfinder.status": "running",
                                      "mlflow.note.content": "running"})
    except Exception as exc:  # stores raise their own driver's errors: each becomes one message
        raise BoundfinderError(f"logging to MLflow at {uri} failed: {_cause(exc)}; nothing was run.") from exc
    return run.info.run_id


def end_run(run_id: str, *, tracking_uri: str | None = None, status: str = "FAILED", reason: str = "") -> None:
    """Close a run opened by :func:`start_run` whose work did not finish (``FAILED``, or ``KILLED`` on Ctrl-C),
    saying why in its description. Errors of the store are swallowed: the work's own error is the one to see."""
    import mlflow

    with contextlib.suppress(Exception):
        client = mlflow.MlflowClient(tracking_uri=check_tracking_uri(tracking_uri))
        client.set_tag(run_id, "mlflow.note.content", f"{status.lower()}: {reason}" if reason else status.lower())
        client.set_tag(run_id, "boundfinder.status", status.lower())
        client.set_terminated(run_id, status=status)


def _log(uri: str | None, experiment: str, run_name: str | None, *, params: dict[str, Any],
         metrics: list[tuple[str, float, int]], tags: dict[str, str], artifacts: dict[str, bytes | str],
         children: list[dict[str, Any]] = (), run_id: str | None = None) -> str:
    """One run (``run_id``: one opened by :func:`start_run`, else a new one); each of ``children`` (``run_name``,
    ``params``, ``metrics``, ``tags``) becomes a run nested under it (MLflow's ``mlflow.parentRunId`` tag),
    finished before the parent is."""
    import mlflow

    uri = check_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        if run_id is None:
            experiment_id = _experiment(client, uri, experiment)
            run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        else:
            experiment_id = client.get_run(run_id).info.experiment_id
            if run_name:
                client.update_run(run_id, name=run_name)
        _log_batch(client, run_id, params, metrics, tags)
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in artifacts.items():
                path = Path(tmp) / name
                path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
                client.log_artifact(run_id, str(path))
        for child in children:
            child_id = client.create_run(experiment_id, run_name=child["run_name"],
                                         tags={"mlflow.parentRunId": run_id}).info.run_id
            try:
                _log_batch(client, child_id, child["params"], child["metrics"], child["tags"])
            except Exception:
                with contextlib.suppress(Exception):
                    client.set_terminated(child_id, status="FAILED")
                raise
            client.set_terminated(child_id)
        client.set_terminated(run_id)
    except Exception as exc:  # stores raise their own driver's errors: each becomes one message
        if run_id is not None:
            with contextlib.suppress(Exception):  # a run that could not be finished is marked so, if possible
                client.set_terminated(run_id, status="FAILED")
        raise BoundfinderError(f"logging to MLflow at {uri} failed: {_cause(exc)}") from exc
    return run_id


def _log_batch(client, run_id: str, params: dict[str, Any], metrics: list[tuple[str, float, int]],
               tags: dict[str, str]) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, float(value), now, int(step)) for key, value, step in metrics],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        tags=[RunTag(k, str(v)[:8000]) for k, v in tags.items()],
    )


def _experiment(client, uri: str, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a SQLite file) or restored when deleted."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        location = None
        if uri.startswith("sqlite:///"):
            # next to the database file, not in whatever folder the process happens to run from
            location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            found = client.get_experiment_by_name(name)  # another process created it first
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def _finite(v) -> bool:
    return v is not None and v == v and abs(v) != float("inf")


def _experiment_params(result) -> dict[str, Any]:
    """The experiment a result measured (model class, data, checkpoint, score) and what its claim covers."""
    exp = getattr(result, "experiment", None) or {}
    out = {k: exp[k] for k in ("model", "model_class", "data", "score") if exp.get(k) is not None}
    if exp:
        out["checkpoint"] = exp.get("checkpoint") or "none (trained from seeds)"
    if getattr(result, "claim", ""):
        out["claim"] = result.claim
    return out


def _metric_names(result) -> dict[str, str]:
    """MLflow metric names of a sweep or sensitivity result: accuracy's for binary scores, else the continuous
    metric's (``nll_at_bits``, ``nll_drop``, ``nll_drop_upper``, ``baseline_nll``, ``min_detectable_nll_drop``)."""
    if not getattr(result, "continuous", False):
        return {k: k for k in ("accuracy", "drop", "drop_upper", "baseline_accuracy", "min_detectable_drop")}
    m = _metric_key(result.metric).replace("/", "_")
    return {"accuracy": f"{m}_at_bits", "drop": f"{m}_drop", "drop_upper": f"{m}_drop_upper",
            "baseline_accuracy": f"baseline_{m}", "min_detectable_drop": f"min_detectable_{m}_drop"}


def log_sweep(sweep, bound, *, tracking_uri: str | None = None, experiment: str = "boundfinder",
              run_name: str | None = None, params: dict[str, Any] | None = None, run_id: str | None = None) -> str:
    """Log a ``SweepResult`` and its ``BoundEstimate`` as one MLflow run (``run_id``: the run
    :func:`start_run` opened before the work); returns the run id. The run's description is the verdict line."""
    from boundfinder.reports.html import figure_png, sweep_html

    names = _metric_names(bound)
    metrics: list[tuple[str, float, int]] = []
    for lv in bound.levels:
        metrics += [(names["accuracy"], lv.accuracy, lv.bits), (names["drop"], lv.drop, lv.bits)]
        if _finite(lv.upper):
            metrics.append((names["drop_upper"], lv.upper, lv.bits))
    for key, value in (("min_safe_bits", bound.bits), ("min_safe_bits_ci_low", bound.ci[0]),
                       ("min_safe_bits_ci_high", bound.ci[1]), (names["baseline_accuracy"], bound.baseline_accuracy),
                       (names["min_detectable_drop"], bound.min_detectable_drop)):
        if _finite(value):
            metrics.append((key, value, 0))
    title = run_name or f"sweep {sweep.family}, {sweep.level} level"
    return _log(
        tracking_uri, experiment, run_name,
        params={"kind": "sweep", "family": sweep.family, "bits": list(sweep.bits), "level": sweep.level,
                "roles": ",".join(sweep.roles), "seeds": list(sweep.seeds), "items": int(sweep.correct.shape[2]),
                "tolerance": bound.tolerance, "confidence": bound.confidence, "method": bound.method,
                "relative": bound.relative,
                **({"metric": bound.metric, "higher_is_better": bound.higher_is_better} if bound.continuous else {}),
                **_experiment_params(sweep), **(params or {})},
        metrics=metrics, run_id=run_id,
        tags={"mlflow.note.content": bound.report().splitlines()[0],
              "boundfinder.kind": "sweep", "boundfinder.status": bound.status, "boundfinder.reason": bound.reason,
              "boundfinder.diverged": "; ".join(f"{d['format']} seed {d['seed']} at epoch {d['epoch']} batch "
                                                f"{d['batch']}" for d in sweep.diverged) or "none"},
        artifacts={"summary.json": json.dumps({"sweep": sweep.summary(), "bound": bound.summary()}, indent=2),
                   f"{names['accuracy'].removesuffix('_at_bits')}_vs_bits.png": figure_png(bound.plot),
                   "report.html": sweep_html(sweep, bound, title=title)},
    )


def _search_key(result, key: str) -> str:
    """A search metric's MLflow name: as given for accuracy; for a continuous score named for its metric
    (``candidate_test_drop`` -> ``candidate_test_nll_drop``, ``test_upper`` -> ``test_nll_drop_upper``)."""
    if not getattr(result, "continuous", False):
        return key
    m = _metric_key(result.metric).replace("/", "_")
    return key.replace("_upper", f"_{m}_drop_upper") if key.endswith("_upper") else key.replace("drop", f"{m}_drop")


def log_search(result, *, tracking_uri: str | None = None, experiment: str = "boundfinder",
               run_name: str | None = None, params: dict[str, Any] | None = None, run_id: str | None = None) -> str:
    """Log a ``SearchResult`` as one MLflow run (``run_id``: the run :func:`start_run` opened before the work);
    returns the run id. The run's description is the verdict line."""
    from boundfinder.reports.html import figure_png, search_html, search_plot

    metrics: list[tuple[str, float, int]] = [("n_configurations", result.n_configurations, 0)]
    conf = result.confirmation
    artifacts: dict[str, bytes | str] = {"summary.json": json.dumps(result.summary(), indent=2)}
    if conf is not None:
        for rank, (cand, lv) in enumerate(zip(result.candidates, conf.levels, strict=True)):
            metrics += [("candidate_cost", cand.cost, rank), (_search_key(result, "candidate_test_drop"), lv.drop,
                                                               rank)]
            metrics += [(_search_key(result, k), v, rank) for k, v in (("candidate_val_drop", cand.val_drop),
                                                                       ("candidate_test_upper", lv.upper))
                        if _finite(v)]
        artifacts["candidates.png"] = figure_png(lambda ax: search_plot(result, ax))
    if result.chosen is not None:
        k = result.candidates.index(result.chosen)
        metrics += [("chosen_cost", result.chosen.cost, 0),
                    (_search_key(result, "chosen_test_drop"), conf.levels[k].drop, 0),
                    (_search_key(result, "chosen_test_upper"), conf.levels[k].upper, 0)]
        keys = _group_keys(result.chosen.bits)
        metrics += [(f"chosen_bits/{keys[g]}", b, 0) for g, b in result.chosen.bits.items()]
        if result.chosen.switch is not None:
            metrics.append(("chosen_switch_epoch", result.chosen.switch, 0))
    artifacts["report.html"] = search_html(result, title=run_name or f"search {result.study_name}")
    return _log(
        tracking_uri, experiment, run_name,
        params={"kind": "search", "study": result.study_name, "storage": result.storage, "family": result.family,
                "groups": ",".join(result.groups), "confirm_seeds": list(result.confirm_seeds),
                "strategy": result.strategy, "claim_kind": result.claim_kind, "procedure": result.procedure,
                "cost": result.cost_kind, "per_role": result.per_role,
                **({"switch_points": list(result.switch_points), "epochs": result.epochs}
                   if result.switch_points else {}),
                **({"tolerance": conf.tolerance, "confidence": conf.confidence, "method": conf.method}
                   if conf is not None else {}),
                **({"metric": result.metric, "higher_is_better": result.higher_is_better,
                    "relative": result.relative} if getattr(result, "continuous", False) else {}),
                **_experiment_params(result), **(params or {})},
        metrics=metrics, run_id=run_id,
        tags={"mlflow.note.content": _search_verdict(result),
              "boundfinder.kind": "search", "boundfinder.reason": result.reason,
              "boundfinder.status": "not confirmed" if conf is None else conf.status,
              "boundfinder.chosen": "" if result.chosen is None else result.chosen.describe()},
        artifacts=artifacts,
        children=_configuration_runs(result),
    )


def _search_verdict(result) -> str:
    if result.chosen is not None:
        return f"chosen: {result.chosen.describe()} ({result.chosen.cost:.3f} {result.cost_label})"
    if result.confirmation is None:
        return f"{result.n_configurations} configurations measured, not certified"
    return f"no configuration certified: {result.reason}"


def _group_keys(groups) -> dict[str, str]:
    """A metric/param name per layer group; "fc.*" and "fc.?" both read "fc._" and must not overwrite each other."""
    keys: dict[str, str] = {}
    for i, g in enumerate(groups):
        key = _metric_key(g)
        keys[g] = key if key not in keys.values() else f"{key}_{i}"
    return keys


def _configuration_runs(result) -> list[dict[str, Any]]:
    """A nested run per configuration the search measured: its bit widths (and switch epoch) as params, its cost
    and validation drop as metrics, and for a candidate of the certification its test figures, so MLflow's
    run comparison charts the whole study."""

    def key(c) -> tuple:
        return tuple(c.bits.values()), c.switch

    levels = result.confirmation.levels if result.confirmation is not None else ()
    ranks = {key(c): k for k, c in enumerate(result.candidates)}
    measured = {key(c) for c in result.configurations}
    # a candidate the study never measured (the widest configuration appended to the chain) gets its run too
    runs = []
    for c in (*result.configurations, *(c for c in result.candidates if key(c) not in measured)):
        names = _group_keys(c.bits)
        params = {f"bits/{names[g]}": b for g, b in c.bits.items()} | (
            {} if c.switch is None else {"switch_epoch": c.switch}) | {"configuration": c.describe()}
        metrics = [("cost", c.cost, 0)] + ([(_search_key(result, "val_drop"), c.val_drop, 0)]
                                           if _finite(c.val_drop) else [])
        rank = ranks.get(key(c))
        lv = levels[rank] if rank is not None and rank < len(levels) else None
        if lv is not None:
            metrics += [("candidate_rank", rank, 0), (_search_key(result, "test_drop"), lv.drop, 0),
                        ("declared_safe", lv.declared_safe, 0)]
            metrics += [(_search_key(result, "test_upper"), lv.upper, 0)] if _finite(lv.upper) else []
        chosen = result.chosen is not None and key(c) == key(result.chosen)
        name = f"trial {c.trial}" if c.trial is not None else "not measured on validation"
        runs.append({"run_name": f"{result.study_name} {name}", "params": params, "metrics": metrics,
                     "tags": {"boundfinder.kind": "search-configuration",
                              "boundfinder.trial": "" if c.trial is None else c.trial,
                              "boundfinder.candidate": "yes" if lv is not None else "no",
                              "boundfinder.chosen": "yes" if chosen else "no"}})
    return runs


def log_sensitivity(result, *, tracking_uri: str | None = None, experiment: str = "boundfinder",
                    run_name: str | None = None, params: dict[str, Any] | None = None,
                    run_id: str | None = None) -> str:
    """Log a ``SensitivityResult`` as one MLflow run (``run_id``: the run :func:`start_run` opened before the
    work); returns the run id. The run's description lists the minimum safe bits of every cell."""
    from boundfinder.reports.html import sensitivity_html, sensitivity_png

    layers = _group_keys(dict.fromkeys(c.layer for c in result.cells))
    names = _metric_names(result)
    metrics: list[tuple[str, float, int]] = [(names["baseline_accuracy"], result.baseline_accuracy, 0)]
    for c in result.cells:
        key = f"{layers[c.layer]}/{c.role}"
        lo, hi = c.bound.ci
        metrics += [(f"{name}/{key}", v, 0) for name, v in (("min_safe_bits", c.bound.bits), ("ci_low", lo),
                                                            ("ci_high", hi)) if v is not None]
        metrics += [(f"{names['accuracy']}/{key}", float(a), int(b)) for b, a in zip(c.sweep.bits, c.sweep.accuracy,
                                                                                      strict=True)]
    title = run_name or f"sensitivity {result.family}"
    return _log(
        tracking_uri, experiment, run_name,
        params={"kind": "sensitivity", "family": result.family, "bits": list(result.bits), "level": result.level,
                "seeds": list(result.seeds), "confidence": result.confidence, "simultaneous": result.simultaneous,
                "per_bound_confidence": result.per_bound_confidence, "tolerance": result.tolerance,
                "cells": len(result.cells),
                **({"metric": result.metric, "higher_is_better": result.higher_is_better,
                    "relative": result.relative} if result.continuous else {}),
                **_experiment_params(result), **(params or {})},
        metrics=metrics, run_id=run_id,
        tags={"mlflow.note.content": _sensitivity_verdict(result), "boundfinder.kind": "sensitivity",
              "boundfinder.status": ",".join(sorted({c.bound.status for c in result.cells}))},
        artifacts={"summary.json": json.dumps(result.summary(), indent=2),
                   "min_safe_bits.png": sensitivity_png(result),
                   "report.html": sensitivity_html(result, title=title)},
    )


def _sensitivity_verdict(result) -> str:
    cells = ", ".join(f"{c.layer}/{c.role} {'-' if c.bound.bits is None else c.bound.bits}" for c in result.cells)
    together = "together" if result.simultaneous else "each"
    metric = f", {result.metric} {result.direction}" if getattr(result, "continuous", False) else ""
    return f"minimum safe bits ({result.confidence:.0%} {together}{metric}): {cells}"
