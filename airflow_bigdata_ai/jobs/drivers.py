"""One driver function per stage: the same call in a task's process (embedded) and as a job on the cluster.

A driver takes a :class:`~airflow_bigdata_ai.jobs.request.StageRequest` and an attached cluster (the caller
owns it: the operator, whose ``on_kill`` cancels through it, or :mod:`~airflow_bigdata_ai.jobs.entry`), runs
the stage's core function and returns a JSON dict: the reference it produced under ``"reference"``, with what
the task reports beside it (the inference summary, the datasets a preprocessing read). It logs through ``log``
(the task's logger in process; stdout, hence the job's log, on the cluster). No Airflow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.jobs.request import StageRequest, decode_callable

if TYPE_CHECKING:
    from airflow_bigdata_ai.cluster import AttachedCluster
    from airflow_bigdata_ai.shards import ShardStore

Log = Callable[..., None]


@dataclass(frozen=True)
class DriverEnv:
    """What a driver runs with: the attached cluster (its caller owns it), where its log lines go, and how it
    opens stores: with the task's credentials in process (the hook's ``store_for``), with the cluster's own
    credential chain as a job (the request's :class:`~airflow_bigdata_ai.jobs.request.StoreSpec`)."""

    attached: AttachedCluster | None
    log: Log
    stores: Callable[[str | None], ShardStore]


Driver = Callable[[StageRequest, DriverEnv], dict[str, Any]]

logger = logging.getLogger(__name__)


def _user_code(value: Any) -> Any:
    """A transform or step as the request carries it: an encoded callable becomes a UserCallable again."""
    return decode_callable(value) if isinstance(value, dict) and "modules" in value else value


def _needed(attached: AttachedCluster | None, what: str) -> AttachedCluster:
    if attached is None:
        raise RuntimeError(f"{what} runs on the shared cluster: attach to it first")
    return attached


def run_noop(request: StageRequest, env: DriverEnv) -> dict[str, Any]:
    """No work: what submitting, starting and collecting a driver costs (the remote-overhead benchmark)."""
    env.log("no-op stage %s started", request.submission_id)
    return {"reference": {"kind": "noop", "submission_id": request.submission_id}, "started_at": time.time()}


def run_preprocess(request: StageRequest, env: DriverEnv) -> dict[str, Any]:
    """Spark preprocessing over Spark Connect (:func:`~airflow_bigdata_ai.preprocess.core.run_prepared`)."""
    from airflow_bigdata_ai.lineage import sql_tables, store_dataset, table_dataset
    from airflow_bigdata_ai.preprocess.core import prepare, run_prepared
    from airflow_bigdata_ai.preprocess.plan import coerce_source
    from airflow_bigdata_ai.shards import Producer
    from airflow_bigdata_ai.tables.publish import table_location

    p, log = request.params, env.log
    attached = _needed(env.attached, "preprocessing")
    spec = coerce_source(p["source"])
    location = p["output_uri"]
    output_store = env.stores(location)
    prepared = prepare(
        spec,
        location,
        transform=_user_code(p.get("transform")),
        transform_kwargs=p.get("transform_kwargs"),
        guards=p.get("guards"),
        output_spec=p.get("output_spec"),
        source_store=env.stores(spec.uri) if spec.uri else output_store,
        output_store=output_store,
        rows_per_shard=int(p["rows_per_shard"]),
        parallelism=p.get("parallelism"),
        max_bad_fraction=float(p["max_bad_fraction"]),
    )
    spark = attached.spark()
    log("Preprocessing %s -> %s (Spark job tag %s)", spec.describe(), location, p.get("tag"))
    if spec.is_query:
        names = [spec.table] if spec.table else sql_tables(spec.sql or "")
        read = [table_dataset(name, table_location(spark, name, missing_ok=True)) for name in names]
    else:
        read = [store_dataset(spec.uri)]

    def progress(done: Any) -> None:
        log(
            "Progress: %d/%d inputs, %d/%d shards, %.1f rows/s",
            done.rows_done,
            done.rows_total,
            done.shards_done,
            done.shards_total,
            done.rows_per_s,
        )

    with attached.guard("preprocessing"):
        shardset = run_prepared(
            prepared,
            spark=spark,
            producer=Producer.from_dict(p["producer"]),
            progress=progress,
            progress_interval_s=float(p.get("progress_interval_s", 10.0)),
            tag=p.get("tag"),
        )
    stats = shardset.stats
    log(
        "Committed %s: %d rows in %d shards; %d quarantined %s",
        shardset.manifest_uri,
        shardset.num_rows,
        shardset.num_shards,
        stats.get("quarantined", 0),
        stats.get("by_reason", {}),
    )
    return {"reference": shardset.to_dict(), "read": read}


def run_train(request: StageRequest, env: DriverEnv) -> dict[str, Any]:
    """Ray Train on the shared cluster (:func:`airflow_bigdata_ai.train.train`); returns the ModelRef."""
    from airflow_bigdata_ai.train import RunKey, TrainConfig, train

    p = request.params
    settings = dict(p["config"])
    if settings.get("train_step") is not None:
        step = decode_callable(settings["train_step"])
        settings["train_step"] = step.path if step.path is not None else step.load()
    store = env.stores(p.get("output_root") or request.store.root)
    attached, log = _needed(env.attached, "training"), env.log
    attached.ray()
    with attached.guard("training"):
        ref = train(
            p["train_data"],
            store,
            decode_callable(p["model_factory"]),
            config=TrainConfig.from_dict(settings),
            run=RunKey(**p["run"]),
            factory_kwargs=p.get("factory_kwargs") or {},
            validation_data=p.get("validation_data"),
            output_root=p.get("output_root"),
        )
    metrics = ref.metrics
    log(
        "Trained %s: val_accuracy=%.4f, %d epochs, %d worker restart(s), resumed from epoch %d -> %s",
        ref.model_factory,
        metrics["val_accuracy"],
        metrics["epochs"],
        metrics["restarts"],
        metrics["resumed_from_epoch"],
        ref.weights_uri,
    )
    return {"reference": ref.to_dict()}


def run_infer(request: StageRequest, env: DriverEnv) -> dict[str, Any]:
    """OpenVINO inference (:func:`~airflow_bigdata_ai.infer.run_inference`) on Ray or Spark."""
    import contextlib

    from airflow_bigdata_ai.infer import InferOptions, run_inference
    from airflow_bigdata_ai.shards import ModelRef, Producer, ShardSet

    p, attached, log = request.params, env.attached, env.log
    options = InferOptions(**p["options"]).validate()
    ref, data = ModelRef.coerce(p["model_ref"]), ShardSet.coerce(p["input_data"])
    spark = None
    if options.engine == "ray":
        _needed(attached, "inference on Ray").ray()
    elif options.engine == "spark":
        spark = _needed(attached, "inference on Spark").spark()
    log(
        "Inference of %s on %s (%d rows) -> %s, precision %s, engine %s",
        ref.weights_uri,
        data.manifest_uri,
        data.num_rows,
        p["output_uri"],
        options.precision,
        options.engine,
    )
    with attached.guard("inference") if attached is not None else contextlib.nullcontext():
        result = run_inference(
            ref,
            data,
            p["output_uri"],
            model_store=env.stores(ref.weights_uri),
            input_store=env.stores(data.manifest_uri),
            output_store=env.stores(p["output_uri"]),
            options=options,
            spark=spark,
            producer=Producer.from_dict(p["producer"]),
            tag=p.get("tag"),
            log_fn=lambda line: log("%s", line),
            factory=decode_callable(p["model_factory"]) if p.get("model_factory") else None,
        )
    summary = result.summary
    log(
        "Precision requested %s, actually run %s (OpenVINO runtime %s); %d rows, %.1f images/s, accuracy %s",
        summary["precision_requested"],
        summary["precision_used"],
        ",".join(summary["runtime_precision"]),
        summary["rows"],
        summary["images_per_s"] or 0.0,
        "n/a" if summary["accuracy"] is None else f"{summary['accuracy']:.2%}",
    )
    return {"reference": result.shardset.to_dict(), "summary": summary}


DRIVERS: dict[str, Driver] = {
    "noop": run_noop,
    "preprocess": run_preprocess,
    "train": run_train,
    "infer": run_infer,
}


def run_stage(request: StageRequest, env: DriverEnv) -> dict[str, Any]:
    """Run ``request``'s stage driver here and return what it produced."""
    return DRIVERS[request.stage](request, env)
