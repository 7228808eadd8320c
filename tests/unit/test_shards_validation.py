"""Every malformed or hostile reference is refused with an error that names the problem."""

from __future__ import annotations

import json

import pytest

from airflow_bigdata_ai.shards import (
    ChecksumMismatch,
    InvalidReference,
    ModelRef,
    ShardSet,
    UnsafePath,
    load_manifest,
    open_store,
    output_uri,
    read_table,
)
from airflow_bigdata_ai.shards.dataset import Manifest
from airflow_bigdata_ai.shards.paths import parse_uri, safe_relative_path
from tests.unit.shard_helpers import write_shardset

GOOD_SHA = "0" * 64


@pytest.fixture()
def good(tmp_path):
    store = open_store(str(tmp_path / "root"))
    ref = write_shardset(store, output_uri(str(store.root), "dag", "t", None))
    return store, ref


def mutate(ref: ShardSet, **changes) -> dict:
    data = ref.to_dict()
    for key, value in changes.items():
        if value is KeyError:
            data.pop(key)
        else:
            data[key] = value
    return data


def test_round_trip_through_json(good):
    _, ref = good
    assert ShardSet.coerce(ref.to_json()) == ShardSet.coerce(ref.to_dict()) == ref


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": "2.0"}, "unsupported ShardSet major version"),
        ({"version": 1}, "version must look like"),
        ({"kind": "ModelRef"}, "expected kind 'ShardSet'"),
        ({"num_rows": KeyError}, "missing required field 'num_rows'"),
        ({"num_rows": "15"}, "num_rows has type str, expected int"),
        ({"num_rows": True}, "num_rows has type bool"),
        ({"schema": []}, "schema has type list"),
        ({"surprise": 1}, "unknown fields"),
        ({"manifest_sha256": "abc"}, "lowercase hex sha256"),
        ({"format": "pickle"}, "unsupported shard format"),
        ({"manifest_uri": "hdfs://nn/x/_manifests/a.json"}, "unknown URI scheme 'hdfs'"),
        ({"manifest_uri": "file:///data/../etc/_manifests/a.json"}, "dot segments"),
        ({"manifest_uri": "file:///data/%2e%2e/_manifests/a.json"}, "percent-encoded"),
        ({"manifest_uri": "file:///data\\evil/_manifests/a.json"}, "backslash"),
        ({"manifest_uri": "s3:///no-bucket/a.json"}, "without a bucket"),
        ({"producer": {"dag_id": 3}}, "producer.dag_id must be a string"),
    ],
)
def test_bad_reference_fields(good, changes, message):
    _, ref = good
    with pytest.raises(InvalidReference, match=message):
        ShardSet.from_dict(mutate(ref, **changes))


def test_not_json_and_not_an_object():
    with pytest.raises(InvalidReference, match="not valid JSON"):
        ShardSet.from_json("{nope")
    with pytest.raises(InvalidReference, match="must be a JSON object"):
        ShardSet.from_json("[1, 2]")
    with pytest.raises(InvalidReference, match="expected a ShardSet"):
        ShardSet.coerce(42)


def test_manifest_checksum_mismatch_is_detected_before_any_shard_is_read(good):
    store, ref = good
    forged = ShardSet.from_dict(mutate(ref, manifest_sha256="1" * 64))
    with pytest.raises(ChecksumMismatch, match="reference expects"):
        read_table(store, forged)


def test_reference_outside_the_store_root_or_in_a_foreign_bucket(good, tmp_path):
    store, ref = good
    elsewhere = ShardSet.from_dict(mutate(ref, manifest_uri=f"file://{tmp_path}/other/_manifests/x.json"))
    with pytest.raises(InvalidReference, match="outside the store root"):
        load_manifest(store, elsewhere)
    s3_store = open_store("s3://our-bucket/prefix")
    foreign = ShardSet.from_dict(mutate(ref, manifest_uri="s3://their-bucket/prefix/_manifests/x.json"))
    with pytest.raises(InvalidReference, match="foreign bucket 'their-bucket'"):
        load_manifest(s3_store, foreign)
    with pytest.raises(InvalidReference, match="scheme 'file'"):
        load_manifest(s3_store, ref)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../escape.parquet", "segment '..'"),
        ("attempts/../../escape.parquet", "segment '..'"),
        ("/etc/passwd", "absolute path"),
        ("C:/x.parquet", "absolute path"),
        ("attempts/%2e%2e/x.parquet", "percent-encoded"),
        ("attempts\\x.parquet", "backslash"),
        ("attempts//x.parquet", "segment ''"),
        ("attempts/x y.parquet", "characters outside"),
    ],
)
def test_unsafe_shard_paths_in_a_manifest(good, path, message):
    store, ref = good
    body = json.loads(store.read_bytes(ref.manifest_uri))
    body["shards"][0]["path"] = path
    with pytest.raises(UnsafePath, match=message):
        Manifest.from_bytes(json.dumps(body).encode())


def test_manifest_unknown_major_version_and_wrong_kind(good):
    store, ref = good
    body = json.loads(store.read_bytes(ref.manifest_uri))
    with pytest.raises(InvalidReference, match="major version"):
        Manifest.from_bytes(json.dumps({**body, "version": "9.0"}).encode())
    with pytest.raises(InvalidReference, match="not a shard manifest"):
        Manifest.from_bytes(json.dumps({**body, "kind": "Other"}).encode())


def test_parse_uri_plain_paths_and_safe_relative():
    assert str(parse_uri("/data/x")) == "file:///data/x"
    assert str(parse_uri("s3://b/k/")) == "s3://b/k"
    assert safe_relative_path("attempts/a-1/part-00000.parquet")


def test_model_ref_validation(good):
    _, ref = good
    model = ModelRef(
        weights_uri="file:///models/w.pt",
        weights_sha256=GOOD_SHA,
        model_factory="airflow_bigdata_ai.examples.models.digits:make_digits_cnn",
        input_shape=[1, 8, 8],
        trained_on=ref.to_dict(),
    )
    assert ModelRef.from_json(model.to_json()) == model
    for bad, message in [
        ({"model_factory": "os.system"}, "package.module:function"),
        ({"model_factory": "x:y; rm -rf"}, "package.module:function"),
        ({"input_shape": [0, 8]}, "positive integers"),
        ({"input_shape": [1, 10**9]}, "positive integers"),
        ({"weights_uri": "ftp://x/w.pt"}, "unknown URI scheme"),
        ({"weights_sha256": "Z" * 64}, "sha256"),
    ]:
        with pytest.raises(InvalidReference, match=message):
            ModelRef.from_dict({**model.to_dict(), **bad})
