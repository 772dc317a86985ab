"""Results to report (built from simulated measurements, no training) and a throwaway MLflow tracking server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from boundfinder.search.study import Candidate, SearchResult, certify
from boundfinder.search.sweep import SweepResult


@pytest.fixture(scope="session")
def sweep_and_bound():
    # level b loses each item with probability 0.2 * 2**-b: a clear bound inside the range
    rng = np.random.default_rng(7)
    bits = tuple(range(0, 10))
    base = rng.random((2, 2000)) < 0.95
    correct = np.stack([base & (rng.random((2, 2000)) >= 0.2 * 2.0 ** -b) for b in bits])
    sweep = SweepResult(family="e8m{b}", bits=bits, formats=tuple(f"e8m{b}" for b in bits), level="layer",
                        roles=("weight", "activation"), seeds=(0, 1), correct=correct, baseline=base)
    return sweep, sweep.bound()


@pytest.fixture(scope="session")
def search_result():
    rng = np.random.default_rng(8)
    base = rng.random(3000) < 0.95
    cands = [Candidate(bits={"features.*": b, "classifier": 8}, formats={"features.*": f"e8m{b}",
                                                                         "classifier": "e8m8"},
                       cost=9.0 + b, val_drop=0.02 * 2.0 ** -b, trial=b) for b in (1, 2, 4, 8)]
    correct = np.stack([base & (rng.random(3000) >= 0.05 * 2.0 ** -c.bits["features.*"]) for c in cands])
    est, chosen = certify(cands, correct, base, tolerance=0.01, confidence=0.95)
    # configurations off the front: infeasible (b = 0) or dearer than a candidate with a smaller drop
    others = [Candidate(bits={"features.*": b, "classifier": c}, formats={"features.*": f"e8m{b}",
                                                                          "classifier": f"e8m{c}"},
                        cost=9.0 + b + c / 10, val_drop=drop, trial=10 + b)
              for b, c, drop in ((0, 8, 0.04), (3, 8, 0.02), (5, 2, 0.009))]
    configurations = tuple(sorted(cands + others, key=lambda c: c.cost))
    return SearchResult(study_name="sim", storage="in-memory", family="e8m{b}", groups=("features.*", "classifier"),
                        parameters={"features.*": 1040, "classifier": 170}, n_complete=12, n_failed=1,
                        n_configurations=len(configurations), candidates=tuple(cands), confirmation=est,
                        chosen=chosen, reason=est.reason, confirm_seeds=(1,), configurations=configurations)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with its own SQLite store and artifact folder; stopped at the end."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    exe = shutil.which("mlflow") or None
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    cmd = [exe] if exe else [sys.executable, "-m", "mlflow"]
    proc = subprocess.Popen([*cmd, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root}/server.db",
                             "--artifacts-destination", str(root / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start on {url} (exit status {proc.poll()})")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
