"""OpenVINOInferOperator: a thin Airflow face on :func:`airflow_bigdata_ai.infer.run_inference`.

Construction imports neither torch, OpenVINO, Ray nor Spark (DAG parsing stays cheap). ``execute`` checks the
references and options, then runs the stage's driver (:func:`airflow_bigdata_ai.jobs.drivers.run_infer`: the
engine, the precision that actually ran) in this process or as a job of the cluster service (a connection
with ``jobs_url``; ``deferrable=True`` waits in the triggerer), and returns the predictions ShardSet (whose
``stats`` carry the summary) to XCom; the summary also goes to its own XCom key for dashboards.
"""

from __future__ import annotations

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
    :param progress_interval_s: how often the task log says how many shards the workers have written.
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
        progress_interval_s: float = 10.0,
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
        self.progress_interval_s = progress_interval_s
        self._ray_attached = False
        self.track_reference_sources("model_ref", "input_data")

    def execute(self, context: Context) -> dict[str, Any]:
        from dataclasses import asdict

        from airflow_bigdata_ai.infer import InferOptions
        from airflow_bigdata_ai.shards import InvalidReference, ModelRef, ShardSet

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
                progress_interval_s=float(self.progress_interval_s),
            ).validate()
        except (InvalidReference, ValueError) as exc:
            raise AirflowFailException(f"invalid inference arguments: {exc}") from exc
        location = self.output_uri or self.output_location(context)[1]
        if options.engine == "spark":
            self._tag = self.job_tag(context)
        params: dict[str, Any] = {
            "model_ref": ref.to_dict(),
            "input_data": data.to_dict(),
            "output_uri": location,
            "options": asdict(options),
            "producer": asdict(self.producer(context)),
            "tag": self._tag,
        }
        if self.remote:  # the factory's modules as this host finds them (beside the DAG): the cluster has no copy
            from airflow_bigdata_ai.jobs.request import encode_callable
            from airflow_bigdata_ai.usercode import UserCallable

            params["model_factory"] = encode_callable(UserCallable.of(ref.model_factory, check_import=False))
        request = self.stage_request(context, "infer", params)
        if self.remote:
            return self.finish(context, self.run_driver(context, request))
        # a gate, shapes, weights that do not fit, a missing module or bad factory kwargs, more CPUs than the
        # cluster can ever give: run_driver fails the task without retries (the same input fails the same way)
        attached = None if options.engine == "local" else self.attach_cluster(context)
        try:
            if options.engine == "ray":
                self._ray_attached = True
            elif attached is not None:
                self._spark = attached.spark()  # the driver's session: on_kill interrupts this attempt's tag
            result = self.run_driver(context, request, attached)
        finally:
            self._spark = None
            self._ray_attached = False
            if attached is not None:
                attached.close()
        return self.finish(context, result)

    def finish(self, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        from airflow_bigdata_ai.shards import ShardSet

        context["ti"].xcom_push(key=SUMMARY_XCOM_KEY, value=result["summary"])
        return self.publish(context, ShardSet.coerce(result["reference"]))  # signed; also the outlet events'

    def on_kill(self) -> None:
        """Cancel only this attempt's work: its Spark tag, or its Ray driver (which owns the actor pool); remote:
        its driver job on the cluster."""
        self.interrupt_spark_tag()
        self.stop_driver_job()
        if self._ray_attached:
            import ray

            self.log.info("Disconnecting the Ray driver: its actor pool and tasks are cancelled with it")
            ray.shutdown()
