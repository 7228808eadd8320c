"""DAG parsing stays cheap: operator and hook modules import no heavy engine."""

from __future__ import annotations

import json
import subprocess
import sys

from airflow_bigdata_ai.get_provider_info import get_provider_info

HEAVY = ("torch", "pyspark", "ray", "openvino", "nncf")


def test_operator_and_hook_modules_import_no_engine():
    info = get_provider_info()
    modules = [m for group in ("operators", "hooks") for e in info[group] for m in e["python-modules"]]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted({{k.split('.')[0] for k in sys.modules}} & set({HEAVY!r}))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
