"""Every object a full DAG run writes stays under ``store_root = s3://bucket/prefix`` (issue 13, defect 14).

The digits example DAG runs end to end under ``dag.test()`` at the tiny scale, with the default
``ray_on_spark`` connection pointing its store at a prefix of a bucket on a loopback S3 server (moto) and
an AWS connection that reaches it. Afterwards the WHOLE bucket is listed: preprocessing, training (weights,
checkpoint records) and inference (the IR cache, predictions) must all have written below the prefix,
and nothing anywhere else.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.example_dags import load_example_dag
from tests.support.s3server import s3_server

pytestmark = [pytest.mark.system, pytest.mark.integration, pytest.mark.timeout(3600)]

BUCKET, PREFIX = "abai-shared", "team-a/airflow-bigdata-ai"


def _digits_dag() -> Any:
    """A fresh import of the example DAG file, so it reads the tiny scale set by the test."""
    return load_example_dag("digits_e2e.py", "digits_e2e", "abai_s3_prefix_digits_e2e")


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


def _db_text(run_id: str) -> dict[str, str]:
    """The run's rendered template fields and XCom values as the metadata DB holds them."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rendered = session.scalars(select(RTIF).where(RTIF.run_id == run_id)).all()
        xcoms = session.scalars(select(XComModel).where(XComModel.run_id == run_id)).all()
        return {
            **{f"rendered {r.task_id}": json.dumps(r.rendered_fields, default=str) for r in rendered},
            **{f"xcom {x.task_id}/{x.key}": json.dumps(x.value, default=str) for x in xcoms},
        }


def _ray_metadata(attached: Any) -> str:
    """Everything Ray's state API and job API say about the cluster's jobs, actors, tasks and placement groups."""
    from ray.job_submission import JobSubmissionClient
    from ray.util import state

    attached.ray()  # token auth for this process
    dashboard = attached.endpoint.ray_dashboard_url  # explicit: other Ray clusters may run on this machine
    chunks = [
        json.dumps([item.__dict__ if hasattr(item, "__dict__") else item for item in rows], default=str)
        for rows in (
            state.list_jobs(address=dashboard, detail=True, limit=10_000),
            state.list_actors(address=dashboard, detail=True, limit=10_000),
            state.list_tasks(address=dashboard, detail=True, limit=10_000, raise_on_missing_output=False),
            state.list_placement_groups(address=dashboard, detail=True, limit=10_000),
        )
    ]
    assert chunks[0] != "[]" and chunks[1] != "[]", "the run's Ray jobs and actors must be listed"
    token = os.environ.get("RAY_AUTH_TOKEN", "")
    client = JobSubmissionClient(dashboard, headers={"Authorization": f"Bearer {token}"})
    chunks.append(json.dumps([job.__dict__ for job in client.list_jobs()], default=str))
    return "\n".join(chunks)


def _cmdlines() -> dict[str, str]:
    """Every process's command line (the shared cluster's services, executors and Ray nodes are up now)."""
    found = {}
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as handle:
                found[path] = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
    return found


def _files(*roots: str, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    found = {}
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                if path in skip or os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as handle:
                        found[path] = handle.read()
                except OSError:
                    continue
    return found


def _leaks(secret_values: dict[str, str], places: dict[str, str | bytes]) -> list[str]:
    found = []
    for where, content in places.items():
        data = content if isinstance(content, bytes) else content.encode(errors="replace")
        found += [f"{name} in {where}" for name, value in secret_values.items() if value.encode() in data]
    return found


def _store_exception_text(s3: Any) -> str:
    """What a user sees when the store fails: message, repr and traceback of the exception, and the store's repr.

    (``repr(S3Options)`` itself still shows ``aws_access_key_id``; nothing formats it today.)
    """
    from airflow_bigdata_ai.shards import open_store

    dead = replace(s3, endpoint_url="http://127.0.0.1:9", max_attempts=1, connect_timeout_s=1, read_timeout_s=1)
    store = open_store(f"s3://{BUCKET}/{PREFIX}", dead)
    try:
        store.read_bytes(f"s3://{BUCKET}/{PREFIX}/missing")
    except Exception as exc:  # the failure itself is expected; its text is what is checked
        return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(store)])
    raise AssertionError("reading through a dead endpoint succeeded")


