"""Table and SQL sources: the query runs on the shared Spark application and is cut into shards there.

Nothing is collected to the driver or the task. One Spark job counts the rows (the shard count follows
from it, as for files); a second gives every row an id (its ``id_column``, else the sha256 of its values),
assigns it to shard ``xxhash64(id) mod shards`` and hash-partitions by shard; each task builds and writes
the shards it holds, rows sorted by id. The same rows therefore give the same shard files whatever the
query plan, the partitioning of the table or the number of executors: a rerun for the same date writes the
same checksums.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_bigdata_ai.preprocess.errors import QueryError, SourceError
from airflow_bigdata_ai.preprocess.process import SUMMARY_DDL, SUMMARY_SCHEMA, PreprocessJob
from airflow_bigdata_ai.preprocess.sources import SourceSpec, shard_count

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

ID_COLUMN = "_abai_record_id"
SHARD_COLUMN = "_abai_shard"


def source_frame(spark: SparkSession, spec: SourceSpec) -> DataFrame:
    """The source's rows as a DataFrame (``columns`` selects); an unknown table or bad SQL raises QueryError."""
    try:
        frame = spark.table(spec.table) if spec.table else spark.sql(str(spec.sql))
        if spec.columns:
            frame = frame.select(*spec.columns)
        frame.schema  # noqa: B018  (analysis: a syntax error or a missing table or column raises here)
    except Exception as exc:
        if _is_analysis_error(exc):
            raise QueryError(f"Spark cannot run the {spec.describe()}: {_first_lines(exc)}") from None
        raise
    return frame


def _is_analysis_error(exc: Exception) -> bool:
    from pyspark.errors import AnalysisException, ParseException

    return isinstance(exc, (AnalysisException, ParseException))


def _first_lines(exc: Exception, lines: int = 3) -> str:
    return "\n".join(str(exc).strip().splitlines()[:lines])


def with_ids_and_shards(frame: DataFrame, spec: SourceSpec, shards: int) -> DataFrame:
    """The frame with a string id per row and its shard, hash-partitioned by shard."""
    from pyspark.sql import functions as F

    if spec.id_column:
        if spec.id_column not in frame.columns:
            raise QueryError(f"id_column {spec.id_column!r} is not a column of the {spec.describe()}: {frame.columns}")
        ids = F.col(spec.id_column).cast("string")
    else:
        ids = F.sha2(F.to_json(F.struct(*[F.col(c) for c in frame.columns])), 256)
    return (
        frame.withColumn(ID_COLUMN, ids)
        .withColumn(SHARD_COLUMN, F.pmod(F.xxhash64(F.col(ID_COLUMN)), F.lit(shards)).cast("int"))
        .repartition(shards, SHARD_COLUMN)
    )


def rows_by_shard(table: pa.Table) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """A partition's rows grouped by shard (ascending), each as units of :meth:`PreprocessJob.build_shard`.

    Ids that repeat within a shard (identical rows without an ``id_column``) get ``#1``, ``#2``... in the
    order of their values, so record ids stay unique and the shard's bytes do not depend on arrival order.
    """
    shards = table.column(SHARD_COLUMN)
    for shard in sorted(set(shards.to_pylist())):
        part = table.filter(pc.equal(shards, shard)).drop_columns([SHARD_COLUMN])
        rows = part.to_pylist()
        rows.sort(key=lambda r: (r[ID_COLUMN], repr(sorted(r.items(), key=lambda kv: kv[0]))))
        units: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        for row in rows:
            base = str(row.pop(ID_COLUMN))
            seen[base] = seen.get(base, -1) + 1
            record_id = base if seen[base] == 0 else f"{base}#{seen[base]}"
            units.append({"record_id": record_id, "uri": None, "label": None, "label_error": None, "row": row})
        yield int(shard), units


def _shard_partition(job: PreprocessJob) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def process_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        received = list(batches)
        if not received or not sum(b.num_rows for b in received):
            return
        for shard, units in rows_by_shard(pa.Table.from_batches(received)):
            summary = job.write_shard(job.build_shard(shard, units))
            yield from pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA).to_batches()

    return process_fn


def run_query(
    spark: SparkSession, job: PreprocessJob, rows_per_shard: int, parallelism: int | None = None
) -> tuple[list[dict[str, Any]], int, int]:
    """Run a table or SQL source's job; returns (summary rows, input rows, shards)."""
    start = time.monotonic()
    frame = source_frame(spark, job.source)
    rows = frame.count()
    if rows == 0:
        raise SourceError(f"the {job.source.describe()} returned no rows")
    shards = shard_count(rows, rows_per_shard, parallelism or 1)
    plan = with_ids_and_shards(frame, job.source, shards).mapInArrow(_shard_partition(job), SUMMARY_DDL)
    summary = [row.asDict() for row in plan.toLocalIterator()]
    log.info(
        "preprocess: %d rows of the %s in %d shards, %.1f s", rows, job.source.describe(), shards,
        time.monotonic() - start,
    )  # fmt: skip
    return summary, rows, shards
