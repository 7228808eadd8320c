"""Driver jobs on the shared cluster through Ray's Jobs HTTP API (issue 14), against the session's real cluster.

- a no-op driver goes there and back (the request in the store, the job on the head node, the result back);
- a wrong or missing token is refused naming the endpoint and saying "token"; an unreachable endpoint names
  its address;
- a retry of a task whose training job still runs reconnects to it (one job), and stopping it ends its Ray
  actors;
- the trigger streams the job's log and reports its end without blocking the event loop, and its ``on_kill``
  stops the job.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import asdict
from typing import Any

import pytest

from airflow_bigdata_ai.cluster import ClusterUnavailable
from airflow_bigdata_ai.cluster.config import StatePaths, read_token
from airflow_bigdata_ai.examples.sample_data import write_digits_shardset
from airflow_bigdata_ai.jobs import ClusterAuthError, ClusterJobRunner, JobsClient, StageRequest, StoreSpec
from airflow_bigdata_ai.jobs.request import encode_callable, submission_id, submission_prefix
from airflow_bigdata_ai.shards import open_store
from airflow_bigdata_ai.train import RunKey
from airflow_bigdata_ai.train.core import ship_model_factory
from tests.support.cluster_fixtures import SharedCluster

pytestmark = pytest.mark.integration

FACTORY = "airflow_bigdata_ai.examples.models.digits:make_digits_cnn"


@pytest.fixture(scope="module")
def jobs(shared_cluster: SharedCluster) -> JobsClient:
    url = shared_cluster.endpoint.jobs_url
    assert url.startswith("http://127.0.0.1:"), url
    return JobsClient(url, read_token(StatePaths(shared_cluster.config.state_dir).token))


@pytest.fixture
def runner(jobs: JobsClient, tmp_path: Any) -> ClusterJobRunner:
    return ClusterJobRunner(jobs, open_store(str(tmp_path)))


def _request(
    tmp_path: Any, stage: str, task: str, try_number: int, params: dict[str, Any], run: str = ""
) -> StageRequest:
    """A request of task ``task`` in DAG run ``run`` (a new run each time when not given), try ``try_number``."""
    prefix = submission_prefix("jobs_it", task, run or f"run-{time.time_ns()}")
    return StageRequest(stage, submission_id(prefix, try_number), StoreSpec(str(tmp_path)), params, task_key=prefix)


def test_a_noop_driver_runs_on_the_cluster_and_returns(runner: ClusterJobRunner, tmp_path: Any) -> None:
    lines: list[str] = []
    t0 = time.monotonic()
    result = runner.run(_request(tmp_path, "noop", "noop", 0, {}), lines.append)
    elapsed = time.monotonic() - t0
    print(f"no-op driver job end to end: {elapsed:.2f} s")
    assert result["reference"]["kind"] == "noop"
    assert any("started on the cluster" in line for line in lines), lines
    assert elapsed < 30


def test_a_wrong_or_missing_token_is_refused_and_an_unreachable_endpoint_named(jobs: JobsClient) -> None:
    for token, said in (("not-the-token", "was refused"), (None, "is missing")):
        with pytest.raises(ClusterAuthError) as refused:
            JobsClient(jobs.url, token).submit("python -c pass", f"abai-refused-{time.time_ns()}")
        assert jobs.url in str(refused.value) and "token" in str(refused.value) and said in str(refused.value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        with pytest.raises(ClusterUnavailable, match=closed.replace(".", r"\.")):
            JobsClient(closed, "x", timeout_s=5).version()


def _training(tmp_path: Any, try_number: int, epochs: int, run: str) -> StageRequest:
    store = open_store(str(tmp_path))
    data = write_digits_shardset(store, f"{tmp_path}/digits/ds=2026-01-01")
    config = {"epochs": epochs, "batch_size": 32, "lr": 5e-3, "num_workers": 2}
    params = {
        "train_data": data.to_dict(),
        "validation_data": None,
        "model_factory": encode_callable(ship_model_factory(FACTORY)),
        "factory_kwargs": {},
        "config": config,
        "run": asdict(RunKey("jobs_it", "train", run, None, try_number)),
        "output_root": None,
    }
    return _request(tmp_path, "train", "train", try_number, params, run)


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_a_retry_reconnects_to_the_running_job_and_stop_ends_its_actors(
    runner: ClusterJobRunner, attached: Any, tmp_path: Any
) -> None:
    from airflow_bigdata_ai.train.core import wait_job_actors_gone

    first = runner.submit(_training(tmp_path, 1, epochs=40, run="retried"))
    try:
        _wait_for(lambda: "epoch 1/40" in runner.client.logs(first), 300, "the first epoch")
        again = runner.submit(_training(tmp_path, 2, epochs=40, run="retried"))  # the same task instance, try 2
        assert again == first
        mine = [j for j in runner.client.list() if (j.get("metadata") or {}).get("abai_task_key") == _task_key(first)]
        assert len(mine) == 1, mine
        ray_job = str((runner.client.info(first) or {})["job_id"])
    finally:
        runner.cancel(first)
    _wait_for(lambda: runner.state(first).status == "STOPPED", 60, "the job to stop")
    attached.ray()
    left = [a for a in _actors(wait_job_actors_gone(ray_job, timeout=60)) if a not in RAY_CLUSTER_SINGLETONS]
    assert not left, left


# Ray's cluster-wide detached singletons, created by whichever job first needs them and shared by all later ones
RAY_CLUSTER_SINGLETONS = {"TrainStateActor", "_StatsActor", "_AutoscalingCoordinatorActor"}


def _actors(ids: list[str]) -> list[str]:
    from ray.util.state import get_actor

    return [a.class_name for a in map(get_actor, ids) if a is not None and a.state != "DEAD"]


def _task_key(submission: str) -> str:
    return submission.rsplit("-try", 1)[0]


def test_the_trigger_streams_the_log_reports_the_end_and_on_kill_stops_the_job(
    shared_cluster: SharedCluster, runner: ClusterJobRunner, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_bigdata_ai.triggers.cluster_job import ClusterJobTrigger

    conn = {
        "conn_type": "ray_on_spark",
        "password": read_token(StatePaths(shared_cluster.config.state_dir).token),
        "extra": {"mode": "remote", "jobs_url": shared_cluster.endpoint.jobs_url, "store_root": str(tmp_path)},
    }
    monkeypatch.setenv("AIRFLOW_CONN_ABAI_JOBS_IT", json.dumps(conn))
    done = runner.submit(_request(tmp_path, "noop", "noop", 0, {}))
    trigger = ClusterJobTrigger(conn_id="abai_jobs_it", submission_id=done, poll_interval_s=0.5)
    seen: list[str] = []
    monkeypatch.setattr(trigger.log, "info", lambda fmt, *args: seen.append(fmt % args))

    async def first_event() -> Any:
        ticks = 0

        async def ticker() -> None:  # the event loop keeps running while the trigger waits
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.05)

        tick = asyncio.create_task(ticker())
        try:
            async for event in trigger.run():
                return event, ticks
        finally:
            tick.cancel()

    event, ticks = asyncio.run(first_event())
    assert event.payload["status"] == "SUCCEEDED" and event.payload["submission_id"] == done
    assert any("started on the cluster" in line for line in seen), seen
    assert ticks > 10
    assert ClusterJobTrigger(**trigger.serialize()[1]).submission_id == done
    assert "password" not in json.dumps(trigger.serialize()[1]) and conn["password"] not in json.dumps(
        trigger.serialize()[1]
    )

    running = runner.submit(_training(tmp_path, 1, epochs=40, run="killed-deferred"))
    _wait_for(lambda: runner.state(running).status == "RUNNING", 120, "the training job to run")
    asyncio.run(ClusterJobTrigger(conn_id="abai_jobs_it", submission_id=running).on_kill())
    _wait_for(lambda: runner.state(running).status == "STOPPED", 60, "on_kill to stop the job")