def test_full_dag_run_writes_only_under_the_prefix(airflow_db, shared_cluster, attached, monkeypatch, capfd):
    import boto3

    with s3_server(BUCKET) as moto:
        # seeded, unique secrets (moto accepts any key): a hit in a grep below is a real leak
        s3 = replace(
            moto,
            aws_access_key_id="AKIA" + secrets.token_hex(8).upper(),
            aws_secret_access_key=secrets.token_urlsafe(30),
        )
        reference_secret = "refsecret-" + secrets.token_urlsafe(24)
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
            "reference_secret": reference_secret,
        }
        monkeypatch.setenv("AIRFLOW_CONN_ABAI_S3_PREFIX_TEST", json.dumps(aws))
        monkeypatch.setenv(
            "AIRFLOW_CONN_RAY_ON_SPARK_DEFAULT", json.dumps({"conn_type": "ray_on_spark", "extra": extra})
        )
        monkeypatch.setenv("AIRFLOW_BIGDATA_AI_EXAMPLE_SCALE", "tiny")

        started = time.monotonic()
        run = _digits_dag().test(logical_date=datetime(2026, 11, 24, tzinfo=UTC))
        task_output = capfd.readouterr()
        print(f"DAG run: {time.monotonic() - started:.1f} s")
        assert run.state == "success", task_output.out[-5000:] + task_output.err[-5000:]
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

        # -- secrets: grep every place a full run leaves text in ----------------------------------------------
        started = time.monotonic()
        from airflow_bigdata_ai.connection import DEFAULT_CONN_ID, ConnectionSettings
        from airflow_bigdata_ai.shards.refs import ShardSet, verify_reference

        state_dir = shared_cluster.config.state_dir
        with open(os.path.join(state_dir, "token")) as handle:
            token = handle.read().strip()
        policy = ConnectionSettings.from_parts(DEFAULT_CONN_ID, None, None, extra).reference_policy()
        secret_values = {
            "cluster token": token,
            "AWS access key id": s3.aws_access_key_id,
            "AWS secret key": s3.aws_secret_access_key,
            "reference secret": reference_secret,
            "signing key": policy.key.hex(),
        }
        client = boto3.client("s3", **s3.client_kwargs())
        objects = {f"s3://{BUCKET}/{k}": client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}
        home = os.environ["AIRFLOW_HOME"]
        db = _db_text(run.run_id)
        assert any(k.startswith("rendered train") for k in db) and any(k.startswith("xcom infer") for k in db), db
        verify_reference(ShardSet.coerce(json.loads(db["xcom preprocess/return_value"])), policy.key)  # signed
        places: dict[str, str | bytes] = {
            "task output (stdout)": task_output.out,
            "task output (stderr)": task_output.err,
            **_files(os.path.join(home, "logs")),
            **db,
            **objects,
            # the local side: the default local store and the cluster's state dir (its logs, Ray's session logs),
            # except the two files that exist to hold a secret
            **_files(
                os.path.join(os.environ["AIRFLOW_BIGDATA_AI_HOME"], "store"),
                state_dir,
                skip=(os.path.join(state_dir, "token"), os.path.join(state_dir, "reference.key")),
            ),
            **_cmdlines(),
            "Ray jobs, actors, tasks, placement groups": _ray_metadata(attached),
            "exception text of a failing S3 store": _store_exception_text(s3),
        }
        leaks = _leaks(secret_values, places)
        print(f"secrets grep: {len(places)} places, {sum(len(v) for v in places.values()) / 1e6:.1f} MB, "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
        assert not leaks, leaks
