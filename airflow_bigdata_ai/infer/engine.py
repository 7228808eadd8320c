"""run_inference: the Airflow-free core of OpenVINOInferOperator.

Plan: resolve the model factory (user code beside the DAG is bundled and imported here, in the task
process: the workers only ever see the IR) -> verify the ModelRef's weights (sha256) -> check shapes ->
fetch or build the OpenVINO IR (cached beside the model) -> accuracy gate on a held-out sample when labels
exist -> one job per input shard, run by an engine (Ray Data actor pool, Spark ``mapInArrow`` over Spark
Connect, or in-process) where each worker compiles once, reads its shard straight from the store, predicts
and writes the output shard itself -> commit the predictions ShardSet. Only summary rows come back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from airflow_bigdata_ai.cluster.admission import admitted
from airflow_bigdata_ai.infer import ir as irmod
from airflow_bigdata_ai.infer.errors import InputShapeRejected
from airflow_bigdata_ai.infer.jobs import (
    InferenceJob,
    ShardsDone,
    output_schema,
    run_local,
    run_ray,
    run_spark,
    tensor_dtype,
)
from airflow_bigdata_ai.infer.model import check_input_shape, model_factory, model_loader, read_verified_weights
from airflow_bigdata_ai.infer.precision import AUTO, IRBuilder, choose_auto, gate_explicit
from airflow_bigdata_ai.shards.dataset import ShardInfo, ShardWriter, load_manifest, read_shard
from airflow_bigdata_ai.shards.refs import ModelRef, Producer, ShardSet
from airflow_bigdata_ai.shards.tensors import decode_tensors, model_input, tensor_spec

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from airflow_bigdata_ai.shards.store import ShardStore
    from airflow_bigdata_ai.usercode import UserCallable

log = logging.getLogger(__name__)
# CPUs an inference on Ray holds beside its actors: the tasks that read and split the shard list
RAY_DATA_CPUS = 1.0

ENGINES = ("ray", "spark", "local")
ON_ACCURACY_DROP = ("fail", "fallback")


@dataclass(frozen=True)
class InferOptions:
    """Everything a caller may tune; defaults suit the 2-core embedded cluster."""

    precision: str = "f32"  # or "bf16", "int8", "auto" (the fastest that passes the gate: infer.precision)
    engine: str = "ray"
    max_accuracy_drop: float = 1.0  # percentage points
    on_accuracy_drop: str = "fail"
    image_column: str = "image"
    id_column: str = "record_id"
    label_column: str = "label"
    calibration_samples: int = 128
    holdout_samples: int = 512
    request_batch: int | None = None
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    threads_per_worker: int | None = None
    seed: int = 0
    admission_timeout_s: float = 3600.0
    progress_interval_s: float = 10.0

    def validate(self) -> InferOptions:
        if self.precision != AUTO:
            irmod.check_precision(self.precision)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.on_accuracy_drop not in ON_ACCURACY_DROP:
            raise ValueError(f"on_accuracy_drop must be one of {ON_ACCURACY_DROP}, got {self.on_accuracy_drop!r}")
        if not 0 <= self.max_accuracy_drop <= 100:
            raise ValueError(f"max_accuracy_drop is in percentage points (0..100), got {self.max_accuracy_drop}")
        for name in ("calibration_samples", "holdout_samples", "num_workers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not self.progress_interval_s > 0:
            raise ValueError("progress_interval_s must be > 0")
        return self


@dataclass
class InferResult:
    """The committed predictions and the summary the operator puts in XCom."""

    shardset: ShardSet
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The predictions ShardSet as XCom carries it (its ``stats`` hold the summary)."""
        return self.shardset.to_dict()


