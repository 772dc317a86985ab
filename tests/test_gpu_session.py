"""benchmarks/gpu_session.sh runs on a lent GPU machine whose Python has torch, Triton, Lightning, scipy,
statsmodels, ml_dtypes, pytest and hypothesis, but not this project's other test and extra dependencies. Its
tests and benchmarks must load there: checked here with those packages made unimportable."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# not in the GPU machines' image (a missing one would make the whole pytest step a collection error)
ABSENT = ("gfloat", "optuna", "optuna_integration", "mlflow", "psycopg", "psycopg2", "qtorch", "pychop")

_CHILD = r"""
import importlib.abc, sys
absent = set(sys.argv[1].split(","))

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
for name in list(sys.modules):
    if name.split(".")[0] in absent:
        del sys.modules[name]
import benchmarks.gpu_check, benchmarks.bench_training  # the session's benchmark steps
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--collect-only", *sys.argv[2:]]))
"""


def _session_tests() -> list[str]:
    """The test ids that gpu_session.sh hands to pytest."""
    script = (ROOT / "benchmarks" / "gpu_session.sh").read_text().replace("\\\n", " ")
    line = next(ln for ln in script.splitlines() if "-m pytest" in ln)
    return [a for a in shlex.split(line) if a.startswith("tests/")]


def _collect(*tests: str) -> subprocess.CompletedProcess:
    """pytest's collection of ``tests``, after importing the session's benchmarks, without the ABSENT packages."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BOUNDFINDER_NATIVE": "0"}
    return subprocess.run([sys.executable, "-c", _CHILD, ",".join(ABSENT), *tests], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_gpu_sessions_tests_load_without_the_packages_the_gpu_machine_lacks():
    tests = _session_tests()
    assert "tests/test_gpu.py" in tests
    proc = _collect(*tests)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_the_check_sees_a_missing_package():
    """Control: a test module that needs one of the absent packages fails to load under the same check."""
    proc = _collect("tests/test_quantize_float.py")
    assert proc.returncode != 0
    assert "gfloat" in proc.stdout + proc.stderr
