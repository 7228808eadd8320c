"""Every example DAG imports through Airflow's DagBag, and parsing imports no heavy engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "dags_examples")

PARSE = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={EXAMPLES!r})
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'pyspark', 'ray', 'openvino', 'nncf'}})
dags = {{}}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {{"setup": [t.task_id for t in dag.tasks if t.is_setup],
                     "teardown": [t.task_id for t in dag.tasks if t.is_teardown],
                     "outlets": sorted(a.name for t in dag.tasks for a in t.outlets)}}
errors = {{k: str(v)[-800:] for k, v in bag.import_errors.items()}}
print(json.dumps({{"errors": errors, "dags": dags, "heavy": heavy}}))
"""


@pytest.fixture(scope="module")
def parsed() -> dict:
    result = subprocess.run([sys.executable, "-c", PARSE], capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dagbag_imports_every_example_without_errors(parsed):
    assert parsed["errors"] == {}
    assert {"smart_transportation_cv", "digits_e2e", "digits_inference_on_new_model"} <= set(parsed["dags"])


def test_parsing_imports_no_engine(parsed):
    assert parsed["heavy"] == [], f"parsing the example DAGs imported {parsed['heavy']}"


def test_pipeline_dags_have_setup_teardown_and_asset_outlets(parsed):
    for dag_id in ("smart_transportation_cv", "digits_e2e"):
        info = parsed["dags"][dag_id]
        assert info["setup"] == ["setup_cluster"] and info["teardown"] == ["teardown_cluster"], dag_id
        assert len(info["outlets"]) == 3, dag_id
