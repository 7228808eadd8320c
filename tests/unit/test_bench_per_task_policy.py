"""The per-task-cluster policy of the e2e benchmark, checked without a cluster.

The suite's smoke run of the benchmarks skips that variant (3 cold starts); ``make bench`` runs it. This keeps
its wiring from rotting: every cluster task gets its own state dir and start/stop hooks, setup and teardown
become no-ops, and nothing happens without the policy's environment variable.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest

from airflow_bigdata_ai.operators.cluster import SetupRayOnSparkClusterOperator, TeardownRayOnSparkClusterOperator
from airflow_bigdata_ai.operators.train import RayTrainOperator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _policy() -> Any:
    path = os.path.join(REPO, "benchmarks", "per_task_cluster", "airflow_local_settings.py")
    spec = importlib.util.spec_from_file_location("per_task_policy", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train() -> RayTrainOperator:
    return RayTrainOperator(task_id="train", train_data={}, model_factory="m:f")


def test_each_cluster_task_gets_its_own_cluster_hooks(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy()
    monkeypatch.setenv(policy.ROOT_ENV, str(tmp_path))
    train, setup, teardown = (
        _train(),
        SetupRayOnSparkClusterOperator(task_id="s"),
        TeardownRayOnSparkClusterOperator(task_id="t"),
    )
    for task in (train, setup, teardown):
        policy.task_policy(task)
    assert callable(train._pre_execute_hook) and callable(train._post_execute_hook)
    for task in (setup, teardown):
        task.execute({})  # a no-op: there is no shared cluster in a per-task design
    assert not os.path.exists(tmp_path / "clusters")  # nothing starts before a task runs


def test_without_its_environment_the_policy_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy()
    monkeypatch.delenv(policy.ROOT_ENV, raising=False)
    train = _train()
    policy.task_policy(train)
    assert train._pre_execute_hook is None and train._post_execute_hook is None


def test_the_plot_of_a_report_whose_benchmarks_all_failed_is_still_drawn(tmp_path) -> None:
    """A failed benchmark has no ratio: the log-scaled axis had no positive value and the whole report was lost."""
    from benchmarks.__main__ import plot

    report = {
        "fast": False,
        "machine": {"cpu": "test cpu", "cores": 2},
        "benchmarks": {"backfill": {"error": "exit code 1 after 12 s"}},
    }
    plot(report, str(tmp_path / "benchmarks.png"))
    assert (tmp_path / "benchmarks.png").stat().st_size > 0
