"""Provider metadata for Airflow's ProvidersManager (``apache_airflow_provider`` entry point).

Connection fields are declarative (``conn-fields``/``ui-field-behaviour``) so Airflow renders the form
without importing the hook; the hook's Python form methods derive from the same definitions.
"""

from __future__ import annotations

from typing import Any

from airflow_bigdata_ai.connection import RAY_ON_SPARK_CONN_FIELDS, RAY_ON_SPARK_UI_BEHAVIOUR

PACKAGE = "airflow-bigdata-ai"
INTEGRATION = "Ray on Spark (airflow-bigdata-ai)"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": PACKAGE,
        "name": "Big data AI (Spark preprocessing, Ray training, OpenVINO inference)",
        "description": "Spark preprocessing, Ray training and OpenVINO inference on one shared "
        "Spark application that hosts a Ray cluster; tasks exchange shard references, not data.",
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://docs.ray.io/en/latest/cluster/vms/user-guides/community/spark.html",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_bigdata_ai.operators.cluster",
                    "airflow_bigdata_ai.operators.preprocess",
                    "airflow_bigdata_ai.operators.train",
                    "airflow_bigdata_ai.operators.infer",
                    "airflow_bigdata_ai.operators.tables",
                ],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_bigdata_ai.hooks.ray_on_spark"]}],
        "connection-types": [
            {
                "hook-class-name": "airflow_bigdata_ai.hooks.ray_on_spark.RayOnSparkHook",
                "hook-name": "Ray on Spark (shared cluster)",
                "connection-type": "ray_on_spark",
                "conn-fields": RAY_ON_SPARK_CONN_FIELDS,
                "ui-field-behaviour": RAY_ON_SPARK_UI_BEHAVIOUR,
            }
        ],
        "extra-links": [
            "airflow_bigdata_ai.links.SparkUILink",
            "airflow_bigdata_ai.links.RayDashboardLink",
        ],
    }
