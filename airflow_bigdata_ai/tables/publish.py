"""Publish a ShardSet as one partition of a Spark table, replacing that partition atomically.

Each publish writes a complete new version of the partition's files into a directory of its own
(``<table location>/_versions/<column>=<value>/<publish id>``; Spark ignores paths starting with ``_``
when it lists a table), then points the partition at it in the metastore with one ``ALTER TABLE ...
PARTITION ... SET LOCATION``. A query resolves a partition's location once, so a reader during a rerun
sees the old version or the new one, never a mix, and other partitions are never touched. The version
that was current before is kept for readers still running on it; older ones are deleted.

The shard files are read by the Spark executors through the shard store (``file://`` or ``s3://``, with
the store's credentials), so no row passes through the caller.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from airflow_bigdata_ai.shards.dataset import load_manifest, read_shard
from airflow_bigdata_ai.shards.refs import ShardSet
from airflow_bigdata_ai.shards.tensors import tensor_spec

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from airflow_bigdata_ai.shards.store import ShardStore

log = logging.getLogger(__name__)

VERSIONS = "_versions"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class PublishedPartition:
    """What a publish did: which partition of which table now points where, with how many rows."""

    table: str
    partition_column: str
    partition_value: str
    location: str
    rows: int
    columns: list[str]
    replaced: str | None  # the location the partition had before, if any
    table_location: str = ""
    schema: dict[str, str] = field(default_factory=dict)  # column -> Spark type, the partition column last

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def table_columns(schema: pa.Schema, columns: list[str] | None = None) -> list[str]:
    """The columns a table gets: ``columns`` as given, else every column that is not a tensor."""
    if columns:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(f"columns {missing} are not in the shard set; it has {schema.names}")
        return list(columns)
    return [f.name for f in schema if tensor_spec(f) is None]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_names(table: str, partition_column: str, columns: list[str]) -> None:
    if not _NAME.match(table):
        raise ValueError(f"table name {table!r} is not [catalog.][database.]table of letters, digits and _")
    for name in [partition_column, *columns]:
        if not _COLUMN.match(name):
            raise ValueError(f"column name {name!r} is not letters, digits and _")
    if partition_column in columns:
        raise ValueError(f"the partition column {partition_column!r} is also a data column; drop it or rename")


def _read_shards(
    store: ShardStore, dataset_uri: str, shards: list[Any], columns: list[str]
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def read_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column("id").to_pylist():
                yield from read_shard(store, dataset_uri, shards[int(index)]).select(columns).to_batches()

    return read_fn


def table_location(
    spark: SparkSession, table: str, partition: str | None = None, *, missing_ok: bool = False
) -> str | None:
    """The table's (or one partition's) location; ``None`` for a partition that does not exist (and, with
    ``missing_ok``, for a table that does not)."""
    query = f"DESCRIBE TABLE EXTENDED {table}" + (f" PARTITION ({partition})" if partition else "")
    try:
        rows = spark.sql(query).collect()
    except Exception as exc:
        text = str(exc).upper()
        if (partition and "PARTITION" in text and "NOT" in text) or missing_ok:
            return None
        raise
    # with a partition, its own "Location" comes first (the table's follows under "Storage Information")
    found = [r for r in rows if str(r[0]).strip() == "Location"]
    return str(found[0][1]).strip() if found else None


def publish_partition(
    spark: SparkSession,
    store: ShardStore,
    shardset: ShardSet | dict[str, Any] | str,
    table: str,
    partition_value: str,
    *,
    partition_column: str = "ds",
    columns: list[str] | None = None,
) -> PublishedPartition:
    """Make ``shardset`` the ``partition_column=partition_value`` partition of ``table`` (created if missing).

    The table is a Parquet table of the shard set's plain columns plus the partition column (string).
    Rerunning with the same value replaces only that partition, atomically for readers.
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    shardset = ShardSet.coerce(shardset)
    manifest = load_manifest(store, shardset)  # verified against the reference before anything is written
    schema = manifest.pa_schema()
    names = table_columns(schema, columns)
    _check_names(table, partition_column, names)
    data_schema = pa.schema([schema.field(n) for n in names])
    spark_schema = from_arrow_schema(data_schema)
    ddl = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in spark_schema.fields)
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {table} ({ddl}, `{partition_column}` STRING) "
        f"USING parquet PARTITIONED BY (`{partition_column}`)"
    )
    existing = [c for c in spark.table(table).columns if c != partition_column]
    if existing != names:
        raise ValueError(f"table {table} has columns {existing}; the shard set would publish {names}")
    base = table_location(spark, table)
    if not base:
        raise RuntimeError(f"table {table} has no location in the catalog")
    spec = f"`{partition_column}` = {_quote(partition_value)}"
    publish_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    version_root = f"{base.rstrip('/')}/{VERSIONS}/{partition_column}={partition_value}"
    location = f"{version_root}/{publish_id}"
    shards = list(manifest.shards)
    if shards:
        frame = spark.range(0, len(shards), 1, len(shards)).mapInArrow(
            _read_shards(store, shardset.dataset_uri, shards, names), spark_schema
        )
    else:
        frame = spark.createDataFrame([], spark_schema)
    frame.write.mode("error").parquet(location)  # a complete version before anything points at it
    previous = table_location(spark, table, spec)
    spark.sql(f"ALTER TABLE {table} ADD IF NOT EXISTS PARTITION ({spec}) LOCATION {_quote(location)}")
    spark.sql(f"ALTER TABLE {table} PARTITION ({spec}) SET LOCATION {_quote(location)}")
    spark.sql(f"REFRESH TABLE {table}")
    _drop_old_versions(spark, version_root, keep={location, previous or ""})
    log.info(
        "published %d rows as %s of %s at %s%s", manifest.num_rows, spec, table, location,
        f" (replacing {previous})" if previous else "",
    )  # fmt: skip
    types = {f.name: f.dataType.simpleString() for f in spark_schema.fields} | {partition_column: "string"}
    return PublishedPartition(
        table, partition_column, partition_value, location, manifest.num_rows, names, previous, base, types
    )


def _arrow_uri(location: str) -> str:
    """Hadoop writes local paths as ``file:/x``; pyarrow wants ``file:///x``."""
    if location.startswith("file:/") and not location.startswith("file:///"):
        return "file://" + location[len("file:") :]
    return location


def _drop_old_versions(spark: SparkSession, version_root: str, keep: set[str]) -> None:
    """Delete this partition's versions but the current one and the one before. Runs as a one-task Spark
    job with pyarrow's filesystems (the versions live where the executors write: the warehouse, not the
    caller's disk). Best effort: a version left behind costs space, never correctness."""
    kept = sorted(k.rstrip("/") for k in keep if k)

    def delete_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.fs as pafs

        for _ in batches:
            filesystem, root = pafs.FileSystem.from_uri(_arrow_uri(version_root))
            names = {k.rsplit("/", 1)[-1] for k in kept}
            removed = []
            for info in filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
                if info.type == pafs.FileType.Directory and info.base_name not in names:
                    filesystem.delete_dir(info.path)
                    removed.append(info.base_name)
            yield pa.RecordBatch.from_pylist([{"removed": ",".join(removed)}])

    try:
        rows = spark.range(0, 1, 1, 1).mapInArrow(delete_fn, "removed string").collect()
        removed = rows[0]["removed"] if rows else ""
        if removed:
            log.info("removed old versions %s under %s", removed, version_root)
    except Exception:
        log.warning("could not remove old versions under %s", version_root, exc_info=True)
