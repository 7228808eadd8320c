"""RayTrainOperator: Ray Train (TorchTrainer, DDP over gloo) on the shared cluster, fed from a ShardSet.

Thin by design: the training itself is :func:`airflow_bigdata_ai.train.train`, called by the stage's driver
(:func:`airflow_bigdata_ai.jobs.drivers.run_train`) in this process, or as a job of the cluster service when the
connection has a ``jobs_url`` (``deferrable=True`` waits in the triggerer; a retry reconnects to the job of an
earlier try). Construction imports neither torch nor Ray. Retries resume: the run handle (the deterministic
checkpoint location of this dag/run/task) goes to Airflow's task state store through ``ResumableJobMixin``;
without a state store (``dag.test()``, older setups) ``train()`` still finds the checkpoints at the same
deterministic path. Once the task succeeded, the run's checkpoint folder is removed (``keep_checkpoints=True``
keeps it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import ResumableJobMixin
from airflow.sdk.exceptions import AirflowFailException

from airflow_bigdata_ai.operators.base import SharedClusterOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_bigdata_ai.jobs import StageRequest
    from airflow_bigdata_ai.shards import ModelRef, ShardStore
    from airflow_bigdata_ai.train import RunKey, TrainConfig
    from airflow_bigdata_ai.usercode import UserCallable

STATUS_SUCCEEDED = "SUCCEEDED"
STATUS_RESUMABLE = "RESUMABLE"
STATUS_LOST = "NO_CHECKPOINT"


class RayTrainOperator(ResumableJobMixin, SharedClusterOperator):
    """Train a PyTorch model data-parallel on the shared Ray cluster and return a ModelRef (as a dict).

    :param train_data: the training ShardSet (usually the upstream task's XCom), as a dict or JSON.
    :param model_factory: ``"package.module:function"`` (or the function itself) returning a ``torch.nn.Module``.
        The module may sit beside the DAG: its source travels with the job, and an edited module takes effect
        on the next run without a cluster restart. A callable is kept out of templating (Airflow would call it).
    :param factory_kwargs: keyword arguments for the factory (templated; rendered strings such as ``"64"`` are
        converted to the types the factory's parameters declare; recorded in the ModelRef).
    :param validation_data: an optional validation ShardSet; otherwise ``val_fraction`` of train_data is held out.
    :param train_step: an optional per-batch step (import path or callable), shipped like ``model_factory``.
    :param precision: ``"f32"`` or ``"bf16"``: forward passes under bfloat16 autocast with channels-last images
        (weights stay float32). Opt-in: it pays on CPUs with native bf16 (AVX-512 BF16, AMX); the ModelRef's
        metrics record the precision and whether the CPU ran it natively.
    :param keep_checkpoints: keep the run's checkpoint folder (``_checkpoints/<dag>/<task>/<run>/``) after the
        task succeeded; by default it is removed then (it is what a retry resumes from until success).
    :param training: any further :class:`~airflow_bigdata_ai.train.TrainConfig` field (``momentum``,
        ``feature_column``, ``train_step``...). Explicit arguments below win.

    Settings that cannot work (a ``TrainConfig`` ValueError, data without the configured columns) and user code
    that cannot be imported or called as configured fail the task without retries (``AirflowFailException``).
    """

    template_fields: Sequence[str] = (
        *SharedClusterOperator.template_fields,
        "train_data",
        "validation_data",
        "model_factory",
        "factory_kwargs",
        "training",
    )
    template_fields_renderers = {"train_data": "json", "validation_data": "json", "training": "json"}
    external_id_key = "ray_train_run"
    ui_color = "#d8e8f8"

    def __init__(
        self,
        *,
        train_data: Any,
        model_factory: str | Callable[..., Any],
        factory_kwargs: dict[str, Any] | None = None,
        validation_data: Any = None,
        epochs: int = 5,
        batch_size: int = 64,
        optimizer: str = "adam",
        lr: float = 1e-3,
        loss: str = "cross_entropy",
        seed: int = 0,
        num_workers: int = 2,
        resources_per_worker: dict[str, float] | None = None,
        val_fraction: float = 0.2,
        max_failures: int = 2,
        train_step: Any = None,
        precision: str = "f32",
        keep_checkpoints: bool = False,
        training: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_data = train_data
        # Airflow calls any callable it finds in a template field (with context=...): keep callables apart
        callable_factory = None if isinstance(model_factory, str) else model_factory
        self.model_factory_callable: Callable[..., Any] | None = callable_factory
        self.model_factory = model_factory if isinstance(model_factory, str) else _callable_name(model_factory)
        self.factory_kwargs = factory_kwargs or {}
        self.validation_data = validation_data
        self.training = {k: v for k, v in (training or {}).items() if not callable(v)}
        if train_step is None and callable((training or {}).get("train_step")):
            train_step = (training or {})["train_step"]
        self.keep_checkpoints = keep_checkpoints
        self.settings: dict[str, Any] = {
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer": optimizer,
            "lr": lr,
            "loss": loss,
            "seed": seed,
            "num_workers": num_workers,
            "resources_per_worker": dict(resources_per_worker or {"CPU": 1.0}),
            "val_fraction": val_fraction,
            "max_failures": max_failures,
            "precision": precision,
        }
        if train_step is not None:  # else a train_step given in ``training`` stays
            self.settings["train_step"] = train_step
        self._ref: ModelRef | None = None
        self._running = False
        self._code: dict[str, str] | None = None  # the user code this attempt ships: {module: sha256[:16]}
        self._shipped: dict[str, UserCallable] = {}  # model_factory / train_step, built once per attempt
        self.track_reference_sources("train_data", "validation_data")

    # -- helpers ------------------------------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        from airflow_bigdata_ai.train import TrainConfig

        return TrainConfig.from_dict({**self.training, **self.settings})

    def run_key(self, context: Context) -> RunKey:
        from airflow_bigdata_ai.train import RunKey

        ti = context["ti"]
        task_id = ti.task_id
        if getattr(ti, "map_index", -1) not in (-1, None):
            task_id = f"{task_id}__map_index={ti.map_index}"
        logical_date = context.get("logical_date")
        return RunKey(
            dag_id=ti.dag_id,
            task_id=task_id,
            run_id=ti.run_id,
            logical_date=logical_date.isoformat() if logical_date else None,
            try_number=getattr(ti, "try_number", None),
        )

    def _store(self) -> ShardStore:
        return self.hook.store_for(self.output_root or self.hook.store_root)

    def _factory(self) -> Any:
        return self.model_factory_callable if self.model_factory_callable is not None else self.model_factory

    # -- ResumableJobMixin --------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_bigdata_ai.shards import InvalidReference
        from airflow_bigdata_ai.train import discard_run
        from airflow_bigdata_ai.train.core import ship_callable, ship_model_factory
        from airflow_bigdata_ai.usercode import UserCodeError

        # a retry cannot fix these: impossible settings, data without the configured columns, a reference that
        # does not parse, a module that is missing or a factory that rejects its kwargs. Settings and code are
        # checked here, before the cluster is attached (or started); the references in execute_resumable.
        try:
            config = self.train_config()
            # a thin worker (remote) finds the user's modules without running them: they import torch
            factory = self._shipped["model_factory"] = ship_model_factory(self._factory(), not self.remote)
            code = factory.bundle
            if config.train_step is not None:
                step = self._shipped["train_step"] = ship_callable(config.train_step, "train_step", not self.remote)
                code = code.merged(step.bundle)
            self._code = code.describe()  # a recorded result of other code is never reused
            if self.model_factory_callable is None:
                self.model_factory = factory.name
            result = self.execute_remote(context) if self.remote else self.execute_resumable(context)
        except (UserCodeError, InvalidReference, ValueError) as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        if not self.keep_checkpoints:
            discard_run(self._store(), self.run_key(context))
            self.log.info("Removed the checkpoints of run %s (keep_checkpoints=False)", context["ti"].run_id)
        return result  # type: ignore[no-any-return]

    def execute_resumable(self, context: Context) -> dict[str, Any]:
        """Check the input references before the job starts (or is reconnected to); sign the ModelRef it returns.

        Whichever branch the mixin takes (fresh, reconnect, already succeeded), what reaches XCom is signed here.
        """
        from airflow_bigdata_ai.shards import ModelRef

        self._check_inputs(context)
        result = super().execute_resumable(context)
        return self.publish(context, ModelRef.coerce(result))  # signed; also the outlet events' reference

    def submit_job(self, context: Context) -> dict[str, Any]:
        """The "job" handle is this run's deterministic checkpoint location; training starts in polling."""
        from airflow_bigdata_ai.train import checkpoint_uri

        run = self.run_key(context)
        return {"checkpoint_uri": str(checkpoint_uri(self._store(), run)), "run_id": run.run_id}

    def get_job_status(self, external_id: Any, context: Context) -> str:
        from airflow_bigdata_ai.shards import ShardSet
        from airflow_bigdata_ai.train import has_checkpoint, read_result

        store, run = self._store(), self.run_key(context)
        result = read_result(store, run)
        same_code = self._code is None or result is None or result.code == self._code
        if result is not None and result.model_factory == self.model_factory and same_code:
            same_data = (result.trained_on or {}).get("manifest_sha256") == ShardSet.coerce(
                self.train_data
            ).manifest_sha256
            if same_data and store.exists(result.weights_uri):
                return STATUS_SUCCEEDED
        return STATUS_RESUMABLE if has_checkpoint(store, run) else STATUS_LOST

    def is_job_active(self, status: str) -> bool:
        return status == STATUS_RESUMABLE

    def is_job_succeeded(self, status: str) -> bool:
        return status == STATUS_SUCCEEDED

    def poll_until_complete(self, external_id: Any, context: Context) -> dict[str, Any]:  # type: ignore[override]
        """Run (or resume) the training; blocks until Ray Train finishes.

        Returns the result too: ``execute_resumable`` returns what this returns when it reconnects on a retry.
        """
        from airflow_bigdata_ai.shards import ModelRef

        attached = self.attach_cluster(context)  # starts the embedded cluster if needed; the task view's links
        try:
            self._running = True
            result = self.run_driver(context, self.train_request(context), attached)
        finally:
            self._running = False
            attached.close()
        self._ref = ModelRef.coerce(result["reference"])
        return self._ref.to_dict()

    # -- the driver's request; remote mode ------------------------------------------------------------------
    def train_request(self, context: Context) -> StageRequest:
        """Everything :func:`~airflow_bigdata_ai.jobs.drivers.run_train` needs, as JSON (user code by value)."""
        from dataclasses import asdict

        from airflow_bigdata_ai.jobs.request import encode_callable
        from airflow_bigdata_ai.train.core import ship_callable, ship_model_factory

        settings = {**self.training, **self.settings}  # validated by execute (train_config)
        if settings.get("train_step") is not None:
            step = self._shipped.get("train_step") or ship_callable(settings["train_step"], "train_step")
            settings["train_step"] = encode_callable(step)
        factory = self._shipped.get("model_factory") or ship_model_factory(self._factory())
        params = {
            "train_data": self.train_data,
            "validation_data": self.validation_data,
            "model_factory": encode_callable(factory),
            "factory_kwargs": self.factory_kwargs,
            "config": settings,
            "run": asdict(self.run_key(context)),
            "output_root": self.output_root,
        }
        return self.stage_request(context, "train", params)

    def execute_remote(self, context: Context) -> dict[str, Any]:
        """The driver runs on the cluster service; a deferrable task waits in the triggerer instead."""
        self._check_inputs(context)
        return self.finish(context, self.run_driver(context, self.train_request(context)))

    def _check_inputs(self, context: Context) -> None:
        """The input references' signatures, and their producer when they come from XCom."""
        from airflow_bigdata_ai.shards import ShardSet

        self.check_reference(context, "train_data", ShardSet)
        if self.validation_data is not None:
            self.check_reference(context, "validation_data", ShardSet)

    def finish(self, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        from airflow_bigdata_ai.shards import ModelRef
        from airflow_bigdata_ai.train import discard_run

        self._ref = ModelRef.coerce(result["reference"])  # the driver logged its metrics (into this task's log)
        if self.deferrable and not self.keep_checkpoints:  # execute() removes them when the task did not defer
            discard_run(self._store(), self.run_key(context))
        return self.publish(context, self._ref)

    def get_job_result(self, external_id: Any, context: Context) -> dict[str, Any]:
        from airflow_bigdata_ai.train import read_result

        ref = self._ref or read_result(self._store(), self.run_key(context))
        if ref is None:
            raise RuntimeError(f"no training result recorded for {external_id}")
        return ref.to_dict()

    def on_kill(self) -> None:
        """Stop the driver: the trainer's controller, workers and Ray Data actors die with it.

        Remote: stop this attempt's driver job on the cluster service. Embedded: disconnect this process's Ray
        driver."""
        if self.remote:
            self.stop_driver_job()
            return
        if not self._running:
            return
        from airflow_bigdata_ai.train import stop_current_job

        left = stop_current_job(timeout=20)
        if left:
            self.log.warning("Ray actors still alive after stopping the run: %s", left)
        else:
            self.log.info("Stopped the training run; no Ray actor of this task is left")


def _callable_name(obj: Any) -> str:
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"
