"""Airflow cluster policy for the "every task starts its own cluster" variant of the end-to-end benchmark.

Put this folder on ``PYTHONPATH`` (the harness does, for that variant only) and set
``AIRFLOW_BIGDATA_AI_PER_TASK_ROOT``. The DAG file is not changed: at parse time the policy gives every task
that uses the shared cluster (``SharedClusterOperator``) a pre-execute hook that points the default connection
at a fresh state directory of its own (so the task's ``attach()`` cold-starts a new Ray-on-Spark cluster,
exactly what a per-task design pays) and a post-execute hook that stops that cluster. The setup/teardown tasks
of the shared cluster have nothing to do in such a design and become no-ops. Each task's cluster start and
stop are appended to ``<root>/per_task_clusters.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

ROOT_ENV = "AIRFLOW_BIGDATA_AI_PER_TASK_ROOT"
STATE_ENV = "AIRFLOW_BIGDATA_AI_STATE_DIR"


def _record(root: str, entry: dict[str, Any]) -> None:
    with open(os.path.join(root, "per_task_clusters.jsonl"), "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def _noop(self: Any, context: Any) -> None:
    self.log.info("per-task cluster variant: no shared cluster to set up or tear down")


def task_policy(task: Any) -> None:
    root = os.environ.get(ROOT_ENV)
    if not root:
        return
    from airflow_bigdata_ai.operators.base import SharedClusterOperator
    from airflow_bigdata_ai.operators.cluster import (
        SetupRayOnSparkClusterOperator,
        TeardownRayOnSparkClusterOperator,
    )

    if not isinstance(task, SharedClusterOperator):
        return
    if isinstance(task, (SetupRayOnSparkClusterOperator, TeardownRayOnSparkClusterOperator)):
        task.execute = _noop.__get__(task)  # type: ignore[method-assign]
        return
    state_dir = os.path.join(root, "clusters", task.dag_id, task.task_id)

    def pre_execute(context: Any) -> None:
        from airflow_bigdata_ai.cluster import ClusterConfig, ensure_cluster

        os.environ[STATE_ENV] = state_dir
        task.__dict__.pop("hook", None)  # the hook caches its settings: rebuild it for this state dir
        started = time.monotonic()
        ensure_cluster(ClusterConfig(state_dir=state_dir, idle_timeout_s=600.0, start_timeout_s=900.0))
        _record(root, {"task_id": task.task_id, "event": "cold_start", "seconds": time.monotonic() - started})

    def post_execute(context: Any, result: Any = None) -> None:
        from airflow_bigdata_ai.cluster import ClusterConfig, stop_cluster

        started = time.monotonic()
        stop_cluster(ClusterConfig(state_dir=state_dir))
        _record(root, {"task_id": task.task_id, "event": "stop", "seconds": time.monotonic() - started})

    task._pre_execute_hook = pre_execute
    task._post_execute_hook = post_execute
