"""Engines that run a :class:`PreprocessJob`: Spark (through Spark Connect) and in-process.

The Spark plan uses only DataFrame APIs that work over Spark Connect (no SparkContext, no RDDs). With a
known ``parallelism`` (the cores of the executors) it is one job: ``spark.range(tasks, numPartitions=tasks)``
-> ``mapInArrow`` in which every task lists the source on its executor, keeps its contiguous run of shards
and writes them one after the other, returning summary rows and a fingerprint of its listing (the driver
refuses differing listings). One task per shard ran 5 Python workers on 2 cores and spent ~20% more CPU
(Spark's per-task cost, cache contention) than 2 workers writing 3 shards each; a separate listing job
cost ~0.15 s of scheduling for ~10 ms of listing (measured). Without ``parallelism``: a listing job stages
each shard's units in the attempt's staging area, then one task per shard. Tasks post the inputs they
have done on the progress channel every stage uses (:mod:`airflow_bigdata_ai.shards.progress`), which
the driver tails, so the task log shows progress while long tasks run (Spark returns a task's rows only
when it ends).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from airflow_bigdata_ai.preprocess.errors import SourceError, SourceLayoutError
from airflow_bigdata_ai.preprocess.process import SUMMARY_DDL, SUMMARY_SCHEMA, PreprocessJob
from airflow_bigdata_ai.preprocess.sources import units_by_shard
from airflow_bigdata_ai.shards.arrow_io import parquet_table
from airflow_bigdata_ai.shards.dataset import encode_parquet
from airflow_bigdata_ai.shards.job import spark_tagged
from airflow_bigdata_ai.shards.paths import StoreURI
from airflow_bigdata_ai.usercode import UserCodeError

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
    """Calls the callback at most every ``interval_s`` seconds, and always for the last shard. Thread-safe."""

    def __init__(self, callback: ProgressCallback | None, interval_s: float) -> None:
        self.callback = callback
        self.interval_s = interval_s
        self.last = 0.0
        self.lock = threading.Lock()

    def __call__(self, progress: Progress) -> None:
        with self.lock:
            now = time.monotonic()
            final = progress.shards_done >= progress.shards_total
            if self.callback is not None and (final or now - self.last >= self.interval_s):
                self.last = now
                self.callback(progress)


def run_local(
    job: PreprocessJob,
    rows_per_shard: int,
    parallelism: int = 1,
    progress: ProgressCallback | None = None,
    interval_s: float = 2.0,
) -> list[dict[str, Any]]:
    """The same job in this process (notebooks, tests); ``parallelism`` only shapes the shards, as on Spark."""
    start = time.monotonic()
    units = job.list_units(rows_per_shard, parallelism)
    by_shard = units_by_shard(units)
    throttle = _Throttle(progress, interval_s)
    rows: list[dict[str, Any]] = []
    done = 0
    for count, shard in enumerate(by_shard, start=1):
        summary = job.process_shard(shard, by_shard[shard])
        rows.extend(summary)
        done += int(summary[0]["inputs"])
        throttle(Progress(done, units.num_rows, count, len(by_shard), time.monotonic() - start))
    return rows


LISTING_DDL = "inputs long, shards long"
PROGRESS_WRITE_S = 1.0


def staged_units_uri(job: PreprocessJob, shard: int) -> StoreURI:
    """Where the listing stages shard ``shard``'s units: beside the attempt's shards, removed after the job."""
    return job.writer.dataset.join(job.writer.shard_path(shard, ".units.parquet"))


def task_shards(task: int, shards: int, tasks: int) -> range:
    """Task ``task``'s contiguous run of shards: ``shards`` split into ``tasks`` runs differing by at most one."""
    return range(task * shards // tasks, (task + 1) * shards // tasks)


def stage_units(job: PreprocessJob, units: pa.Table) -> int:
    """Write each shard's units to its staging file; returns the number of shards."""
    by_shard = units_by_shard(units)
    for shard, rows in by_shard.items():
        data = encode_parquet(pa.Table.from_pylist(rows, schema=units.schema))
        job.writer.store.write_bytes(staged_units_uri(job, shard), data)
    return len(by_shard)


def _list_partition(
    job: PreprocessJob, rows_per_shard: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def list_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        seeds = sum(batch.num_rows for batch in batches)
        if seeds:
            units = job.list_units(rows_per_shard)
            shards = stage_units(job, units)
            yield pa.RecordBatch.from_pylist([{"inputs": units.num_rows, "shards": shards}])

    return list_fn


class _TaskProgress:
    """Counts one task's inputs and posts them, with the job's totals, at most every second."""

    def __init__(self, job: PreprocessJob, task: int, total: int, shards: int) -> None:
        self.poster = job.progress_poster("inputs", PROGRESS_WRITE_S)
        self.task, self.total, self.shards = task, total, shards
        self.inputs = 0

    def __call__(self) -> None:
        self.inputs += 1
        self.poster(task=self.task, inputs=self.inputs, total=self.total, shards=self.shards)


def _process_partition(
    job: PreprocessJob, shards: int, tasks: int, total: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Tasks of a listed job: each reads its shards' staged units."""

    def units_of(shard: int) -> list[dict[str, Any]]:
        data = job.writer.store.read_bytes(staged_units_uri(job, shard))
        return parquet_table(data).to_pylist()  # type: ignore[no-any-return]

    def process_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for task in batch.column("id").to_pylist():
                run = task_shards(int(task), shards, tasks)
                yield from _run_task(job, _TaskProgress(job, int(task), total, shards), run, units_of)

    return process_fn


def _listing_fingerprint(units: pa.Table) -> str:
    digest = hashlib.sha256()
    for record_id, shard in zip(units.column("record_id").to_pylist(), units.column("shard").to_pylist(), strict=True):
        digest.update(f"{record_id}\0{shard}\n".encode())
    return digest.hexdigest()


def _list_and_process_partition(
    job: PreprocessJob, rows_per_shard: int, tasks: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Tasks of a one-job plan: each lists the source itself and writes its run of the shards.

    Saves the listing job (~0.15 s of Spark scheduling for ~10 ms of listing, measured). Every task sends
    back a fingerprint of its listing; the driver fails the job if they differ (the source changed).
    """

    def process_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for task in batch.column("id").to_pylist():
                units = job.list_units(rows_per_shard, tasks)
                by_shard = units_by_shard(units)
                # a summary row of kind "listing": ``shard`` carries the shard count, ``sha256`` the fingerprint
                listing: dict[str, Any] = dict.fromkeys(SUMMARY_SCHEMA.names)
                listing.update(kind="listing", shard=len(by_shard), inputs=units.num_rows)
                listing.update(sha256=_listing_fingerprint(units))
                yield pa.RecordBatch.from_pylist([listing], schema=SUMMARY_SCHEMA)
                progress = _TaskProgress(job, int(task), units.num_rows, len(by_shard))
                run = task_shards(int(task), len(by_shard), tasks)
                yield from _run_task(job, progress, run, by_shard.__getitem__)

    return process_fn


def _run_task(
    job: PreprocessJob, progress: _TaskProgress, run: range, units_of: Callable[[int], list[dict[str, Any]]]
) -> Iterator[pa.RecordBatch]:
    """Build shard k+1 while a thread writes shard k: the write ends in an fsync that would idle the core."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="abai-write") as writer:
        pending: Future[list[dict[str, Any]]] | None = None
        for shard in run:
            built = job.build_shard(shard, units_of(shard), on_input=progress)
            if pending is not None:
                yield from pa.Table.from_pylist(pending.result(), schema=SUMMARY_SCHEMA).to_batches()
            pending = writer.submit(job.write_shard, built)
        if pending is not None:
            yield from pa.Table.from_pylist(pending.result(), schema=SUMMARY_SCHEMA).to_batches()


class _RunningInputs:
    """Driver side: the latest input count each running task posted, summed (a post carries a task's total)."""

    def __init__(self, report: Callable[[dict[str, int]], None]) -> None:
        self.report = report
        self.by_task: dict[int, int] = {}

    def __call__(self, post: dict[str, Any]) -> None:
        if post["type"] != "inputs":
            return
        task = int(post["task"])
        self.by_task[task] = max(self.by_task.get(task, 0), int(post["inputs"]))
        self.report({"running": sum(self.by_task.values()), "total": post["total"], "shards": post["shards"]})


_EXECUTOR_ERRORS: dict[str, Callable[[str], Exception]] = {
    "SourceLayoutError: ": SourceLayoutError,
    "SourceError: ": SourceError,
    "UserCodeError: ": UserCodeError,
}


def _reraise_executor_error(exc: Exception) -> None:
    """Executor exceptions arrive as Spark errors with the Python traceback in the text: give the ones a
    caller acts on (retry or not) their own type and first line back."""
    text = str(exc)
    for marker, error in _EXECUTOR_ERRORS.items():
        if marker in text:
            message = text.split(marker, 1)[1].splitlines()[0]
            raise error(message) from exc


def run_spark(
    spark: SparkSession,
    job: PreprocessJob,
    rows_per_shard: int,
    *,
    parallelism: int | None = None,
    tag: str | None = None,
    progress: ProgressCallback | None = None,
    interval_s: float = 2.0,
) -> list[dict[str, Any]]:
    """Run ``job`` data-parallel; returns the summary rows. ``tag`` lets ``interruptTag`` cancel just this.

    ``parallelism``: the cores the executors have; one job of one task per core, each listing the source
    and writing an equal run of shards. Without it, a listing job, then one task per shard.
    """
    if job.source.is_query:
        return _run_query(spark, job, rows_per_shard, parallelism, tag, progress)
    start = time.monotonic()
    staged = 0
    state = {"total": 0, "shards": 0, "running": 0, "rows": 0, "shards_done": 0}  # rows: of finished shards
    throttle = _Throttle(progress, interval_s)

    def report(update: dict[str, int] | None = None) -> None:
        if update:
            state.update(
                total=update["total"], shards=update["shards"], running=max(state["running"], update["running"])
            )
        done = max(state["running"], state["rows"])
        throttle(Progress(done, state["total"], state["shards_done"], state["shards"], time.monotonic() - start))

    try:
        watch = job.watch_progress(_RunningInputs(report), interval_s) if progress else contextlib.nullcontext()
        with spark_tagged(spark, tag), watch:
            try:
                if parallelism:
                    tasks = parallelism
                    plan = spark.range(0, tasks, 1, tasks).mapInArrow(
                        _list_and_process_partition(job, rows_per_shard, tasks), SUMMARY_DDL
                    )
                else:
                    seed = spark.createDataFrame([(0,)], "seed int")
                    counts = seed.mapInArrow(_list_partition(job, rows_per_shard), LISTING_DDL).collect()[0]
                    staged = tasks = int(counts["shards"])
                    state.update(total=int(counts["inputs"]), shards=staged)
                    what = job.source.describe()
                    log.info("preprocess: %d inputs in %d shards from %s", state["total"], staged, what)
                    plan = spark.range(0, tasks, 1, tasks).mapInArrow(
                        _process_partition(job, staged, tasks, state["total"]), SUMMARY_DDL
                    )
                rows: list[dict[str, Any]] = []
                listings: set[tuple[int, int, str]] = set()
                for row in plan.toLocalIterator():
                    record = row.asDict()
                    if record["kind"] == "listing":
                        listings.add((int(record["inputs"]), int(record["shard"]), record["sha256"]))
                        report({"total": int(record["inputs"]), "shards": int(record["shard"]), "running": 0})
                        continue
                    rows.append(record)
                    if record["kind"] == "shard":
                        state["rows"] += int(record["inputs"])
                        state["shards_done"] += 1
                        report()
            except Exception as exc:
                _reraise_executor_error(exc)
                raise
        if len(listings) > 1:
            raise RuntimeError(
                f"the source {job.source.describe()} changed while the tasks listed it ({len(listings)} different "
                "listings); nothing was committed, a retry lists it again"
            )
    finally:
        try:  # staging only: the shards and the manifest never reference these files
            job.writer.store.delete([staged_units_uri(job, shard) for shard in range(staged)])
        except Exception:  # a leftover staging file is harmless; do not hide the job's own error
            log.warning("could not remove the staged listing of %s", job.writer.dataset, exc_info=True)
        job.remove_progress()
    log.info(
        "preprocess: %d inputs in %d shards from %s, %d Spark tasks, %.1f s",
        state["total"], state["shards"], job.source.describe(), tasks, time.monotonic() - start,
    )  # fmt: skip
    return rows


def _run_query(
    spark: SparkSession,
    job: PreprocessJob,
    rows_per_shard: int,
    parallelism: int | None,
    tag: str | None,
    progress: ProgressCallback | None,
) -> list[dict[str, Any]]:
    """A table or SQL source (:mod:`airflow_bigdata_ai.preprocess.query`), tagged like a file source."""
    from airflow_bigdata_ai.preprocess.query import run_query

    start = time.monotonic()
    with spark_tagged(spark, tag):
        try:
            rows, total, shards = run_query(spark, job, rows_per_shard, parallelism)
        except Exception as exc:
            _reraise_executor_error(exc)
            raise
    if progress is not None:
        progress(Progress(total, total, shards, shards, time.monotonic() - start))
    return rows
