"""OpenVINOInferOperator construction: cheap, templated, no engines imported at DAG parse time."""

from __future__ import annotations

import json
import subprocess
import sys

from airflow_bigdata_ai.operators.infer import SUMMARY_XCOM_KEY, OpenVINOInferOperator


def test_construction_is_cheap_and_templated():
    code = (
        "import json, sys\n"
        "from airflow.sdk import DAG\n"
        "from airflow_bigdata_ai.operators.infer import OpenVINOInferOperator\n"
        "with DAG('d', schedule=None):\n"
        "    OpenVINOInferOperator(task_id='t', model_ref='{{ ti.xcom_pull(\"train\") }}', input_data={},\n"
        "                          precision='int8', engine='spark')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'openvino', 'nncf', 'ray',"
        " 'pyspark'})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_template_fields_and_defaults():
    op = OpenVINOInferOperator(task_id="t", model_ref="{{ x }}", input_data="{{ y }}")
    for name in ("model_ref", "input_data", "precision", "engine", "max_accuracy_drop", "on_accuracy_drop"):
        assert name in op.template_fields
    assert op.precision == "f32" and op.engine == "ray" and op.on_accuracy_drop == "fail"
    assert float(op.max_accuracy_drop) == 1.0
    assert {link.name for link in op.operator_extra_links} == {"Spark UI", "Ray dashboard"}
    assert SUMMARY_XCOM_KEY == "inference_summary"
