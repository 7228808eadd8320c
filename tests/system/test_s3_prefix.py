"""Every object a full DAG run writes stays under ``store_root = s3://bucket/prefix`` (issue 13, defect 14).

The digits example DAG runs end to end under ``dag.test()`` at the tiny scale, with the default
``ray_on_spark`` connection pointing its store at a prefix of a bucket on a loopback S3 server (moto) and
an AWS connection that reaches it. Afterwards the WHOLE bucket is listed: preprocessing, training (weights,
checkpoint records) and inference (the IR cache, predictions) must all have written below the prefix,
and nothing anywhere else.
"""

from __future__ import annotations

import importlib.util
import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.s3server import s3_server

pytestmark = [pytest.mark.system, pytest.mark.integration, pytest.mark.timeout(3600)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET, PREFIX = "abai-shared", "team-a/airflow-bigdata-ai"


def _digits_dag() -> Any:
    """A fresh import of the example DAG file, so it reads the tiny scale set by the test."""
    path = os.path.join(REPO, "dags_examples", "digits_e2e.py")
    spec = importlib.util.spec_from_file_location("abai_s3_prefix_digits_e2e", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.digits_e2e()


def _all_keys(client: Any) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def _xcom_bytes(run_id: str) -> dict[str, int]:
    """Size of each task's XCom value as Airflow stores it (JSON), from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run_id, key="return_value")).all()
        return {
            row.task_id: len(json.dumps(XComModel.deserialize_value(row))) for row in rows if row.dag_id == "digits_e2e"
        }


def test_full_dag_run_writes_only_under_the_prefix(airflow_db, shared_cluster, monkeypatch):
    import boto3

    with s3_server(BUCKET) as s3:
        aws = {
            "conn_type": "aws",
            "login": s3.aws_access_key_id,
            "password": s3.aws_secret_access_key,
            "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region_name},
        }
        extra = {
            "mode": "remote",
            "state_dir": shared_cluster.config.state_dir,
            "store_root": f"s3://{BUCKET}/{PREFIX}",
            "aws_conn_id": "abai_s3_prefix_test",
        }
        monkeypatch.setenv("AIRFLOW_CONN_ABAI_S3_PREFIX_TEST", json.dumps(aws))
        monkeypatch.setenv(
            "AIRFLOW_CONN_RAY_ON_SPARK_DEFAULT", json.dumps({"conn_type": "ray_on_spark", "extra": extra})
        )
        monkeypatch.setenv("AIRFLOW_BIGDATA_AI_EXAMPLE_SCALE", "tiny")

        run = _digits_dag().test(logical_date=datetime(2026, 11, 24, tzinfo=UTC))
        assert run.state == "success"
        # the references with the stats a real run records: README and concepts say "a few KB"
        sizes = _xcom_bytes(run.run_id)
        print(f"XCom bytes: {sizes}")
        assert all(0 < sizes[task] < 4096 for task in ("preprocess", "train", "infer")), sizes

        keys = _all_keys(boto3.client("s3", **s3.client_kwargs()))
        outside = [key for key in keys if not key.startswith(PREFIX + "/")]
        assert not outside, f"{len(outside)} of {len(keys)} objects outside {PREFIX}/: {outside[:20]}"
        written = {key[len(PREFIX) + 1 :].split("/")[0] + "/" + key[len(PREFIX) + 1 :].split("/")[1] for key in keys}
        print(f"{len(keys)} objects, all under s3://{BUCKET}/{PREFIX}/: {sorted(written)}")
        base = f"{PREFIX}/digits_e2e"
        assert any(k.startswith(f"{base}/preprocess/ds=2026-11-24/_manifests/") for k in keys)
        assert any(k.startswith(f"{base}/train/ds=2026-11-24/weights/") and k.endswith(".pt") for k in keys)
        assert any(k.startswith(f"{base}/infer/ds=2026-11-24/_manifests/") for k in keys)
        assert any("/_openvino/" in k for k in keys), "the IR cache was not written (or not under the prefix)"
