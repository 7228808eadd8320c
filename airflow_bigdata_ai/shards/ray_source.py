"""A committed ShardSet as a Ray Dataset, read by the cluster straight from the shard store.

Why not ``ray.data.read_parquet``: the manifest already lists every shard with its rows, bytes and sha256,
so there is nothing to list or sample, and each shard is one read that is checked against the manifest.
Measured on this machine (3,000 x 3x64x64 float32 in 16 shards, 147 MB, read and decoded in the consuming
process): ``read_parquet`` 4.1-4.6 s; this source 0.8-1.1 s with one read task per shard and 0.40-0.42 s with
two read tasks per CPU (the default), against 0.27-0.29 s for the same arrays already in the object store.
Ray is imported lazily, so the shards package stays importable without it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from airflow_bigdata_ai.shards.dataset import ShardInfo, load_manifest, read_shard
from airflow_bigdata_ai.shards.refs import ShardSet
from airflow_bigdata_ai.shards.store import ShardStore


def _read_shards(
    store: ShardStore, dataset_uri: str, shards: Sequence[ShardInfo], columns: list[str] | None, verify: bool
) -> Iterator[pa.Table]:
    """Runs in a Ray task: one block per shard, checksum-verified, projected to ``columns``."""
    for shard in shards:
        table = read_shard(store, dataset_uri, shard, verify=verify)
        yield table.select(columns) if columns else table


def _groups(shards: Sequence[ShardInfo], count: int) -> list[list[ShardInfo]]:
    """``count`` contiguous, near-equal groups (shard order, and so row order, is kept)."""
    count = max(1, min(count, len(shards)))
    size, extra = divmod(len(shards), count)
    groups, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        groups.append(list(shards[start:end]))
        start = end
    return groups


def shardset_datasource(
    store: ShardStore,
    shardset: ShardSet | dict[str, Any] | str,
    columns: list[str] | None = None,
    *,
    verify: bool = True,
) -> Any:
    """A ``ray.data.Datasource`` over the shards of ``shardset`` (the manifest is read once, here)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    shardset = ShardSet.coerce(shardset)
    manifest = load_manifest(store, shardset)
    schema = manifest.pa_schema()
    if columns:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise KeyError(f"{shardset.dataset_uri} has no column(s) {missing}; it has {schema.names}")
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    dataset_uri = shardset.dataset_uri

    class ShardSetDatasource(Datasource):  # type: ignore[misc]
        def get_name(self) -> str:
            return "ShardSet"

        def estimate_inmemory_data_size(self) -> int:
            return manifest.total_bytes

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[Any]:
            tasks = []
            for group in _groups(manifest.shards, parallelism):
                metadata = BlockMetadata(
                    num_rows=sum(s.rows for s in group),
                    size_bytes=sum(s.bytes for s in group),
                    exec_stats=None,
                    input_files=tuple(str(store.resolve(dataset_uri).join(s.path)) for s in group),
                )
                read = functools.partial(_read_shards, store, dataset_uri, group, columns, verify)
                tasks.append(ReadTask(read, metadata, schema=schema, per_task_row_limit=per_task_row_limit))
            return tasks

    return ShardSetDatasource()


def read_ray_dataset(
    store: ShardStore,
    shardset: ShardSet | dict[str, Any] | str,
    columns: list[str] | None = None,
    *,
    verify: bool = True,
    read_tasks: int | None = None,
) -> Any:
    """A lazy ``ray.data.Dataset`` of ``shardset``: the shards are read by Ray tasks, never by this process.

    Tensor columns stay binary with their shape/dtype in the schema metadata; decode them in the consumer
    with :func:`airflow_bigdata_ai.shards.decode_tensors`. Requires a connected Ray (``ray.init``).
    ``read_tasks`` defaults to two per CPU of the cluster: per-task overhead dominates with one per shard.
    Each read task still yields one block per shard, so consumers can split the stream finely.
    """
    import ray
    import ray.data

    source = shardset_datasource(store, shardset, columns, verify=verify)
    if read_tasks is None:
        read_tasks = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    return ray.data.read_datasource(source, override_num_blocks=read_tasks)
