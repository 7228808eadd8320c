"""The ray_on_spark connection maps onto core settings; the hook reads it through Airflow."""

from __future__ import annotations

import json

import pytest

from airflow_bigdata_ai.connection import ConnectionSettings


def test_defaults_without_a_connection(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_BIGDATA_AI_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_BIGDATA_AI_STORE", raising=False)
    s = ConnectionSettings.from_parts("ray_on_spark_default", None, None, None)
    assert (s.master, s.mode, s.auth_token) == ("embedded", "embedded", None)
    assert s.state_dir == str(tmp_path / "clusters" / "ray_on_spark_default")
    assert s.store_root == str(tmp_path / "store")


def test_extra_fields_plain_and_prefixed():
    extra = {
        "extra__ray_on_spark__mode": "remote",
        "state_dir": "/srv/abai",
        "spark_conf": json.dumps({"spark.executor.memory": "2g"}),
        "max_worker_nodes": "3",
        "idle_timeout_s": 0,
        "store_root": "s3://bucket/prefix",
    }
    s = ConnectionSettings.from_parts("prod", "spark://10.0.0.1:7077", "sekret", extra)
    assert s.mode == "remote" and s.master == "spark://10.0.0.1:7077" and s.state_dir == "/srv/abai"
    assert s.spark_conf == {"spark.executor.memory": "2g"} and s.max_worker_nodes == 3
    assert s.idle_timeout_s == 0 and s.store_root == "s3://bucket/prefix"
    assert "sekret" not in repr(s)


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="mode must be 'embedded' or 'remote'"):
        ConnectionSettings.from_parts("c", None, None, {"mode": "cloud"})


def test_hook_reads_connection_from_environment(monkeypatch):
    from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook

    conn = {"conn_type": "ray_on_spark", "host": "embedded", "password": "tok", "extra": {"state_dir": "/tmp/x"}}
    monkeypatch.setenv("AIRFLOW_CONN_MY_CLUSTER", json.dumps(conn))
    hook = RayOnSparkHook("my_cluster")
    assert hook.settings.state_dir == "/tmp/x" and hook.settings.auth_token == "tok"
    behaviour = RayOnSparkHook.get_ui_field_behaviour()
    assert behaviour["relabeling"]["host"] == "Spark master"


def test_store_for_uses_aws_connection(monkeypatch, tmp_path):
    from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook
    from airflow_bigdata_ai.shards import LocalStore, S3Store

    aws = {"conn_type": "aws", "login": "AK", "password": "SK", "extra": {"endpoint_url": "http://127.0.0.1:9"}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(aws))
    monkeypatch.setenv(
        "AIRFLOW_CONN_C", json.dumps({"conn_type": "ray_on_spark", "extra": {"store_root": str(tmp_path)}})
    )
    hook = RayOnSparkHook("c")
    s3 = hook.store_for("s3://bucket/x/y")
    assert isinstance(s3, S3Store) and str(s3.root) == "s3://bucket/x/y"  # its own prefix, not the bucket
    assert s3.options.endpoint_url == "http://127.0.0.1:9" and s3.options.aws_access_key_id == "AK"
    local = hook.store_for(str(tmp_path / "a" / "b"))
    assert isinstance(local, LocalStore) and local.root.path == str(tmp_path)
