"""Driver jobs on the shared cluster through Ray's Jobs HTTP API (issue 14), against the session's real cluster.

- a no-op driver goes there and back (the request in the store, the job on the head node, the result back);
- a wrong or missing token is refused naming the endpoint and saying "token"; an unreachable endpoint names
  its address;
- the trigger streams the job's log and reports its end without blocking the event loop.

A retry's reconnect, and a cleared deferred task's stop, run under the real scheduler and triggerer in
tests/integration/test_train_user_code.py (and the rules, without a cluster, in tests/unit/test_jobs.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest

from airflow_bigdata_ai.cluster import ClusterUnavailable
from airflow_bigdata_ai.cluster.config import StatePaths, read_token
from airflow_bigdata_ai.jobs import ClusterAuthError, ClusterJobRunner, JobsClient, StageRequest, StoreSpec
from airflow_bigdata_ai.jobs.request import submission_id, submission_prefix
from airflow_bigdata_ai.shards import open_store
from tests.support.cluster_fixtures import SharedCluster, jobs_client

pytestmark = pytest.mark.integration

FACTORY = "airflow_bigdata_ai.examples.models.digits:make_digits_cnn"


@pytest.fixture(scope="module")
def jobs(shared_cluster: SharedCluster) -> JobsClient:
    url = shared_cluster.endpoint.jobs_url
    assert url.startswith("http://127.0.0.1:"), url
    return jobs_client(shared_cluster)


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


def test_the_trigger_streams_the_log_and_reports_the_end_without_blocking_the_loop(
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
