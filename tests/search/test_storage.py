"""Workers that open a fresh search database at the same moment: every one gets a working storage."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from boundfinder.search.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4

# waits for the go file, then opens the storage and creates a study in it
_OPENER = """
import os, sys, time
from boundfinder.search.storage import open_storage
import optuna
url, go = sys.argv[1], sys.argv[2]
print("ready", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.001)
storage = open_storage(url)
optuna.create_study(storage=storage, study_name="shared", load_if_exists=True)
print("opened", flush=True)
"""


def _open_at_once(url: str, tmp_path: Path) -> list[tuple[int, str]]:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _OPENER, url, str(go)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(WORKERS)]
    for p in procs:  # every worker has imported Optuna and waits: the openings below really overlap
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]  # reads while waiting: a full pipe cannot stall it
    return [(p.returncode, out) for p, out in zip(procs, outs, strict=True)]


def _fresh_postgres_database(postgres_url: str) -> str:
    import psycopg

    name = f"fresh_{time.time_ns()}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_workers_opening_a_fresh_database_at_once_all_succeed(kind, tmp_path, request):
    for rnd in range(3):  # without the retry on a lost schema race, nearly every round lost a worker
        if kind == "postgresql":
            url = _fresh_postgres_database(request.getfixturevalue("postgres_url"))
        else:
            url = f"sqlite:///{tmp_path}/fresh{rnd}.db"
        (tmp_path / f"round{rnd}").mkdir()
        results = _open_at_once(url, tmp_path / f"round{rnd}")
        assert all(code == 0 and "opened" in out for code, out in results), results
        studies = optuna.get_all_study_summaries(open_storage(url))
        assert [s.study_name for s in studies] == ["shared"]
