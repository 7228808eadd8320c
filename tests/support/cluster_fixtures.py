"""One real shared cluster per test session (Spark local-cluster + Spark Connect + Ray on Spark).

Fixtures:
- ``shared_cluster`` (session): starts the cluster once in a state dir under pytest's tmp dir, yields an
  object with ``.config`` (ClusterConfig), ``.endpoint`` (ClusterEndpoint) and ``.cold_start_s``; at the end
  of the session stops it and asserts that no process it started is left.
- ``attached`` (session): ``attach(shared_cluster.config)`` in the test process; call ``.spark()`` /
  ``.ray()`` on it. Do not ``close()`` it in a test; the fixture does at the end of the session.

Set ``AIRFLOW_BIGDATA_AI_TEST_STATE_DIR`` to an already running cluster's state dir to reuse it
(remote mode; it is then neither started nor stopped by the tests): handy while iterating.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil
import pytest

from airflow_bigdata_ai.cluster import (
    AttachedCluster,
    ClusterConfig,
    ClusterEndpoint,
    attach,
    ensure_cluster,
    stop_cluster,
)
from airflow_bigdata_ai.cluster.config import StatePaths, read_json, read_token

if TYPE_CHECKING:
    from airflow_bigdata_ai.jobs import JobsClient

REUSE_ENV = "AIRFLOW_BIGDATA_AI_TEST_STATE_DIR"


# -- process bookkeeping helpers (also imported by the cluster tests) ---------------------------------
def service_record(state_dir: str) -> dict:
    return read_json(StatePaths(state_dir).service) or {}


def session_processes(sid: int) -> list[psutil.Process]:
    """Live, non-zombie processes in session ``sid``."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except OSError:
            continue
    return found


def cluster_processes(state_dir: str) -> dict[int, float]:
    """pid -> create_time of every process the service in ``state_dir`` started (session + recorded)."""
    rec = service_record(state_dir)
    found: dict[int, float] = {}
    if rec.get("sid"):
        for proc in session_processes(int(rec["sid"])):
            try:
                found[proc.pid] = proc.create_time()
            except psutil.NoSuchProcess:
                pass
    for entry in read_json(StatePaths(state_dir).pids) or []:
        found.setdefault(int(entry["pid"]), float(entry["create_time"]))
    return found


def cluster_process_tree(state_dir: str) -> dict[int, float]:
    """:func:`cluster_processes` plus every live descendant of them (Ray workers and actors are raylet children
    the service may not have recorded yet)."""
    pids = cluster_processes(state_dir)
    for pid in list(pids):
        try:
            for child in psutil.Process(pid).children(recursive=True):
                pids.setdefault(child.pid, child.create_time())
        except psutil.NoSuchProcess:
            continue
    return pids


def still_alive(snapshot: dict[int, float]) -> list[str]:
    """The processes of a snapshot that still run (same pid AND same create time), described."""
    alive = []
    for pid, created in snapshot.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) <= 1.0 and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(proc.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return alive


def assert_nothing_left(snapshot: dict[int, float], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while still_alive(snapshot) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = still_alive(snapshot)
    assert not left, f"processes left behind: {left}"


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for client subprocesses: no inherited Ray token, loopback, repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "SPARK_REMOTE"))}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
    env.update(extra)
    return env


def jobs_client(cluster: SharedCluster) -> JobsClient:
    """The shared cluster's Jobs API client, with the token from its state directory."""
    from airflow_bigdata_ai.jobs import JobsClient

    return JobsClient(cluster.endpoint.jobs_url, read_token(StatePaths(cluster.config.state_dir).token))


def stop_leftover_jobs(cluster: SharedCluster, prefix: str, timeout_s: float = 90.0) -> list[str]:
    """Stop every driver job on the cluster service whose submission id starts with ``prefix`` and is not over yet,
    and wait until they ended: a test that failed half-way must not leave a long training holding the cluster's
    CPUs for the tests after it. Returns the ids it stopped."""
    client = jobs_client(cluster)

    def active() -> list[str]:
        return [
            str(job["submission_id"])
            for job in client.list()
            if str(job.get("submission_id")).startswith(prefix) and job.get("status") in ("PENDING", "RUNNING")
        ]

    stopped = active()
    for submission in stopped:
        client.stop(submission)
    deadline = time.monotonic() + timeout_s
    while active() and time.monotonic() < deadline:
        time.sleep(1.0)
    left = active()
    assert not left, f"driver jobs still running {timeout_s} s after being stopped: {left}"
    return stopped


# -- fixtures -----------------------------------------------------------------------------------------
@dataclass
class SharedCluster:
    config: ClusterConfig
    endpoint: ClusterEndpoint
    cold_start_s: float
    owned: bool = True
    figures: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedCluster]:
    reuse = os.environ.get(REUSE_ENV)
    if reuse:
        config = ClusterConfig(state_dir=reuse, mode="remote")
        yield SharedCluster(config, ensure_cluster(config), 0.0, owned=False)
        return
    state_dir = str(tmp_path_factory.mktemp("shared-cluster"))
    # idle timeout: a crashed test session must not leave a cluster running forever
    config = ClusterConfig(state_dir=state_dir, idle_timeout_s=1800.0)
    t0 = time.monotonic()
    try:
        endpoint = ensure_cluster(config)
    except BaseException:
        stop_cluster(config)
        raise
    cluster = SharedCluster(config, endpoint, time.monotonic() - t0)
    sys.stderr.write(
        f"\n[shared_cluster] cold start {cluster.cold_start_s:.1f} s, {endpoint.spark_connect_url}, "
        f"ray {endpoint.ray_address}, state {state_dir}\n"
    )
    try:
        yield cluster
    finally:
        snapshot = cluster_processes(state_dir)
        stopped = stop_cluster(config, timeout_s=60)
        assert stopped, "the shared cluster was not running at the end of the session"
        assert_nothing_left(snapshot)
        assert not os.path.exists(StatePaths(state_dir).endpoint)


@pytest.fixture(scope="session")
def attached(shared_cluster: SharedCluster) -> Iterator[AttachedCluster]:
    handle = attach(shared_cluster.config)
    try:
        yield handle
    finally:
        handle.close()
