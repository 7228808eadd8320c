"""OpenVINOInferOperator: a thin Airflow face on :func:`airflow_bigdata_ai.infer.run_inference`.

Construction imports neither torch, OpenVINO, Ray nor Spark (DAG parsing stays cheap). ``execute`` resolves
the stores, attaches to the shared cluster for the chosen engine, runs the core, logs the precision that
actually ran and returns the predictions ShardSet (whose ``stats`` carry the summary) to XCom; the summary
also goes to its own XCom key for dashboards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_bigdata_ai.operators.base import SharedClusterOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

SUMMARY_XCOM_KEY = "inference_summary"


class OpenVINOInferOperator(SharedClusterOperator):
    """Predict every row of a ShardSet with a trained ModelRef through OpenVINO, data-parallel on the cluster.

    :param model_ref: the ModelRef (usually the training task's XCom), as a dict or JSON.
    :param input_data: the ShardSet to predict (``record_id``, tensor ``image``, optional ``label``).
    :param precision: ``"f32"`` (exact), ``"bf16"``, ``"int8"`` (NNCF, calibrated on the input) or ``"auto"``:
        try int8, bf16 and f32 on held-out rows and run the fastest within ``max_accuracy_drop`` of f32 (without
        labels, of agreement with f32's predictions); the summary lists each one's accuracy and speed. Never
        implicit, because OpenVINO silently runs bf16 on CPUs with AVX-512 BF16.
    :param engine: ``"ray"`` (Ray Data actor pool), ``"spark"`` (``mapInArrow`` over Spark Connect) or ``"local"``.
    :param max_accuracy_drop: allowed accuracy loss of bf16/int8 vs f32 on a held-out sample, in points.
    :param on_accuracy_drop: ``"fail"`` (no retries: the same data fails the same way) or ``"fallback"`` to f32.
    :param num_workers: actors (Ray) or partitions (Spark); each compiles the model once.
    :param output_uri: full output location; default ``<output_root>/<dag>/<task>/ds=<logical date>``
        (``run=<run id>`` without a logical date).
    """

    template_fields: Sequence[str] = (
        *SharedClusterOperator.template_fields,
        "model_ref",
        "input_data",
        "precision",
        "engine",
        "max_accuracy_drop",
        "on_accuracy_drop",
        "output_uri",
        "num_workers",
    )
    template_fields_renderers = {"model_ref": "json", "input_data": "json"}
    ui_color = "#e6f4ea"

    def __init__(
        self,
        *,
        model_ref: Any,
        input_data: Any,
        precision: str = "f32",
        engine: str = "ray",
        max_accuracy_drop: float | str = 1.0,
        on_accuracy_drop: str = "fail",
        output_uri: str | None = None,
        num_workers: int | str = 1,
        cpus_per_worker: float = 1.0,
        request_batch: int | None = None,
        calibration_samples: int = 128,
        holdout_samples: int = 512,
        image_column: str = "image",
        id_column: str = "record_id",
        label_column: str = "label",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_ref = model_ref
        self.input_data = input_data
        self.precision = precision
        self.engine = engine
        self.max_accuracy_drop = max_accuracy_drop
        self.on_accuracy_drop = on_accuracy_drop
        self.output_uri = output_uri
        self.num_workers = num_workers
        self.cpus_per_worker = cpus_per_worker
        self.request_batch = request_batch
        self.calibration_samples = calibration_samples
        self.holdout_samples = holdout_samples
        self.image_column = image_column
        self.id_column = id_column
        self.label_column = label_column
        self._ray_attached = False
        self.track_reference_sources("model_ref", "input_data")

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_bigdata_ai.cluster.admission import AdmissionRefused
        from airflow_bigdata_ai.infer import InferenceError, InferOptions, run_inference
        from airflow_bigdata_ai.shards import ChecksumMismatch, InvalidReference, ModelRef, ShardSet
        from airflow_bigdata_ai.usercode import UserCodeError

        ref = self.check_reference(context, "model_ref", ModelRef)  # signature, and producer if from XCom
        data = self.check_reference(context, "input_data", ShardSet)
        try:
            options = InferOptions(
                precision=str(self.precision),
                engine=str(self.engine),
                max_accuracy_drop=float(self.max_accuracy_drop),
                on_accuracy_drop=str(self.on_accuracy_drop),
                num_workers=int(self.num_workers),
                cpus_per_worker=float(self.cpus_per_worker),
                request_batch=self.request_batch,
                calibration_samples=self.calibration_samples,
                holdout_samples=self.holdout_samples,
                image_column=self.image_column,
                id_column=self.id_column,
                label_column=self.label_column,
            ).validate()
        except (InvalidReference, ValueError) as exc:
            raise AirflowFailException(f"invalid inference arguments: {exc}") from exc
        if self.output_uri:
            output_store, location = self.hook.store_for(self.output_uri), self.output_uri
        else:
            output_store, location = self.output_location(context)
        attached = None
        if options.engine != "local":
            attached = self.attach_cluster(context)
        try:
            if attached is not None and options.engine == "ray":
                attached.ray()
                self._ray_attached = True
            elif attached is not None:
                self._spark = attached.spark()
                self._tag = self.job_tag(context)
            self.log.info(
                "Inference of %s on %s (%d rows) -> %s, precision %s, engine %s",
                ref.weights_uri,
                data.manifest_uri,
                data.num_rows,
                location,
                options.precision,
                options.engine,
            )
            with attached.guard("inference") if attached is not None else contextlib.nullcontext():
                result = run_inference(
                    ref,
                    data,
                    location,
                    model_store=self.hook.store_for(ref.weights_uri),
                    input_store=self.hook.store_for(data.manifest_uri),
                    output_store=output_store,
                    options=options,
                    spark=self._spark,
                    producer=self.producer(context),
                    tag=self._tag,
                    log_fn=self.log.info,
                )
        except (InferenceError, ChecksumMismatch, UserCodeError, AdmissionRefused) as exc:
            # deterministic (a gate, shapes, weights that do not fit, a missing module or bad factory kwargs,
            # more CPUs than the cluster can ever give)
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._spark = None
            self._ray_attached = False
            if attached is not None:
                attached.close()
        summary = result.summary
        self.log.info(
            "Precision requested %s, actually run %s (OpenVINO runtime %s); %d rows, %.1f images/s, accuracy %s",
            summary["precision_requested"],
            summary["precision_used"],
            ",".join(summary["runtime_precision"]),
            summary["rows"],
            summary["images_per_s"] or 0.0,
            "n/a" if summary["accuracy"] is None else f"{summary['accuracy']:.2%}",
        )
        context["ti"].xcom_push(key=SUMMARY_XCOM_KEY, value=summary)
        return self.publish(context, result.shardset)  # signed; also the outlet events' reference

    def on_kill(self) -> None:
        """Cancel only this attempt's work: its Spark tag, or its Ray driver (which owns the actor pool)."""
        self.interrupt_spark_tag()
        if self._ray_attached:
            import ray

            self.log.info("Disconnecting the Ray driver: its actor pool and tasks are cancelled with it")
            ray.shutdown()
