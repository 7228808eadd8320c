"""Engines that run a :class:`ShardJob`: Spark (through Spark Connect) and in-process.

The Spark plan uses only DataFrame APIs that work over Spark Connect (no SparkContext, no RDDs):
a one-row seed -> ``mapInArrow`` listing on an executor -> ``cache`` -> ``repartitionByRange``
on the shard number -> ``mapInArrow`` that writes shards and returns summary rows, streamed back with
``toLocalIterator`` so the task log shows progress while the job runs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from airflow_bigdata_ai.preprocess.errors import SourceError
from airflow_bigdata_ai.preprocess.process import SUMMARY_DDL, ShardJob
from airflow_bigdata_ai.preprocess.sources import UNIT_DDL, UNIT_SCHEMA, list_units

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """What the progress callback receives after each finished shard."""

    rows_done: int
    rows_total: int
    shards_done: int
    shards_total: int
    elapsed_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.rows_done}/{self.rows_total} inputs, {self.shards_done}/{self.shards_total} shards, "
            f"{self.rows_per_s:.1f} rows/s"
        )


ProgressCallback = Callable[[Progress], None]


def log_progress(progress: Progress) -> None:
    log.info("preprocess progress: %s", progress)


class _Throttle:
    """Calls the callback at most every ``interval_s`` seconds, and always for the last shard."""

    def __init__(self, callback: ProgressCallback | None, interval_s: float) -> None:
        self.callback = callback
        self.interval_s = interval_s
        self.last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        final = progress.shards_done >= progress.shards_total
        if self.callback is not None and (final or now - self.last >= self.interval_s):
            self.last = now
            self.callback(progress)


def run_local(
    job: ShardJob, rows_per_shard: int, progress: ProgressCallback | None = None, interval_s: float = 2.0
) -> list[dict[str, Any]]:
    """The same job in this process (notebooks, tests, the benchmark's engine-free reference)."""
    start = time.monotonic()
    units = list_units(job.source, job.source_store, rows_per_shard)
    by_shard: dict[int, list[dict[str, Any]]] = {}
    for unit in units.to_pylist():
        by_shard.setdefault(unit["shard"], []).append(unit)
    throttle = _Throttle(progress, interval_s)
    rows: list[dict[str, Any]] = []
    done = 0
    for count, shard in enumerate(sorted(by_shard), start=1):
        summary = job.process_shard(shard, by_shard[shard])
        rows.extend(summary)
        done += int(summary[0]["inputs"])
        throttle(Progress(done, units.num_rows, count, len(by_shard), time.monotonic() - start))
    return rows


def _list_partition(
    job: ShardJob, rows_per_shard: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def list_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        seeds = sum(batch.num_rows for batch in batches)
        if seeds:
            yield from list_units(job.source, job.source_store, rows_per_shard).to_batches(max_chunksize=8192)

    return list_fn


def _process_partition(job: ShardJob) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def process_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(list(batches), schema=UNIT_SCHEMA)
        if table.num_rows:
            yield from job.process_units(table).to_batches()

    return process_fn


def _installed(module_file: str | None) -> bool:
    """True for code every executor can import: site-packages, and this package itself."""
    if not module_file:
        return True  # built-in or namespace module
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.abspath(module_file)
    return (
        "site-packages" in path.split(os.sep) or "dist-packages" in path.split(os.sep) or path.startswith(package_root)
    )


def ship_by_value(transform: object) -> None:
    """Make a user callable from a DAG file, notebook or test module travel by value to the executors.

    cloudpickle pickles functions of importable modules by reference; DAG files (loaded by Airflow under
    generated module names) and test modules are importable on the driver only.
    """
    if not callable(transform) or isinstance(transform, type):
        return
    name = getattr(transform, "__module__", None)
    module = sys.modules.get(name or "")
    if module is None or name == "__main__" or _installed(getattr(module, "__file__", None)):
        return
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(module)


def _reraise_source_error(exc: Exception) -> None:
    """Executor exceptions arrive as Spark errors with the Python traceback in the text."""
    text = str(exc)
    marker = "SourceError: "
    if marker in text:
        message = text.split(marker, 1)[1].splitlines()[0]
        raise SourceError(message) from exc


def run_spark(
    spark: SparkSession,
    job: ShardJob,
    rows_per_shard: int,
    *,
    tag: str | None = None,
    progress: ProgressCallback | None = None,
    interval_s: float = 2.0,
) -> list[dict[str, Any]]:
    """Run ``job`` data-parallel; returns the summary rows. ``tag`` lets ``interruptTag`` cancel just this."""
    start = time.monotonic()
    ship_by_value(job.transform)
    listing: Any = None
    if tag:
        spark.addTag(tag)
    try:
        try:
            seed = spark.createDataFrame([(0,)], "seed int")
            # cache(), not localCheckpoint(): pyspark 4.3's Connect client binds checkpointed DataFrames to the
            # process's *active* session, which breaks when a process holds several sessions (tests, notebooks).
            listing = seed.mapInArrow(_list_partition(job, rows_per_shard), UNIT_DDL).cache()
            counts = listing.selectExpr("count(1) AS n", "coalesce(max(shard), -1) + 1 AS shards").collect()[0]
            total, shards = int(counts["n"]), int(counts["shards"])
            log.info(
                "preprocess: %d inputs in %d shards from %s (listed in %.1f s)",
                total,
                shards,
                job.source.uri,
                time.monotonic() - start,
            )
            summary = listing.repartitionByRange(max(shards, 1), "shard").mapInArrow(
                _process_partition(job), SUMMARY_DDL
            )
            throttle = _Throttle(progress, interval_s)
            rows: list[dict[str, Any]] = []
            done = shards_done = 0
            for row in summary.toLocalIterator():
                record = row.asDict()
                rows.append(record)
                if record["kind"] == "shard":
                    done += int(record["inputs"])
                    shards_done += 1
                    throttle(Progress(done, total, shards_done, shards, time.monotonic() - start))
        except Exception as exc:
            _reraise_source_error(exc)
            raise
    finally:
        if listing is not None:
            try:
                listing.unpersist()
            except Exception:  # the session may be gone (interrupted, stopped): the server drops its cache then
                log.debug("unpersist of the listing failed", exc_info=True)
        if tag:
            spark.removeTag(tag)
    return rows
