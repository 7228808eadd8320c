"""Writing, committing and reading shard sets on the local store."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from airflow_bigdata_ai.shards import (
    ChecksumMismatch,
    CommitConflict,
    ShardSet,
    ShardWriter,
    current_shardset,
    decode_tensors,
    load_manifest,
    open_store,
    output_uri,
    read_table,
    tensor_spec,
)
from tests.unit.shard_helpers import SCHEMA, shard_table, write_shardset


@pytest.fixture()
def store(tmp_path):
    return open_store(str(tmp_path / "root"))


def test_output_location_is_deterministic_and_date_partitioned(tmp_path):
    root = str(tmp_path)
    a = output_uri(root, "dag", "prep", "2026-11-24T00:00:00+00:00")
    assert a == output_uri(root, "dag", "prep", "2026-11-24T00:00:00+00:00")
    assert a.endswith("/dag/prep/ds=2026-11-24")
    assert output_uri(root, "dag", "prep", "2026-11-25T00:00:00+00:00").endswith("ds=2026-11-25")
    assert output_uri(root, "dag", "prep", "2026-11-24T06:00:00+00:00").endswith("ds=2026-11-24T06-00-00")


def test_round_trip_keeps_rows_and_tensor_metadata(store, tmp_path):
    dataset = output_uri(str(store.root), "dag", "t", "2026-11-24")
    ref = write_shardset(store, dataset, shards=3, rows=5)
    assert (ref.num_rows, ref.num_shards) == (15, 3)
    assert ref.schema["image"] == "tensor<float32>[1,4,4]"
    table = read_table(store, ref)
    assert table.column("record_id").to_pylist()[:2] == ["r00000-0000", "r00000-0001"]
    shape, dtype = tensor_spec(table.schema.field("image"))
    images = decode_tensors(table.column("image"), shape, dtype)
    expected = decode_tensors(shard_table(0, 5).column("image"), shape, dtype)
    np.testing.assert_array_equal(images[:5], expected)
    assert current_shardset(store, dataset) == ref


def test_rerun_replaces_output_and_keeps_exactly_one_manifest(store):
    dataset = output_uri(str(store.root), "dag", "t", "2026-11-24")
    first = write_shardset(store, dataset, shards=4)
    first_sums = [s.sha256 for s in load_manifest(store, first).shards]
    second = write_shardset(store, dataset, shards=2)
    manifests = [u for u in store.list(dataset) if "/_manifests/" in u.path]
    assert len(manifests) == 1
    assert current_shardset(store, dataset) == second
    # the same data gives the same shard checksums (deterministic Parquet encoding)
    assert [s.sha256 for s in load_manifest(store, second).shards] == first_sums[:2]
    with pytest.raises(FileNotFoundError, match="superseded"):
        read_table(store, first)  # superseded version is gone, not silently mixed


def test_other_dates_are_untouched_by_a_rerun(store):
    day1 = output_uri(str(store.root), "dag", "t", "2026-11-24")
    day2 = output_uri(str(store.root), "dag", "t", "2026-11-25")
    ref1 = write_shardset(store, day1)
    before = {u.path: store.read_bytes(u) for u in store.list(day1)}
    write_shardset(store, day2)
    write_shardset(store, day2)
    assert {u.path: store.read_bytes(u) for u in store.list(day1)} == before
    assert read_table(store, ref1).num_rows == 15


def test_runs_without_a_logical_date_get_a_partition_of_their_own(tmp_path):
    root = str(tmp_path)
    a = output_uri(root, "dag", "prep", None, "asset_triggered__2026-11-24T10:15:00.123456+00:00")
    b = output_uri(root, "dag", "prep", None, "asset_triggered__2026-11-24T11:00:00.654321+00:00")
    assert a.endswith("/dag/prep/run=asset_triggered__2026-11-24T10_15_00.123456+00_00")
    assert a != b and "ds=none" not in a + b
    assert a == output_uri(root, "dag", "prep", None, "asset_triggered__2026-11-24T10:15:00.123456+00:00")
    # a logical date wins: reruns and backfills of a date keep replacing one partition
    dated = output_uri(root, "dag", "prep", "2026-11-24T00:00:00+00:00", "manual__2026-11-24T10:15:00+00:00")
    assert dated.endswith("/dag/prep/ds=2026-11-24")
    assert output_uri(root, "dag", "prep", None).endswith("/dag/prep/ds=none")  # a caller that knows neither
    assert output_uri("s3://b/p", "dag", "prep", None, "manual/../x").endswith("/dag/prep/run=manual_.._x")


def test_two_runs_without_a_date_keep_both_outputs(store):
    first = write_shardset(store, output_uri(str(store.root), "dag", "t", None, "asset_triggered__1"), rows=3)
    second = write_shardset(store, output_uri(str(store.root), "dag", "t", None, "asset_triggered__2"), rows=4)
    assert read_table(store, first).num_rows == 9 and read_table(store, second).num_rows == 12


def test_commit_twice_is_refused(store):
    dataset = output_uri(str(store.root), "dag", "t", None)
    writer = ShardWriter(store, dataset)
    info = writer.write_table(0, shard_table(0, 2))
    writer.commit([info], SCHEMA, keep_superseded=True)
    with pytest.raises(CommitConflict):
        writer.commit([info], SCHEMA)


def test_tampered_shard_is_detected(store):
    dataset = output_uri(str(store.root), "dag", "t", None)
    ref = write_shardset(store, dataset, shards=1)
    shard = load_manifest(store, ref).shards[0]
    path = os.path.join(store.resolve(dataset).path, shard.path)
    with open(path, "r+b") as handle:
        handle.seek(10)
        handle.write(b"\x00\x01")
    with pytest.raises(ChecksumMismatch, match="sha256"):
        read_table(store, ref)


def test_xcom_value_stays_small_for_10000_shards(store):
    dataset = output_uri(str(store.root), "dag", "many", None)
    writer = ShardWriter(store, dataset)
    from airflow_bigdata_ai.shards import ShardInfo

    infos = [ShardInfo(writer.shard_path(i), 1, 100, "ab" * 32) for i in range(10_000)]
    ref = writer.commit(infos, SCHEMA)
    small = write_shardset(store, output_uri(str(store.root), "dag", "one", None), shards=1)
    big_bytes, one_bytes = len(ref.to_json().encode()), len(small.to_json().encode())
    print(f"XCom bytes: 1 shard {one_bytes}, 10,000 shards {big_bytes}")
    assert big_bytes < 4096 and one_bytes < 4096
    assert abs(big_bytes - one_bytes) < 64  # only the digits of the counts differ
    assert ShardSet.from_json(ref.to_json()).num_shards == 10_000


def test_pointer_is_json_and_names_the_manifest(store):
    dataset = output_uri(str(store.root), "dag", "t", None)
    ref = write_shardset(store, dataset)
    pointer = json.loads(store.read_bytes(store.resolve(dataset).join("_CURRENT")))
    assert ref.manifest_uri.endswith(pointer["manifest"]) and pointer["sha256"] == ref.manifest_sha256


def _column_chunks(data: memoryview) -> dict[str, object]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_group = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0)
    return {row_group.column(i).path_in_schema: row_group.column(i) for i in range(row_group.num_columns)}


def test_tensor_columns_have_no_dictionary_or_statistics_and_bytes_are_deterministic():
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_bigdata_ai.shards.dataset import encode_parquet

    table = shard_table(0, 50)  # random float32 pixels: LZ4 would not pay
    data = encode_parquet(table)
    assert data == encode_parquet(shard_table(0, 50))
    columns = _column_chunks(data)
    assert columns["image"].compression == "UNCOMPRESSED"
    assert not columns["image"].has_dictionary_page and not columns["image"].is_stats_set
    assert columns["label"].compression == "ZSTD" and columns["label"].is_stats_set
    assert pq.read_table(pa.BufferReader(data)).equals(table)


def test_tensor_columns_that_compress_well_get_lz4():
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_bigdata_ai.shards.dataset import encode_parquet, tensor_codec
    from airflow_bigdata_ai.shards.tensors import encode_tensors

    flat = np.zeros((300, 3, 64, 64), np.uint8)
    flat[:, :, 16:48, 16:48] = np.arange(300, dtype=np.uint8)[:, None, None, None]  # a square on black
    noisy = np.random.default_rng(0).integers(0, 256, flat.shape, dtype=np.uint8)
    assert tensor_codec(pa.chunked_array([encode_tensors(flat)])) == "lz4"
    assert tensor_codec(pa.chunked_array([encode_tensors(noisy)])) == "none"
    assert tensor_codec(pa.chunked_array([encode_tensors(flat[:0])])) == "none"
    table = pa.table({"image": encode_tensors(flat)})
    data = encode_parquet(table)
    assert _column_chunks(data)["image"].compression == "LZ4"
    assert pq.read_table(pa.BufferReader(data)).equals(table)


def test_ray_read_tasks_take_contiguous_near_equal_groups_of_shards():
    from airflow_bigdata_ai.shards.ray_source import _groups

    shards = list(range(10))
    assert _groups(shards, 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]  # type: ignore[arg-type]
    assert _groups(shards, 50) == [[i] for i in shards]  # type: ignore[arg-type]
    assert _groups(shards, 0) == [shards]  # type: ignore[arg-type]


def test_streamed_shard_has_the_bytes_and_checksum_of_the_in_memory_encoding(tmp_path):
    import hashlib

    from airflow_bigdata_ai.shards.dataset import ShardWriter, encode_parquet
    from airflow_bigdata_ai.shards.store import open_store

    store = open_store(str(tmp_path))
    writer = ShardWriter(store, f"{tmp_path}/out")
    table = shard_table(3, 40)
    info = writer.write_table(0, table)
    expected = bytes(encode_parquet(table))
    written = store.read_bytes(writer.dataset.join(info.path))
    assert written == expected
    assert (info.bytes, info.sha256) == (len(expected), hashlib.sha256(expected).hexdigest())


def test_a_failed_streamed_write_publishes_nothing_and_leaves_no_temporary_file(tmp_path):
    import pytest

    from airflow_bigdata_ai.shards.store import open_store

    store = open_store(str(tmp_path))
    with pytest.raises(RuntimeError, match="encoder failed"):
        with store.open_write(f"{tmp_path}/d/part.parquet") as handle:
            handle.write(b"half a shard")
            raise RuntimeError("encoder failed")
    assert list((tmp_path / "d").iterdir()) == []
    with store.open_write(f"{tmp_path}/d/part.parquet") as handle:
        handle.write(b"whole")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["part.parquet"]
    assert store.read_bytes(f"{tmp_path}/d/part.parquet") == b"whole"


def test_large_shards_are_written_in_row_groups_of_at_most_row_group_bytes():
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_bigdata_ai.shards.dataset import ROW_GROUP_BYTES, encode_parquet
    from airflow_bigdata_ai.shards.tensors import encode_tensors

    images = np.random.default_rng(1).integers(0, 256, (100, 3, 128, 128), dtype=np.uint8)  # 4.9 MB
    table = pa.table({"image": encode_tensors(images)})
    assert pq.ParquetFile(pa.BufferReader(encode_parquet(table))).metadata.num_row_groups == 1
    big = pa.concat_tables([table] * 15)  # 73.7 MB
    meta = pq.ParquetFile(pa.BufferReader(encode_parquet(big))).metadata
    rows_per_group = ROW_GROUP_BYTES * big.num_rows // big.nbytes  # 682 rows of 48 KiB
    assert meta.num_row_groups == 3 and meta.row_group(0).num_rows == rows_per_group
    assert pq.read_table(pa.BufferReader(encode_parquet(big))).equals(big)


ENCODER_PEAK = """
import io, numpy as np, pyarrow as pa
from airflow_bigdata_ai.shards.dataset import write_parquet
from airflow_bigdata_ai.shards.tensors import encode_tensors
images = np.random.default_rng(2).integers(0, 256, (600, 3, 128, 128), dtype=np.uint8)  # 29.5 MB, one row group
table = pa.table({"record_id": [f"r{i}" for i in range(600)], "image": encode_tensors(images)})
sink = io.BytesIO()
write_parquet(table, sink)
print(pa.default_memory_pool().max_memory(), len(sink.getvalue()))
"""


def test_encoding_buffers_stay_near_one_page_however_large_the_row_group():
    """The encoder holds one batch of rows before it cuts a page: batches of ~1 MB, not whole row groups.

    It allocates from Arrow's default pool, whose peak is only meaningful in a fresh process.
    """
    import subprocess
    import sys

    from airflow_bigdata_ai.shards.dataset import PAGE_BYTES

    out = subprocess.run([sys.executable, "-c", ENCODER_PEAK], check=True, capture_output=True, text=True)
    peak, size = (int(v) for v in out.stdout.split())
    assert size > 29_000_000
    assert peak < 4 * PAGE_BYTES, f"encoder peak {peak} bytes"


def test_reading_a_shard_leaves_no_arrow_reference_to_the_python_bytes(store, tmp_path):
    """Arrow's pool threads released the last reference late, at exit that aborted the process (exit -6)."""
    import sys

    import pyarrow.parquet as pq

    from airflow_bigdata_ai.shards.arrow_io import parquet_table

    table = shard_table(0, 200)
    pq.write_table(table, tmp_path / "one.parquet")
    blob = (tmp_path / "one.parquet").read_bytes()
    late = 0
    for _ in range(200):
        data = bytes(bytearray(blob))  # a fresh object: its refcount is ours alone
        before = sys.getrefcount(data)
        read = parquet_table(data)
        late += sys.getrefcount(data) != before
        assert read.equals(table)
        del read
    assert late == 0, f"{late} of 200 reads left the bytes referenced from Arrow after they returned"
