"""Small helpers to build real shard sets in tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from airflow_bigdata_ai.shards import ShardSet, ShardStore, ShardWriter, encode_tensors, tensor_field
from airflow_bigdata_ai.shards.refs import Producer

SCHEMA = pa.schema(
    [pa.field("record_id", pa.string()), tensor_field("image", (1, 4, 4), "float32"), pa.field("label", pa.int64())]
)


def shard_table(index: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(index)
    images = rng.random((rows, 1, 4, 4), dtype=np.float32)
    return pa.table(
        {
            "record_id": [f"r{index:05d}-{i:04d}" for i in range(rows)],
            "image": encode_tensors(images),
            "label": pa.array(rng.integers(0, 10, rows), pa.int64()),
        },
        schema=SCHEMA,
    )


def write_shardset(store: ShardStore, dataset_uri: str, shards: int = 3, rows: int = 5, **kw: object) -> ShardSet:
    writer = ShardWriter(store, dataset_uri, **kw)  # type: ignore[arg-type]
    infos = [writer.write_table(i, shard_table(i, rows)) for i in range(shards)]
    return writer.commit(infos, SCHEMA, Producer("dag", "task", "run", "2026-11-24T00:00:00+00:00", 1))
