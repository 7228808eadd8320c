"""A ShardSet written from Spark (executors) reads back identically in Ray, and the reverse.

Both engines use the same ShardWriter on the same store; the rows compared include the tensor cells.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import partial

import pyarrow as pa
import pytest

from airflow_bigdata_ai.shards import (
    ShardInfo,
    ShardWriter,
    open_store,
    output_uri,
    read_ray_dataset,
    read_table,
    shard_uris,
)
from tests.unit import shard_helpers
from tests.unit.shard_helpers import SCHEMA, shard_table

pytestmark = pytest.mark.integration
SHARDS, ROWS = 4, 25


def _write_partition(writer: ShardWriter, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Runs on the Spark executors: each shard index of the partition becomes one shard file."""
    for batch in batches:
        for index in batch.column("shard").to_pylist():
            info = writer.write_table(index, shard_table(index, ROWS))
            yield pa.RecordBatch.from_pylist(
                [{"path": info.path, "rows": info.rows, "bytes": info.bytes, "sha256": info.sha256}]
            )


def _rows(table: pa.Table) -> list[dict]:
    return sorted(table.select(["record_id", "image", "label"]).to_pylist(), key=lambda r: r["record_id"])


def _ship_test_code_by_value() -> None:
    """Executors and Ray workers cannot import the tests package: send its functions by value."""
    from pyspark import cloudpickle as spark_pickle
    from ray import cloudpickle as ray_pickle

    for module in (sys.modules[__name__], shard_helpers):
        spark_pickle.register_pickle_by_value(module)
        ray_pickle.register_pickle_by_value(module)


def test_spark_written_shardset_reads_identically_in_ray(attached, tmp_path):
    import ray
    import ray.data

    _ship_test_code_by_value()
    store = open_store(str(tmp_path))
    writer = ShardWriter(store, output_uri(str(tmp_path), "engines", "spark_to_ray", None))
    spark = attached.spark()
    summary = (
        spark.range(SHARDS)
        .selectExpr("cast(id as int) as shard")
        .repartition(2)
        .mapInArrow(partial(_write_partition, writer), "path string, rows long, bytes long, sha256 string")
        .collect()
    )
    ref = writer.commit([ShardInfo(**row.asDict()) for row in summary], SCHEMA)
    assert (ref.num_rows, ref.num_shards) == (SHARDS * ROWS, SHARDS)

    attached.ray()
    expected = pa.concat_tables([shard_table(i, ROWS) for i in range(SHARDS)])
    # the provider's reader (what RayTrainOperator uses): one block per shard, in manifest order. Ray only
    # keeps the read tasks' order when asked to (by default a faster task's blocks may come first).
    context = ray.data.DataContext.get_current()
    preserve = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        ours = pa.concat_tables(ray.get(read_ray_dataset(store, ref, read_tasks=3).to_arrow_refs()))
    finally:
        context.execution_options.preserve_order = preserve
    assert (
        ours.select(["record_id", "image", "label"]).to_pylist()
        == expected.select(["record_id", "image", "label"]).to_pylist()
    )
    # and a plain Ray Data read of the same files agrees
    paths = [store.arrow_path(uri) for uri in shard_uris(store, ref)]
    from_ray = ray.data.read_parquet(paths, filesystem=store.arrow_filesystem()).to_arrow_refs()
    ray_table = pa.concat_tables(ray.get(from_ray))
    assert _rows(ray_table) == _rows(read_table(store, ref)) == _rows(expected)


def test_ray_reader_projects_columns_and_refuses_a_tampered_shard(attached, tmp_path):
    import ray

    store = open_store(str(tmp_path))
    writer = ShardWriter(store, output_uri(str(tmp_path), "engines", "tampered", None))
    ref = writer.commit([writer.write_table(i, shard_table(i, ROWS)) for i in range(SHARDS)], SCHEMA)
    attached.ray()
    dataset = read_ray_dataset(store, ref, ["label"])
    assert dataset.count() == SHARDS * ROWS
    assert dataset.schema().names == ["label"]
    with pytest.raises(KeyError, match="no column"):
        read_ray_dataset(store, ref, ["nope"])

    victim = shard_uris(store, ref)[2]
    data = bytearray(store.read_bytes(victim))
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(victim, bytes(data))
    with pytest.raises(Exception, match="sha256"):
        ray.get(read_ray_dataset(store, ref).to_arrow_refs())


def test_ray_written_shardset_reads_identically_in_spark(attached, tmp_path):
    import ray

    _ship_test_code_by_value()
    store = open_store(str(tmp_path))
    writer = ShardWriter(store, output_uri(str(tmp_path), "engines", "ray_to_spark", None))
    attached.ray()

    @ray.remote(num_cpus=1)
    def write(w: ShardWriter, index: int) -> ShardInfo:
        return w.write_table(index, shard_table(index, ROWS))

    infos = ray.get([write.remote(writer, i) for i in range(SHARDS)])
    ref = writer.commit(infos, SCHEMA)

    spark = attached.spark()
    paths = [store.resolve(uri).path for uri in shard_uris(store, ref)]
    spark_table = spark.read.parquet(*paths).toArrow()
    expected = pa.concat_tables([shard_table(i, ROWS) for i in range(SHARDS)])
    assert _rows(spark_table) == _rows(read_table(store, ref)) == _rows(expected)
