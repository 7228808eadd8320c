"""``preprocess()``: the Airflow-free entry point (usable from a notebook) behind SparkPreprocessOperator.

It lists and transforms a source into a committed ShardSet, writes a quarantine report beside the
shards, and decides pass/fail on ``max_bad_fraction``. Data errors are counted; infrastructure errors
raise. Staged shards of a failed attempt are removed, so only committed data is ever visible.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from airflow_bigdata_ai.cluster.config import EXECUTOR_CORES_CONF
from airflow_bigdata_ai.preprocess.engine import ProgressCallback, log_progress, run_local, run_spark
from airflow_bigdata_ai.preprocess.errors import InconsistentOutput, SettingsError, TooManyBadRecords
from airflow_bigdata_ai.preprocess.images import ImageGuards
from airflow_bigdata_ai.preprocess.plan import TransformLike, coerce_source, describe_transform, plan_job
from airflow_bigdata_ai.preprocess.process import PreprocessJob
from airflow_bigdata_ai.preprocess.sources import SourceSpec
from airflow_bigdata_ai.shards.dataset import ShardInfo, ShardWriter
from airflow_bigdata_ai.shards.errors import InvalidReference
from airflow_bigdata_ai.shards.refs import Producer, ShardSet
from airflow_bigdata_ai.shards.store import S3Options, ShardStore, open_store
from airflow_bigdata_ai.usercode import UserCallable

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

QUARANTINE_KIND = "QuarantineReport"
QUARANTINE_FILE = "quarantine.json"
DEFAULT_ROWS_PER_SHARD = 512
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class PreparedRun:
    """A run checked and resolved on the driver (see :func:`prepare`), ready for :func:`run_prepared`."""

    job: PreprocessJob
    rows_per_shard: int
    parallelism: int | None
    max_bad_fraction: float


def prepare(
    source: SourceSpec | Mapping[str, Any] | str,
    output_uri: str,
    *,
    transform: TransformLike = None,
    transform_kwargs: Mapping[str, Any] | None = None,
    guards: ImageGuards | Mapping[str, Any] | None = None,
    output_spec: Mapping[str, Any] | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    parallelism: int | None = None,
    max_bad_fraction: float = 0.01,
    source_store: ShardStore | None = None,
    output_store: ShardStore | None = None,
    s3_options: S3Options | None = None,
) -> PreparedRun:
    """Check every setting, resolve the user code and read the labels file, without Spark.

    Raises what a retry cannot fix: :class:`~airflow_bigdata_ai.usercode.UserCodeError` (the transform's
    module cannot be found or imported), :class:`SettingsError`, :class:`SourceLayoutError` (labels file
    missing or malformed). The operator calls it before attaching to the cluster.
    """
    if rows_per_shard < 1:
        raise SettingsError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if parallelism is not None and parallelism < 1:
        raise SettingsError(f"parallelism must be >= 1, got {parallelism}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise SettingsError(f"max_bad_fraction must be within [0, 1], got {max_bad_fraction}")
    spec = coerce_source(source)
    try:
        output_store = output_store or open_store(output_uri, s3_options)
        # a query source without uri= reads no files: the output store stands in
        source_store = source_store or (open_store(str(spec.root), s3_options) if spec.uri else output_store)
        writer = ShardWriter(output_store, output_uri)
    except InvalidReference as exc:
        raise SettingsError(f"output_uri {output_uri!r}: {exc}") from None
    job = plan_job(
        spec, writer, source_store,
        transform=transform, transform_kwargs=transform_kwargs, guards=guards, output_spec=output_spec,
    )  # fmt: skip
    return PreparedRun(job, rows_per_shard, parallelism, max_bad_fraction)


def preprocess(
    source: SourceSpec | Mapping[str, Any] | str,
    output_uri: str,
    *,
    spark: SparkSession | None = None,
    transform: TransformLike = None,
    transform_kwargs: Mapping[str, Any] | None = None,
    guards: ImageGuards | Mapping[str, Any] | None = None,
    output_spec: Mapping[str, Any] | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    parallelism: int | None = None,
    max_bad_fraction: float = 0.01,
    source_store: ShardStore | None = None,
    output_store: ShardStore | None = None,
    s3_options: S3Options | None = None,
    producer: Producer | None = None,
    progress: ProgressCallback | None = log_progress,
    progress_interval_s: float = 2.0,
    tag: str | None = None,
) -> ShardSet:
    """Transform ``source`` into a ShardSet committed at ``output_uri``: :func:`prepare`, then :func:`run_prepared`.

    With ``spark`` the work runs data-parallel on its executors; without, in this process (same bytes
    for the same ``parallelism``). ``parallelism`` is the number of Spark tasks (default: the cluster's
    ``EXECUTOR_CORES_CONF``, else one task per shard); the shard count is rounded up to a multiple of it,
    so pin it to keep checksums stable when the cluster grows. ``transform``: built-in steps, a callable or
    ``"pkg.module:function"``; user modules travel with the job (an edited module takes effect at once).
    Raises, before any Spark job, the errors of :func:`prepare`; then :class:`TooManyBadRecords` above
    ``max_bad_fraction`` (report written, nothing committed), :class:`SourceError` for a missing or empty
    source, and any storage error as is.
    """
    prepared = prepare(
        source, output_uri, transform=transform, transform_kwargs=transform_kwargs, guards=guards,
        output_spec=output_spec, rows_per_shard=rows_per_shard, parallelism=parallelism,
        max_bad_fraction=max_bad_fraction, source_store=source_store, output_store=output_store, s3_options=s3_options,
    )  # fmt: skip
    return run_prepared(
        prepared, spark=spark, producer=producer, progress=progress, progress_interval_s=progress_interval_s, tag=tag
    )


def run_prepared(
    prepared: PreparedRun,
    *,
    spark: SparkSession | None = None,
    producer: Producer | None = None,
    progress: ProgressCallback | None = log_progress,
    progress_interval_s: float = 2.0,
    tag: str | None = None,
) -> ShardSet:
    """Run a prepared job (on ``spark``'s executors, or in this process) and commit its ShardSet."""
    job, rows_per_shard, writer = prepared.job, prepared.rows_per_shard, prepared.job.writer
    if spark is None and job.source.is_query:
        raise SettingsError(f"the {job.source.describe()} is run by Spark: pass spark= (a session on the cluster)")
    start = time.monotonic()
    parallelism = prepared.parallelism
    if spark is not None:
        parallelism = parallelism or cluster_parallelism(spark)
    try:
        if spark is not None:
            rows = run_spark(
                spark, job, rows_per_shard, parallelism=parallelism, tag=tag, progress=progress,
                interval_s=progress_interval_s,
            )  # fmt: skip
        else:
            rows = run_local(job, rows_per_shard, parallelism or 1, progress=progress, interval_s=progress_interval_s)
    except BaseException:
        writer.abort()
        raise
    elapsed = time.monotonic() - start
    try:
        return _finish(writer, job.source, job, rows, prepared.max_bad_fraction, producer, elapsed, parallelism)
    except TooManyBadRecords:
        raise  # the staged shards are gone already; the quarantine report stays for inspection
    except BaseException:
        writer.abort()
        raise


def cluster_parallelism(spark: SparkSession) -> int | None:
    """The cores the cluster's executors have, as the shared cluster publishes them (None if it does not)."""
    value = spark.conf.get(EXECUTOR_CORES_CONF, None)
    return int(value) if value else None


def _finish(
    writer: ShardWriter,
    spec: SourceSpec,
    job: PreprocessJob,
    rows: list[dict[str, Any]],
    max_bad_fraction: float,
    producer: Producer | None,
    elapsed: float,
    parallelism: int | None,
) -> ShardSet:
    shard_rows = sorted((r for r in rows if r["kind"] == "shard"), key=lambda r: r["shard"])
    bad = sorted((r for r in rows if r["kind"] == "bad"), key=lambda r: r["record_id"])
    shards = [ShardInfo(r["path"], int(r["rows"]), int(r["bytes"]), r["sha256"]) for r in shard_rows if r["path"]]
    total = sum(int(r["inputs"]) for r in shard_rows)
    ok = sum(s.rows for s in shards)
    by_reason = dict(sorted(Counter(r["reason"] for r in bad).items()))
    counts = {"inputs": total, "ok": ok, "quarantined": len(bad), "by_reason": by_reason}
    if ok + len(bad) != total:  # would mean a lost record: never commit that
        raise RuntimeError(f"record accounting mismatch: {ok} ok + {len(bad)} quarantined != {total} inputs")
    report = {
        "kind": QUARANTINE_KIND,
        "version": "1.0",
        "source": spec.describe(),
        "counts": counts,
        "records": [{k: r[k] for k in ("record_id", "uri", "reason", "detail")} for r in bad],
    }
    report_info = writer.write_bytes(
        f"attempts/{writer.attempt_id}/{QUARANTINE_FILE}",
        json.dumps(report, sort_keys=True, indent=1).encode(),
        len(bad),
    )
    report_uri = str(writer.dataset.join(report_info.path))
    fraction = len(bad) / total if total else 0.0
    if fraction > max_bad_fraction:
        writer.store.delete([writer.dataset.join(s.path) for s in shards])
        examples = "; ".join(f"{r['uri']}: {r['reason']} ({r['detail']})" for r in bad[:MAX_EXAMPLES])
        reasons = ", ".join(f"{k}={v}" for k, v in by_reason.items())
        raise TooManyBadRecords(
            f"{len(bad)} of {total} inputs ({fraction:.2%}) were quarantined, above max_bad_fraction="
            f"{max_bad_fraction:.2%} [{reasons}]; nothing was committed. Examples: {examples}. "
            f"Full list: {report_uri}",
            counts,
            report_uri,
        )
    schema = _common_schema(shard_rows)
    stats: dict[str, Any] = {
        **counts,
        "quarantine_report": {"uri": report_uri, "sha256": report_info.sha256, "records": len(bad)},
        "source": spec.to_dict(),
        "transform": describe_transform(job.transform),
        "transform_kwargs": job.transform_kwargs,
        **_code_identity(job),
        "parallelism": parallelism,  # shapes the shards: pass it to preprocess() to reproduce them elsewhere
        "elapsed_s": round(elapsed, 3),
        "shard_wall_s": round(sum(r["wall_s"] or 0.0 for r in shard_rows), 3),
        "shard_cpu_s": round(sum(r["cpu_s"] or 0.0 for r in shard_rows), 3),
        "rows_per_s": round(total / elapsed, 1) if elapsed > 0 else None,
    }
    return writer.commit(shards, schema, producer=producer, stats=stats)


def _common_schema(shard_rows: list[dict[str, Any]]) -> pa.Schema:
    """Every shard must have the same schema (tensor shapes included); else the transform is inconsistent."""
    schemas = {r["schema_hex"] for r in shard_rows if r["schema_hex"]}
    if len(schemas) > 1:
        decoded = [str(pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(h)))) for h in sorted(schemas)]
        raise InconsistentOutput("shards have different schemas:\n" + "\n---\n".join(decoded))
    if not schemas:
        return pa.schema([pa.field("record_id", pa.string(), nullable=False), pa.field("label", pa.int64())])
    return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(schemas.pop())))


def _code_identity(job: PreprocessJob) -> dict[str, Any]:
    """What identifies the inputs beyond the source URI: the user code's module hashes, the labels file."""
    found: dict[str, Any] = {}
    if isinstance(job.transform, UserCallable) and job.transform.bundle.modules:
        found["code"] = job.transform.bundle.describe()
    if job.labels is not None:
        found["labels_file"] = job.labels.describe()
    return found
