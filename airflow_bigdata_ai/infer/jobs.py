"""The per-shard inference job and the three engines that run it (Ray Data actors, Spark, in-process).

An :class:`InferenceJob` (a :class:`~airflow_bigdata_ai.shards.job.ShardJob`) is everything a worker needs and
nothing more: stores, the output writer, the IR's location and digests, shapes and column names. Workers
compile the IR once, read their shards straight from the store, predict, write the output shards themselves
and post each finished shard on the progress channel; only summary rows come back. Workers never import the
model factory (the IR is built by the driver), so user code need not reach them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from airflow_bigdata_ai.infer import ir as irmod
from airflow_bigdata_ai.infer.errors import InputShapeRejected
from airflow_bigdata_ai.shards.dataset import ShardInfo, ShardWriter, read_shard
from airflow_bigdata_ai.shards.job import ShardJob, spark_tagged
from airflow_bigdata_ai.shards.tensors import decode_tensors, encode_tensors, model_input, tensor_field, tensor_spec

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from airflow_bigdata_ai.infer.runtime import Predictor
    from airflow_bigdata_ai.shards.store import ShardStore

SUMMARY_SCHEMA = pa.schema(
    [
        ("shard", pa.int64()),
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("labelled", pa.int64()),
        ("correct", pa.int64()),
        ("infer_s", pa.float64()),
        ("runtime_precision", pa.string()),
    ]
)
SUMMARY_DDL = (
    "shard bigint, path string, rows bigint, bytes bigint, sha256 string, labelled bigint, correct bigint, "
    "infer_s double, runtime_precision string"
)
ITEM_DDL = "shard bigint, path string, rows bigint, sha256 string"


@dataclass(frozen=True)
class InferenceJob(ShardJob):
    """What a worker needs to predict shards: picklable, no data, no model bytes (read from the store)."""

    input_store: ShardStore
    input_dataset_uri: str
    writer: ShardWriter
    ir: irmod.IRHandle
    precision: str
    input_shape: tuple[int, ...]
    image_column: str
    id_column: str
    label_column: str | None
    request_batch: int | None
    threads: int | None
    output_schema_hex: str
    summary_schema: ClassVar[pa.Schema] = SUMMARY_SCHEMA
    summary_ddl: ClassVar[str] = SUMMARY_DDL

    @property
    def output_schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(self.output_schema_hex)))

    def predictor(self) -> Predictor:
        from airflow_bigdata_ai.infer.runtime import Predictor

        return Predictor.from_ir(
            self.ir, self.input_shape, self.precision, request_batch=self.request_batch, threads=self.threads
        )

    def process(self, predictor: Predictor, item: dict[str, Any]) -> dict[str, Any]:
        """Read one input shard (sha256-verified), predict, write the output shard; return its summary row."""
        info = ShardInfo(path=item["path"], rows=int(item["rows"]), bytes=0, sha256=item["sha256"])
        table = read_shard(self.input_store, self.input_dataset_uri, info)
        images = model_input(
            decode_tensors(table.column(self.image_column), self.input_shape, tensor_dtype(table, self.image_column))
        )
        start = time.perf_counter()
        logits = predictor.predict(images)
        infer_s = time.perf_counter() - start
        out = predictions_table(table, logits, self.output_schema, self.id_column, self.label_column)
        written = self.writer.write_table(int(item["shard"]), out)
        labelled = correct = 0
        if self.label_column:
            labels = table.column(self.label_column).to_numpy(zero_copy_only=False)
            mask = ~np.isnan(labels.astype(np.float64)) if labels.dtype.kind == "f" else np.ones(len(labels), bool)
            labelled = int(mask.sum())
            correct = int((out.column("predicted").to_numpy()[mask] == labels[mask]).sum())
        self.post_progress("shard", shard=int(item["shard"]), rows=written.rows)
        return {
            "shard": int(item["shard"]),
            "path": written.path,
            "rows": written.rows,
            "bytes": written.bytes,
            "sha256": written.sha256,
            "labelled": labelled,
            "correct": correct,
            "infer_s": infer_s,
            "runtime_precision": predictor.runtime_precision,
        }


def tensor_dtype(table: pa.Table, column: str) -> np.dtype[Any]:
    spec = tensor_spec(table.schema.field(column))
    if spec is None:
        raise InputShapeRejected(f"column {column!r} is not a tensor column")
    return spec[1]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def output_schema(num_classes: int, with_label: bool) -> pa.Schema:
    fields = [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("predicted", pa.int64(), nullable=False),
        tensor_field("scores", (num_classes,), "float32"),
    ]
    if with_label:
        fields.append(pa.field("label", pa.int64()))
    return pa.schema(fields)


def predictions_table(
    table: pa.Table, logits: np.ndarray, schema: pa.Schema, id_column: str, label_column: str | None
) -> pa.Table:
    """record_id, predicted class, softmax scores (and the label, when the input had one)."""
    columns: dict[str, Any] = {
        "record_id": table.column(id_column).cast(pa.string()),
        "predicted": pa.array(logits.argmax(axis=1).astype(np.int64)),
        "scores": encode_tensors(softmax(logits)),
    }
    if label_column:
        columns["label"] = table.column(label_column).cast(pa.int64())
    return pa.table(columns, schema=schema)


class ShardsDone:
    """Driver side: the shards the workers posted as written, said at most every ``interval_s`` and when all are.

    A shard posted twice (a retried Spark task, a restarted actor) counts once.
    """

    def __init__(self, shards: int, rows: int, say: Callable[[str], None], interval_s: float) -> None:
        self.shards, self.rows, self.say, self.interval_s = shards, rows, say, interval_s
        self.done: dict[int, int] = {}
        self.start = self.last = time.monotonic()

    def __call__(self, post: dict[str, Any]) -> None:
        if post["type"] != "shard":
            return
        self.done[int(post["shard"])] = int(post["rows"])
        now = time.monotonic()
        if len(self.done) >= self.shards or now - self.last >= self.interval_s:
            self.last = now
            rows = sum(self.done.values())
            rate = rows / (now - self.start) if now > self.start else 0.0
            self.say(
                f"inference progress: {len(self.done)}/{self.shards} shards, {rows}/{self.rows} rows, {rate:.1f} rows/s"
            )


# -- engines ---------------------------------------------------------------------------------------------
def _items_table(items: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(
        items,
        schema=pa.schema([("shard", pa.int64()), ("path", pa.string()), ("rows", pa.int64()), ("sha256", pa.string())]),
    )


def run_local(job: InferenceJob, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """In this process: notebooks, unit tests, and the benchmark's engine-free reference."""
    predictor = job.predictor()
    return [job.process(predictor, item) for item in items]


