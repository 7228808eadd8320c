"""The S3 store against a real S3 API server on loopback (HTTP), conditional writes included."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from airflow_bigdata_ai.shards import (
    InvalidReference,
    ShardSet,
    current_shardset,
    load_manifest,
    open_store,
    output_uri,
    read_table,
)
from tests.support.s3server import s3_server
from tests.unit.shard_helpers import write_shardset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3():
    with s3_server("shards", "other", "prefixed") as options:
        yield options


def test_conditional_put_creates_once(s3):
    store = open_store("s3://shards/cond", s3)
    assert store.put_if_absent("s3://shards/cond/m.json", b"first") is True
    assert store.put_if_absent("s3://shards/cond/m.json", b"second") is False
    assert store.read_bytes("s3://shards/cond/m.json") == b"first"


def test_commit_read_rerun_and_same_checksums_as_local(s3, tmp_path):
    store = open_store("s3://shards/root", s3)
    dataset = output_uri("s3://shards/root", "dag", "prep", "2026-11-24")
    assert dataset == "s3://shards/root/dag/prep/ds=2026-11-24"
    first = write_shardset(store, dataset, shards=3, rows=4)
    second = write_shardset(store, dataset, shards=3, rows=4)
    assert current_shardset(store, dataset) == second
    assert len([u for u in store.list(dataset) if "/_manifests/" in u.path]) == 1
    assert read_table(store, second).num_rows == 12
    with pytest.raises(FileNotFoundError):
        load_manifest(store, first)

    local = open_store(str(tmp_path))
    local_ref = write_shardset(local, output_uri(str(tmp_path), "dag", "prep", "2026-11-24"), shards=3, rows=4)
    assert [s.sha256 for s in load_manifest(store, second).shards] == [
        s.sha256 for s in load_manifest(local, local_ref).shards
    ]
    # Bulk reads through pyarrow's S3 filesystem (what Ray Data uses) see the same rows.
    fs = store.arrow_filesystem()
    paths = [store.arrow_path(f"{dataset}/{s.path}") for s in load_manifest(store, second).shards]
    assert sum(pq.read_table(p, filesystem=fs).num_rows for p in paths) == 12


def test_foreign_bucket_reference_is_refused(s3):
    store = open_store("s3://shards/root", s3)
    ref = write_shardset(open_store("s3://other/root", s3), "s3://other/root/x", shards=1)
    with pytest.raises(InvalidReference, match="foreign bucket 'other'"):
        read_table(store, ShardSet.coerce(ref.to_dict()))


def test_arrow_directories_stay_under_the_store_root(s3):
    """Ray Train creates its storage folders through the store's Arrow filesystem: no marker objects above
    the root (Arrow's default put one at every ancestor, ``team/`` included)."""
    store = open_store("s3://prefixed/team/abai", s3)
    base = "s3://prefixed/team/abai/_checkpoints/dag/train/run"
    store.write_bytes(f"{base}/run.json", b"{}")  # what train() writes before Ray Train starts
    fs = store.arrow_filesystem()
    fs.create_dir(store.arrow_path(f"{base}/ray/checkpoint_1"), recursive=True)
    with fs.open_output_stream(store.arrow_path(f"{base}/ray/checkpoint_1/state.pt")) as handle:
        handle.write(b"weights")
    keys = [u.path for u in open_store("s3://prefixed", s3).list("s3://prefixed")]
    assert keys and all(key.startswith("team/abai/") for key in keys), keys
