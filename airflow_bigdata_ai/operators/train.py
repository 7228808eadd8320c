"""RayTrainOperator: Ray Train (TorchTrainer, DDP over gloo) on the shared cluster, fed from a ShardSet.

Thin by design: the training itself is :func:`airflow_bigdata_ai.train.train`. Construction imports neither
torch nor Ray. Retries resume: the run handle (the deterministic checkpoint location of this dag/run/task)
goes to Airflow's task state store through ``ResumableJobMixin``; without a state store (``dag.test()``,
older setups) ``train()`` still finds the checkpoints at the same deterministic path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import ResumableJobMixin

from airflow_bigdata_ai.operators.base import SharedClusterOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_bigdata_ai.shards import ModelRef, ShardStore
    from airflow_bigdata_ai.train import EpochProgress, RunKey, TrainConfig

STATUS_SUCCEEDED = "SUCCEEDED"
STATUS_RESUMABLE = "RESUMABLE"
STATUS_LOST = "NO_CHECKPOINT"


class RayTrainOperator(ResumableJobMixin, SharedClusterOperator):
    """Train a PyTorch model data-parallel on the shared Ray cluster and return a ModelRef (as a dict).

    :param train_data: the training ShardSet (usually the upstream task's XCom), as a dict or JSON.
    :param model_factory: ``"package.module:function"`` returning a ``torch.nn.Module``; importable on the cluster.
    :param factory_kwargs: keyword arguments for the factory (recorded in the ModelRef).
    :param validation_data: an optional validation ShardSet; otherwise ``val_fraction`` of train_data is held out.
    :param training: any further :class:`~airflow_bigdata_ai.train.TrainConfig` field (``momentum``,
        ``feature_column``, ``train_step``...). Explicit arguments below win.
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
        model_factory: str,
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
        training: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_data = train_data
        self.model_factory = model_factory
        self.factory_kwargs = factory_kwargs or {}
        self.validation_data = validation_data
        self.training = dict(training or {})
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
            "train_step": train_step,
        }
        self._ref: ModelRef | None = None
        self._running = False

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

    def _log_progress(self, progress: EpochProgress) -> None:
        self.log.info("%s", progress.line())

    # -- ResumableJobMixin --------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        self.train_config()  # settings errors fail before the cluster is touched
        return self.execute_resumable(context)  # type: ignore[no-any-return]

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
        if result is not None and result.model_factory == self.model_factory:
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

    def poll_until_complete(self, external_id: Any, context: Context) -> None:
        """Run (or resume) the training; blocks until Ray Train finishes."""
        from airflow_bigdata_ai.train import train

        store, run, config = self._store(), self.run_key(context), self.train_config()
        attached = self.attach_cluster(context)
        try:
            attached.ray()
            self._running = True
            self._ref = train(
                self.train_data,
                store,
                self.model_factory,
                config=config,
                run=run,
                factory_kwargs=self.factory_kwargs,
                validation_data=self.validation_data,
                output_root=self.output_root,
                progress=self._log_progress,
            )
        finally:
            self._running = False
            attached.close()
        metrics = self._ref.metrics
        self.log.info(
            "Trained %s: val_accuracy=%.4f, %d epochs, %d worker restart(s), resumed from epoch %d -> %s",
            self.model_factory,
            metrics["val_accuracy"],
            metrics["epochs"],
            metrics["restarts"],
            metrics["resumed_from_epoch"],
            self._ref.weights_uri,
        )

    def get_job_result(self, external_id: Any, context: Context) -> dict[str, Any]:
        from airflow_bigdata_ai.train import read_result

        ref = self._ref or read_result(self._store(), self.run_key(context))
        if ref is None:
            raise RuntimeError(f"no training result recorded for {external_id}")
        return ref.to_dict()

    def on_kill(self) -> None:
        """Disconnect the Ray driver: the trainer's controller, workers and Ray Data actors die with it."""
        if not self._running:
            return
        from airflow_bigdata_ai.train import stop_current_job

        left = stop_current_job(timeout=20)
        if left:
            self.log.warning("Ray actors still alive after stopping the run: %s", left)
        else:
            self.log.info("Stopped the training run; no Ray actor of this task is left")
