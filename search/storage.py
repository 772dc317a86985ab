"""Optuna storages for searches: one machine (SQLite or a journal file) or many workers (PostgreSQL).

The storage is the source of truth of a search: every finished trial, with its per-item measurements, lives
there, so a search that is stopped, killed or run by several workers at once loses nothing already measured.

* ``None``: in memory (this process only; nothing survives it).
* ``sqlite:///search.db``, ``postgresql://user:password@host:5432/db`` (any SQLAlchemy URL Optuna accepts):
  an ``RDBStorage`` with a heartbeat. A worker that dies mid-trial (killed, machine lost) stops beating; once
  ``grace_period`` seconds have passed, the next trial any worker starts marks that trial ``FAIL`` and queues
  a retry with the same parameters (at most ``max_retry`` times per configuration).
* a path ending in ``.log`` or ``.jsonl``: an Optuna journal file (several processes on one file system can share
  it). Journal storages have no heartbeat: the trial of a killed worker stays ``RUNNING`` and is not retried.
"""

from __future__ import annotations

import random
import re
import time
import warnings
from typing import TYPE_CHECKING, NoReturn

from boundfinder.errors import BoundfinderError

if TYPE_CHECKING:
    import optuna

__all__ = ["mask_url", "open_storage"]

_JOURNAL_SUFFIXES = (".log", ".jsonl")
# what two workers that create the tables of a fresh database at the same moment see: a table or row the other
# has just written (SQLite, PostgreSQL), or SQLite's lock while the other writes
_SCHEMA_RACE = re.compile(r"already exists|UNIQUE constraint failed|duplicate key|database is locked", re.I)
_SCHEMA_ATTEMPTS = 6


def mask_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***``, for messages and reports.

    >>> mask_url("postgresql://search:s3cret@127.0.0.1:5432/studies")
    'postgresql://search:***@127.0.0.1:5432/studies'
    """
    if url is None:
        return "in-memory"
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def open_storage(
    url: str | None,
    *,
    heartbeat_interval: float = 30.0,
    grace_period: float | None = None,
    max_retry: int = 2,
) -> optuna.storages.BaseStorage | None:
    """The Optuna storage behind ``url`` (see the module docstring), connected and checked.

    ``heartbeat_interval``: seconds between a running trial's heartbeats (RDB storages);
    ``grace_period``: seconds without a heartbeat after which a trial counts as dead (default: twice the interval);
    ``max_retry``: how many times the configuration of a dead trial is queued again.

    Raises :class:`BoundfinderError` naming the URL (password masked) and the cause when the storage cannot be
    opened: a bad URL, an unreachable server, a missing database driver.
    """
    import optuna

    if heartbeat_interval <= 0 or (grace_period is not None and grace_period <= 0) or max_retry < 0:
        raise BoundfinderError(
            "`heartbeat_interval > 0`, `grace_period > 0` and `max_retry >= 0` must hold, but got "
            f"heartbeat_interval={heartbeat_interval!r}, grace_period={grace_period!r}, max_retry={max_retry!r}."
        )
    if url is None:
        return None
    if not isinstance(url, str) or not url:
        raise BoundfinderError(f"a storage must be a URL or a journal file path, but got {url!r}.")
    if url.endswith(_JOURNAL_SUFFIXES) and "://" not in url:
        try:
            backend = optuna.storages.journal.JournalFileBackend(url)
        except OSError as exc:
            raise BoundfinderError(f"cannot open the journal file {url!r}: {exc}") from exc
        return optuna.storages.JournalStorage(backend)
    if "://" not in url:
        raise BoundfinderError(
            f"a storage must be a database URL (sqlite:///search.db, postgresql://user:pw@host/db) or a journal "
            f"file ending in {' or '.join(_JOURNAL_SUFFIXES)}, but got {url!r}."
        )
    import sqlalchemy.exc

    for attempt in range(_SCHEMA_ATTEMPTS):
        try:
            return _rdb_storage(url, heartbeat_interval, grace_period, max_retry)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            # the tables are created on first use; a worker that loses the race to create them opens the
            # database again once the winner is done
            if attempt + 1 < _SCHEMA_ATTEMPTS and _SCHEMA_RACE.search(str(exc)):
                time.sleep(0.05 * 2**attempt * (1 + random.random()))
                continue
            _raise_open_error(url, exc)
        except (ImportError, OSError, ValueError) as exc:
            _raise_open_error(url, exc)
    raise AssertionError("unreachable")  # every attempt returns or raises


def _rdb_storage(
    url: str, heartbeat_interval: float, grace_period: float | None, max_retry: int
) -> optuna.storages.RDBStorage:
    import optuna

    with warnings.catch_warnings():
        # the heartbeat is marked experimental in Optuna; it is what makes a killed worker's trial retried
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=int(max(1, round(heartbeat_interval))),
            grace_period=None if grace_period is None else int(max(1, round(grace_period))),
            heartbeat_stale_trial_callback=retry,
            # a dropped connection (a restarted server, an idle timeout) is replaced, not fatal to the worker
            engine_kwargs={"pool_pre_ping": True},
        )


def _raise_open_error(url: str, exc: BaseException) -> NoReturn:
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = ""
    if isinstance(exc, ImportError) or "psycopg" in cause:
        hint = " (PostgreSQL needs a driver: pip install 'boundfinder[postgres]', which brings psycopg)"
    raise BoundfinderError(f"cannot open the Optuna storage {mask_url(url)}: {cause}{hint}") from exc