# -- sampling and the accuracy gate ----------------------------------------------------------------------
def sample_rows(
    store: ShardStore,
    shardset: ShardSet,
    image_column: str,
    label_column: str | None,
    shape: tuple[int, ...],
    count: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A deterministic sample of up to ``count`` rows, reading only as many shards as that needs."""
    manifest = load_manifest(store, shardset)
    order = np.random.default_rng(seed).permutation(len(manifest.shards))
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    have = 0
    for index in order:
        table = read_shard(store, shardset.dataset_uri, manifest.shards[int(index)])
        images.append(decode_tensors(table.column(image_column), shape, tensor_dtype(table, image_column)))
        if label_column:
            labels.append(table.column(label_column).cast(pa.int64()).fill_null(-1).to_numpy())
        have += table.num_rows
        if have >= count:
            break
    if not images:
        return np.empty((0, *shape), np.float32), None
    all_images = model_input(np.concatenate(images))
    pick = np.random.default_rng(seed + 1).permutation(len(all_images))[:count]
    return all_images[pick], (np.concatenate(labels)[pick] if label_column else None)


# -- the core entry point --------------------------------------------------------------------------------
def run_inference(
    model_ref: ModelRef | dict[str, Any] | str,
    shardset: ShardSet | dict[str, Any] | str,
    output_uri: str,
    *,
    model_store: ShardStore,
    input_store: ShardStore,
    output_store: ShardStore | None = None,
    options: InferOptions | None = None,
    spark: SparkSession | None = None,
    producer: Producer | None = None,
    tag: str | None = None,
    log_fn: Callable[[str], None] | None = None,
    factory: UserCallable | None = None,
) -> InferResult:
    """Predict every row of ``shardset`` with the ModelRef's model through OpenVINO; commit the predictions.

    Raises UserCodeError (the model factory cannot be imported or called with its kwargs), ChecksumMismatch
    (weights not the ModelRef's), ModelLoadFailed (the weights do not fit the factory's model),
    InputShapeRejected (absurd or mismatching shapes), AccuracyGateFailed (reduced precision too inaccurate
    and ``on_accuracy_drop="fail"``). ``factory``: the model factory as shipped from the task's host (its
    user modules), for a driver running where the DAG folder is not.
    """
    say = log_fn or log.info
    opts = (options or InferOptions()).validate()
    ref = ModelRef.coerce(model_ref)
    data = ShardSet.coerce(shardset)
    output_store = output_store or input_store
    t0 = time.monotonic()

    # 0. the model factory, before any data is read: a missing module or bad kwargs fail here
    factory = model_factory(ref, factory)
    code_key = {"model_code": factory.bundle.digest} if factory.bundle else None
    trained_code = getattr(ref, "code", None)  # the factory's modules when the weights were trained
    if trained_code and trained_code != factory.bundle.describe():
        log.warning(
            "the model factory's code changed since training (then %s, now %s): the IR is built from today's code",
            trained_code,
            factory.bundle.describe(),
        )

    # 1. shapes, before anything is converted or compiled
    shape = check_input_shape(list(ref.input_shape), opts.request_batch or 1)
    manifest = load_manifest(input_store, data)
    schema = manifest.pa_schema()
    for column in (opts.image_column, opts.id_column):
        if column not in schema.names:
            raise InputShapeRejected(f"input ShardSet has no column {column!r} (columns: {schema.names})")
    spec = tensor_spec(schema.field(opts.image_column))
    if spec is None or tuple(spec[0]) != shape:
        raise InputShapeRejected(
            f"input column {opts.image_column!r} holds {spec[0] if spec else 'non-tensor'} rows; "
            f"the ModelRef's input_shape is {list(shape)}"
        )
    label_column = opts.label_column if opts.label_column in schema.names else None

    # 2. verified weights (also on a cache hit: a ModelRef whose weights were tampered with is refused)
    read_verified_weights(ref, model_store)
    load_model = model_loader(ref, model_store, factory)

    # 3. the IR to run: the requested precision behind the accuracy gate, or the fastest that passes ("auto")
    auto = opts.precision == AUTO
    need_sample = auto or opts.precision == "int8" or (opts.precision != "f32" and label_column is not None)
    sample_images, sample_labels = (
        sample_rows(
            input_store,
            data,
            opts.image_column,
            label_column,
            shape,
            opts.calibration_samples + opts.holdout_samples,
            opts.seed,
        )
        if need_sample
        else (np.empty((0, *shape), np.float32), None)
    )
    # int8: calibration rows first, held-out rows after them (disjoint); bf16 needs no calibration
    cut = opts.calibration_samples if opts.precision in ("int8", AUTO) else 0
    calibration = sample_images[: opts.calibration_samples]
    holdout = sample_images[cut:]
    holdout_labels = sample_labels[cut:] if sample_labels is not None else None
    if len(holdout) == 0:
        holdout, holdout_labels = calibration, sample_labels  # tiny inputs: gate on what there is
    source = irmod.CalibrationSource(data.manifest_uri, data.manifest_sha256, input_store)
    builder = IRBuilder(ref, model_store, load_model, lambda: calibration, source, code_key)
    if auto:
        selection = choose_auto(
            builder, shape, holdout, holdout_labels, opts.max_accuracy_drop, opts.threads_per_worker, say
        )
    else:
        selection = gate_explicit(
            builder,
            opts.precision,
            shape,
            holdout,
            holdout_labels,
            opts.max_accuracy_drop,
            opts.on_accuracy_drop,
            say,
        )
    precision_used, handle, gate = selection.precision, selection.built.handle, selection.gate
    prepare_s = time.monotonic() - t0

    # 5. one job per shard
    probe_classes = _num_classes(handle, shape)
    out_schema = output_schema(probe_classes, label_column is not None)
    writer = ShardWriter(output_store, output_uri)
    job = InferenceJob(
        input_store=input_store,
        input_dataset_uri=data.dataset_uri,
        writer=writer,
        ir=handle,
        precision=precision_used,
        input_shape=shape,
        image_column=opts.image_column,
        id_column=opts.id_column,
        label_column=label_column,
        request_batch=opts.request_batch,
        threads=opts.threads_per_worker,
        output_schema_hex=out_schema.serialize().to_pybytes().hex(),
    )
    items = [{"shard": i, "path": s.path, "rows": s.rows, "sha256": s.sha256} for i, s in enumerate(manifest.shards)]
    say(f"Predicting {data.num_rows} rows in {len(items)} shards with {opts.engine} ({precision_used})")
    t1 = time.monotonic()
    done = ShardsDone(len(items), data.num_rows, say, opts.progress_interval_s)
    try:
        with job.watch_progress(done, opts.progress_interval_s):
            rows = _run_engine(job, items, opts, spark, tag, say, producer, output_uri)
    except BaseException:
        writer.abort()
        raise
    finally:
        job.remove_progress()
    wall_s = time.monotonic() - t1
    rows.sort(key=lambda r: r["shard"])
    if len(rows) != len(items) or sum(r["rows"] for r in rows) != data.num_rows:
        writer.abort()
        raise RuntimeError(f"engine returned {len(rows)} shard summaries for {len(items)} shards: refusing to commit")

    # 6. commit
    labelled = sum(r["labelled"] for r in rows)
    correct = sum(r["correct"] for r in rows)
    infer_s = sum(r["infer_s"] for r in rows)
    summary = {
        "rows": data.num_rows,
        "shards": len(items),
        "engine": opts.engine,
        "workers": min(opts.num_workers, max(len(items), 1)),
        "precision_requested": opts.precision,
        "precision_used": precision_used,
        "runtime_precision": sorted({r["runtime_precision"] for r in rows}),
        "accuracy": (correct / labelled) if labelled else None,
        "labelled_rows": labelled,
        "images_per_s": data.num_rows / wall_s if wall_s > 0 else None,
        "compute_images_per_s": data.num_rows / infer_s if infer_s > 0 else None,
        "wall_s": round(wall_s, 3),
        "prepare_s": round(prepare_s, 3),
        "gate": gate,
        "ir": selection.built.summary(),
        "openvino": irmod.versions()["openvino"],
        "model_weights_sha256": ref.weights_sha256,
        "model_factory": factory.name,
        "model_code": factory.bundle.describe(),
        "input_manifest": data.manifest_uri,
    }
    infos = [ShardInfo(path=r["path"], rows=int(r["rows"]), bytes=int(r["bytes"]), sha256=r["sha256"]) for r in rows]
    committed = writer.commit(infos, out_schema, producer, stats=summary)
    return InferResult(committed, summary)


def _run_engine(
    job: InferenceJob,
    items: list[dict[str, Any]],
    opts: InferOptions,
    spark: SparkSession | None,
    tag: str | None,
    say: Callable[[str], None],
    producer: Producer | None,
    output_uri: str,
) -> list[dict[str, Any]]:
    """The per-shard job on the chosen engine; Ray waits for admission first (the CPUs it will hold)."""
    if not items:
        return []
    elif opts.engine == "local":
        return run_local(job, items)
    elif opts.engine == "ray":
        actors = max(1, min(opts.num_workers, len(items)))
        cpus = actors * opts.cpus_per_worker + RAY_DATA_CPUS
        what = f"inference ({actors} actors x {opts.cpus_per_worker:g} CPUs + data {RAY_DATA_CPUS:g})"
        label = f"{producer.dag_id}.{producer.task_id} {producer.run_id}" if producer else output_uri
        with admitted(cpus, label, what, opts.admission_timeout_s, say):
            return run_ray(job, items, actors, opts.cpus_per_worker, cpus)
    else:
        if spark is None:
            raise ValueError("engine='spark' needs a SparkSession (Spark Connect)")
        return run_spark(spark, job, items, opts.num_workers, tag)


def _num_classes(handle: irmod.IRHandle, shape: tuple[int, ...]) -> int:
    """Output width from the IR itself (no compile): the model's last dimension."""
    model = handle.read_model()
    out = model.outputs[0].get_partial_shape()
    if out.rank.get_length() != 2 or not out[1].is_static:
        raise InputShapeRejected(f"model output shape {out} is not (batch, classes)")
    return int(out[1].get_length())
