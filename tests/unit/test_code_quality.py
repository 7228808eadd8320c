"""ruff and mypy stay clean: the suite fails on lint or type errors, not only on behaviour."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_clean():
    targets = [
        p
        for p in ("airflow_bigdata_ai", "tests", "dags_examples", "benchmarks")
        if os.path.isdir(os.path.join(REPO, p))
    ]
    result = _run(os.path.join(BIN, "ruff"), "check", *targets)
    assert result.returncode == 0, result.stdout[-5000:]


def test_mypy_clean():
    result = _run(os.path.join(BIN, "mypy"), "airflow_bigdata_ai", "benchmarks")
    assert result.returncode == 0, result.stdout[-5000:]
