"""The tabular example DAG end to end (tiny scale) on the shared cluster, with OpenLineage's file transport.

The run loads scikit-learn's breast-cancer table as the date's partition, preprocesses it with templated SQL
and a Python transform, trains an MLP, infers with OpenVINO and publishes the predictions as the date's
partition of a table; the test then queries that table with Spark SQL and checks that the OpenLineage
events of the run chain from the source table to the predictions table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.example_dags import load_example_dag

pytestmark = [pytest.mark.system, pytest.mark.integration, pytest.mark.timeout(900)]

DS = "2026-11-20"


def _dag() -> Any:
    return load_example_dag("tabular_warehouse.py", "tabular_warehouse", "abai_tabular_warehouse")


def _clear_openlineage_settings() -> None:
    """The provider caches each setting (functools.cache): clear them so the environment is read again."""
    from airflow.providers.openlineage import conf

    for name in dir(conf):
        clear = getattr(getattr(conf, name), "cache_clear", None)
        if clear is not None:
            clear()


@pytest.fixture
def openlineage_events(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """OpenLineage's events of this process, sent to a file (the provider caches its settings: reset them).

    Airflow loads its plugins, and with them the OpenLineage listener, once per process: when an earlier
    test of the session loaded them while OpenLineage had no transport, the listener was left out. It is
    registered here for this test and removed after it.
    """
    from airflow.providers.openlineage.plugins.listener import get_openlineage_listener
    from airflow.sdk.listener import get_listener_manager

    path = str(tmp_path / "openlineage.jsonl")
    transport = {"type": "file", "log_file_path": path, "append": True}
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", json.dumps(transport))
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__NAMESPACE", "abai-test")
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__DISABLED", "False")
    # a thread, not a fork, emits: a forked child of a process holding gRPC channels (Spark Connect, Ray) may hang
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD", "True")
    _clear_openlineage_settings()
    listener = get_openlineage_listener()
    listener.adapter._client = None  # built again from the settings above
    manager = get_listener_manager()
    registered = manager.pm.is_registered(listener)
    manager.add_listener(listener)
    try:
        yield path
    finally:
        if not registered:
            manager.pm.unregister(listener)
        _clear_openlineage_settings()


def _events(path: str) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _names(datasets: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["namespace"], d["name"]) for d in datasets}


def _table(dataset: dict[str, Any]) -> str | None:
    links = dataset.get("facets", {}).get("symlinks", {}).get("identifiers", [])
    return links[0]["name"] if links else None


def test_tabular_example_publishes_a_queryable_partition_and_lineage_chains(
    airflow_db: str, shared_cluster: Any, attached: Any, monkeypatch: pytest.MonkeyPatch, openlineage_events: str
) -> None:
    extra = {"mode": "remote", "state_dir": shared_cluster.config.state_dir}
    monkeypatch.setenv("AIRFLOW_CONN_RAY_ON_SPARK_DEFAULT", json.dumps({"conn_type": "ray_on_spark", "extra": extra}))
    monkeypatch.setenv("AIRFLOW_BIGDATA_AI_EXAMPLE_SCALE", "tiny")
    events_path = openlineage_events

    run = _dag().test(logical_date=datetime(2026, 11, 20, tzinfo=UTC))
    assert run.state == "success"

    spark = attached.spark()
    rows = spark.sql(
        "SELECT p.ds, count(*) AS n, avg(CASE WHEN p.predicted = p.label THEN 1.0 ELSE 0.0 END) AS accuracy "
        "FROM abai_examples.breast_cancer_predictions p WHERE p.ds = '2026-11-20' GROUP BY p.ds"
    ).collect()
    assert len(rows) == 1 and rows[0]["n"] == 569, rows
    print(f"predictions table: {rows[0]['n']} rows, accuracy {rows[0]['accuracy']:.3f}")
    assert rows[0]["accuracy"] >= 0.9, rows

    events = [e for e in _events(events_path) if e.get("eventType") == "COMPLETE" and "." in e["job"]["name"]]
    complete = {e["job"]["name"].split(".")[-1]: e for e in events}
    for task in ("preprocess", "train", "infer", "publish_predictions"):
        assert task in complete, f"no COMPLETE event for {task}: {sorted(complete)}"
    pre, train, infer, publish = (complete[t] for t in ("preprocess", "train", "infer", "publish_predictions"))
    assert [_table(d) for d in pre["inputs"]] == ["abai_examples.breast_cancer"], pre["inputs"]
    features = _names(pre["outputs"])
    assert len(features) == 1 and features <= _names(train["inputs"]) and features <= _names(infer["inputs"])
    assert _names(train["outputs"]) <= _names(infer["inputs"])
    predictions = _names(infer["outputs"])
    assert predictions == _names(publish["inputs"])
    assert [_table(d) for d in publish["outputs"]] == ["abai_examples.breast_cancer_predictions"]
    out = pre["outputs"][0]
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == 569
    assert {f["name"] for f in out["facets"]["schema"]["fields"]} >= {"record_id", "features", "label"}
    assert publish["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 569
    namespace, name = next(iter(features))
    assert namespace == "file" and name.endswith("/tabular_warehouse/preprocess/ds=2026-11-20"), (namespace, name)


BAD_QUERY_DAG_FILE = """# airflow DAG file (safe-mode discovery needs both words)
from tests.system.test_tabular_warehouse import build_bad_query_dag

dag = build_bad_query_dag()
"""


def build_bad_query_dag() -> Any:
    """A preprocessing over a table that does not exist, with retries left (dag.test() reads the dags folder)."""
    from airflow.sdk import DAG

    from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator

    with DAG("abai_bad_query", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)) as dag:
        SparkPreprocessOperator(
            task_id="preprocess",
            source={"sql": "SELECT * FROM abai_examples.no_such_table WHERE ds = '{{ ds }}'"},
            retries=3,
        )
    return dag


def test_a_query_spark_cannot_run_fails_the_task_at_once_without_retries(
    airflow_db: str, shared_cluster: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    extra = {"mode": "remote", "state_dir": shared_cluster.config.state_dir}
    monkeypatch.setenv("AIRFLOW_CONN_RAY_ON_SPARK_DEFAULT", json.dumps({"conn_type": "ray_on_spark", "extra": extra}))
    with open(os.path.join(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], "abai_bad_query.py"), "w") as handle:
        handle.write(BAD_QUERY_DAG_FILE)
    run = build_bad_query_dag().test(logical_date=datetime(2026, 11, 21, tzinfo=UTC))
    output = capfd.readouterr()
    assert run.state == "failed"
    (ti,) = run.get_task_instances()
    assert ti.state == "failed" and ti.try_number == 1, (ti.state, ti.try_number)  # not up_for_retry
    text = output.out + output.err
    assert "TABLE_OR_VIEW_NOT_FOUND" in text and "no_such_table WHERE ds = '2026-11-21'" in text, text[-3000:]
