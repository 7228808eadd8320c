"""Engines that run a :class:`ShardJob`: Spark (through Spark Connect) and in-process.

The Spark plan uses only DataFrame APIs that work over Spark Connect (no SparkContext, no RDDs):
a one-row seed -> ``mapInArrow`` that lists the source on an executor and stages each shard's units as a
small Parquet file in the attempt's staging area -> ``spark.range(shards, numPartitions=shards)`` ->
``mapInArrow`` in which task *i* reads shard *i*'s units, writes that shard and returns summary rows,
streamed back with ``toLocalIterator`` so the task log shows progress while the job runs. One shard per
task, exactly: range partitioning of the listing by shard number put two shards in one task and left
another core idle (6 shards -> 5 tasks, measured).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_bigdata_ai.preprocess.errors import SourceError
from airflow_bigdata_ai.preprocess.process import SUMMARY_DDL, ShardJob
from airflow_bigdata_ai.preprocess.sources import list_units
from airflow_bigdata_ai.shards.dataset import encode_parquet
from airflow_bigdata_ai.shards.paths import StoreURI

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


LISTING_DDL = "inputs long, shards long"


def staged_units_uri(job: ShardJob, shard: int) -> StoreURI:
    """Where the listing stages shard ``shard``'s units: beside the attempt's shards, removed after the job."""
    return job.writer.dataset.join(job.writer.shard_path(shard, ".units.parquet"))


def stage_units(job: ShardJob, units: pa.Table) -> int:
    """Write each shard's units to its staging file; returns the number of shards."""
    ids = units.column("shard").to_numpy()
    order = np.argsort(ids, kind="stable")
    units, ids = units.take(order), ids[order]
    shards, starts = np.unique(ids, return_index=True)
    ends = [*starts[1:], len(ids)]
    for shard, start, end in zip(shards, starts, ends, strict=True):
        data = encode_parquet(units.slice(int(start), int(end - start)))
        job.writer.store.write_bytes(staged_units_uri(job, int(shard)), data)
    return len(shards)


def _list_partition(
    job: ShardJob, rows_per_shard: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def list_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        seeds = sum(batch.num_rows for batch in batches)
        if seeds:
            units = list_units(job.source, job.source_store, rows_per_shard)
            shards = stage_units(job, units)
            yield pa.RecordBatch.from_pylist([{"inputs": units.num_rows, "shards": shards}])

    return list_fn


def _process_partition(job: ShardJob) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def process_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for shard in batch.column("id").to_pylist():
                data = job.writer.store.read_bytes(staged_units_uri(job, int(shard)))
                yield from job.process_units(pq.read_table(pa.BufferReader(data))).to_batches()

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
    shards = 0
    if tag:
        spark.addTag(tag)
    try:
        try:
            seed = spark.createDataFrame([(0,)], "seed int")
            counts = seed.mapInArrow(_list_partition(job, rows_per_shard), LISTING_DDL).collect()[0]
            total, shards = int(counts["inputs"]), int(counts["shards"])
            log.info(
                "preprocess: %d inputs in %d shards from %s (listed in %.1f s)",
                total,
                shards,
                job.source.uri,
                time.monotonic() - start,
            )
            summary = spark.range(0, shards, 1, max(shards, 1)).mapInArrow(_process_partition(job), SUMMARY_DDL)
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
        if shards:  # staging only: the shards and the manifest never reference these files
            try:
                job.writer.store.delete([staged_units_uri(job, shard) for shard in range(shards)])
            except Exception:  # a leftover staging file is harmless; do not hide the job's own error
                log.warning("could not remove the staged listing of %s", job.writer.dataset, exc_info=True)
        if tag:
            spark.removeTag(tag)
    return rows
