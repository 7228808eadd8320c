"""One driver function per stage: the same call in a task's process (embedded) and as a job on the cluster.

A driver takes a :class:`~airflow_bigdata_ai.jobs.request.StageRequest` and the cluster it runs against,
attaches to it, runs the stage's core function and returns the reference it produced (a JSON dict). It logs
through ``log`` (the task's logger in process; stdout, hence the job's log, on the cluster). No Airflow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from airflow_bigdata_ai.cluster.config import ClusterConfig
from airflow_bigdata_ai.jobs.request import StageRequest, decode_callable

Log = Callable[..., None]
Driver = Callable[[StageRequest, ClusterConfig, Log], dict[str, Any]]

logger = logging.getLogger(__name__)


def run_noop(request: StageRequest, cluster: ClusterConfig, log: Log) -> dict[str, Any]:
    """No work: what submitting, starting and collecting a driver costs (the remote-overhead benchmark)."""
    log("no-op stage %s started", request.submission_id)
    return {"kind": "noop", "submission_id": request.submission_id, "started_at": time.time()}


def run_train(request: StageRequest, cluster: ClusterConfig, log: Log) -> dict[str, Any]:
    """Ray Train on the shared cluster (:func:`airflow_bigdata_ai.train.train`); returns the ModelRef."""
    from airflow_bigdata_ai.cluster import attach
    from airflow_bigdata_ai.train import RunKey, TrainConfig, train

    params = request.params
    settings = dict(params["config"])
    if settings.get("train_step") is not None:
        step = decode_callable(settings["train_step"])
        settings["train_step"] = step.path if step.path is not None else step.load()
    config = TrainConfig.from_dict(settings)
    store = request.store.store_for(params.get("output_root") or request.store.root)
    attached = attach(cluster)
    try:
        attached.ray()
        with attached.guard("training"):
            ref = train(
                params["train_data"],
                store,
                decode_callable(params["model_factory"]),
                config=config,
                run=RunKey(**params["run"]),
                factory_kwargs=params.get("factory_kwargs") or {},
                validation_data=params.get("validation_data"),
                output_root=params.get("output_root"),
            )
    finally:
        attached.close()
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
    return ref.to_dict()


DRIVERS: dict[str, Driver] = {"noop": run_noop, "train": run_train}


def run_stage(request: StageRequest, cluster: ClusterConfig, log: Log | None = None) -> dict[str, Any]:
    """Run ``request``'s stage driver here and return its reference."""
    driver = DRIVERS.get(request.stage)
    if driver is None:
        raise ValueError(f"stage {request.stage!r} has no driver yet; drivers: {', '.join(sorted(DRIVERS))}")
    return driver(request, cluster, log or logger.info)