class _RayShardPredictor:
    """Ray Data actor: compiles once in ``__init__``, then predicts whole shards per call."""

    def __init__(self, job: InferenceJob) -> None:
        self.job = job
        self.predictor = job.predictor()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.job.process(self.predictor, item) for item in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)


def run_ray(
    job: InferenceJob, items: list[dict[str, Any]], num_workers: int, cpus_per_worker: float, cpu_limit: float
) -> list[dict[str, Any]]:
    """Ray Data ``map_batches`` over an actor pool; one batch is one shard, so memory stays per-shard.
    ``cpu_limit`` caps the whole dataset (actors and input tasks) at the CPUs the job was admitted with."""
    import ray.data
    from ray.data import ExecutionResources

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    dataset = ray.data.from_arrow(_items_table(items)).repartition(len(items))
    size = max(1, min(num_workers, len(items)))
    predicted = dataset.map_batches(
        _RayShardPredictor,
        fn_constructor_kwargs={"job": job},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=cpus_per_worker,
    )
    predicted.context.execution_options.resource_limits = ExecutionResources(cpu=cpu_limit)
    return [dict(row) for row in predicted.take_all()]


def _spark_partition(job: InferenceJob) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def predict_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        items = [row for batch in batches for row in batch.to_pylist()]
        if items:
            predictor = job.predictor()  # once per partition (= per worker slot)
            rows = [job.process(predictor, item) for item in items]
            yield from pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA).to_batches()

    return predict_fn


def run_spark(
    spark: SparkSession, job: InferenceJob, items: list[dict[str, Any]], num_workers: int, tag: str | None = None
) -> list[dict[str, Any]]:
    """``mapInArrow`` over Spark Connect: ``num_workers`` partitions, each compiling once."""
    with spark_tagged(spark, tag):
        frame = spark.createDataFrame(_items_table(items).to_pandas(), ITEM_DDL)
        parts = max(1, min(num_workers, len(items)))
        result = frame.repartition(parts, "shard").mapInArrow(_spark_partition(job), SUMMARY_DDL)
        return [row.asDict() for row in result.collect()]
