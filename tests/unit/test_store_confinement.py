"""Stores the hook opens stay under the configured store root (issue 13, defect 14).

With ``store_root = s3://bucket/prefix`` a store for the root itself, or for anything below it, must be
rooted at the prefix, never at the bucket: training's checkpoints and weights are written relative to
``store.root``. A reference elsewhere gets a store confined to that reference's own prefix.
"""

from __future__ import annotations

import json

import pytest

from airflow_bigdata_ai.shards import InvalidReference
from airflow_bigdata_ai.shards.paths import is_within, own_root, parse_uri


@pytest.fixture()
def hook(monkeypatch):
    from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook

    aws = {"conn_type": "aws", "login": "AK", "password": "SK", "extra": {"endpoint_url": "http://127.0.0.1:9"}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(aws))
    extra = {"store_root": "s3://bucket/prefix"}
    monkeypatch.setenv("AIRFLOW_CONN_PREFIXED", json.dumps({"conn_type": "ray_on_spark", "extra": extra}))
    return RayOnSparkHook("prefixed")


def test_store_for_the_root_is_rooted_at_the_prefix(hook):
    store = hook.store_for(hook.store_root)
    assert str(store.root) == "s3://bucket/prefix"
    assert str(hook.store_for().root) == "s3://bucket/prefix"
    assert store.options.endpoint_url == "http://127.0.0.1:9" and store.options.aws_access_key_id == "AK"
    # what train/core.py derives from store.root: checkpoints stay under the prefix
    assert str(store.root.join("_checkpoints/dag/train/run")).startswith("s3://bucket/prefix/")
    with pytest.raises(InvalidReference):
        store.resolve("s3://bucket/dag/train/ds=2026-11-24/weights/model.pt")


def test_targets_under_the_root_share_the_root(hook):
    for target in (
        "s3://bucket/prefix/dag/train",
        "s3://bucket/prefix/dag/prep/ds=2026-11-24/_manifests/a.json",
        "s3://bucket/prefix/dag/train/ds=2026-11-24/weights/model-ab.pt",
    ):
        assert str(hook.store_for(target).root) == "s3://bucket/prefix"
    # a sibling whose name merely starts with the prefix is elsewhere
    assert str(hook.store_for("s3://bucket/prefix-other/x").root) == "s3://bucket/prefix-other/x"


def test_targets_elsewhere_get_their_own_prefix_never_the_bucket(hook):
    manifest = "s3://bucket/other/dag/prep/ds=2026-11-24/_manifests/a.json"
    store = hook.store_for(manifest)
    assert str(store.root) == "s3://bucket/other/dag/prep/ds=2026-11-24"
    store.resolve("s3://bucket/other/dag/prep/ds=2026-11-24/attempts/a/part-00000.parquet")  # its shards
    with pytest.raises(InvalidReference):
        store.resolve("s3://bucket/prefix/dag/x")
    weights = hook.store_for("s3://bucket/models/dag/train/ds=2026-11-24/weights/model-ab.pt")
    assert str(weights.root) == "s3://bucket/models/dag/train/ds=2026-11-24/weights"  # IR cache beside it
    assert str(hook.store_for("s3://bucket/raw/images").root) == "s3://bucket/raw/images"
    assert str(hook.store_for("s3://elsewhere/raw").root) == "s3://elsewhere/raw"


def test_local_store_root_and_targets(monkeypatch, tmp_path):
    from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook
    from airflow_bigdata_ai.shards import LocalStore

    root = tmp_path / "store"
    monkeypatch.setenv(
        "AIRFLOW_CONN_LOCAL", json.dumps({"conn_type": "ray_on_spark", "extra": {"store_root": str(root)}})
    )
    hook = RayOnSparkHook("local")
    inside = hook.store_for(str(root / "dag" / "t"))
    assert isinstance(inside, LocalStore) and inside.root.path == str(root)
    outside = hook.store_for(str(tmp_path / "other" / "d" / "t" / "ds=x" / "_manifests" / "a.json"))
    assert outside.root.path == str(tmp_path / "other" / "d" / "t" / "ds=x")


def test_own_root_and_is_within():
    assert str(own_root(parse_uri("s3://b/p/d/t/ds=x/_manifests/a.json"))) == "s3://b/p/d/t/ds=x"
    assert str(own_root(parse_uri("s3://b/raw/labels.csv"))) == "s3://b/raw"
    run_dir = "s3://b/d/t/run=manual__2026-11-29T17_30_00.123456+00_00"  # a dot, but not a file suffix
    assert str(own_root(parse_uri(run_dir))) == run_dir
    assert is_within(parse_uri("s3://b/p/x"), parse_uri("s3://b/p"))
    assert is_within(parse_uri("s3://b/p"), parse_uri("s3://b/p"))
    assert not is_within(parse_uri("s3://b/px"), parse_uri("s3://b/p"))
    assert not is_within(parse_uri("s3://c/p/x"), parse_uri("s3://b/p"))
    assert not is_within(parse_uri("/p/x"), parse_uri("s3://b/p"))
    assert is_within(parse_uri("s3://b/anything"), parse_uri("s3://b"))


def test_s3_options_repr_shows_no_credential() -> None:
    """An S3Options in an exception text or a log line must not carry the keys (issue 15, secrets)."""
    from airflow_bigdata_ai.shards import S3Options

    text = repr(
        S3Options(endpoint_url="http://127.0.0.1:1", aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="s")
    )
    assert "AKIAEXAMPLE" not in text and "127.0.0.1:1" in text


def test_s3_retries_and_timeouts_come_from_the_aws_connections_config_kwargs(monkeypatch) -> None:
    """The Amazon provider's ``config_kwargs`` extra sets the S3 retries and timeouts (defaults otherwise)."""
    from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook

    extra = {"config_kwargs": {"retries": {"max_attempts": 9, "mode": "adaptive"}, "read_timeout": 5}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_TUNED", json.dumps({"conn_type": "aws", "extra": extra}))
    conn = {"conn_type": "ray_on_spark", "extra": {"store_root": "s3://b/p", "aws_conn_id": "aws_tuned"}}
    monkeypatch.setenv("AIRFLOW_CONN_TUNED", json.dumps(conn))
    options = RayOnSparkHook("tuned").s3_options()
    assert (options.max_attempts, options.retry_mode, options.read_timeout_s) == (9, "adaptive", 5.0)
    assert options.connect_timeout_s == 10.0
