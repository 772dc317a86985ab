"""A throwaway PostgreSQL server on 127.0.0.1 for the distributed-search tests.

Started from the Debian ``postgresql`` binaries with ``initdb`` / ``pg_ctl`` in a temporary folder (as the
``postgres`` user when the tests run as root, which PostgreSQL refuses), on a free port, trust authentication on
loopback only; stopped and removed at the end of the session. Skips, with the reason, where the binaries or the
``psycopg`` driver are missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile

import pytest


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed")
    root = tempfile.mkdtemp(prefix="boundfinder-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(root, user="postgres")
        prefix = [runuser, "-u", "postgres", "--"]
    data, port = os.path.join(root, "data"), _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run([*prefix, initdb, "-D", data, "-U", "boundfinder", "-A", "trust", "--no-sync"], **run)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, pg_ctl, "-D", data, "-o", options, "-l", os.path.join(root, "log"), "-w", "-t", "60",
                    "start"], **run)
    try:
        yield f"postgresql://boundfinder@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "-w", "-t", "60", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
