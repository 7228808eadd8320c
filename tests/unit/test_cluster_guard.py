"""The guard around a stage's work: a dead cluster becomes ClusterLost, in bounded time (issue 15)."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_bigdata_ai.cluster import ClusterEndpoint, ClusterLost
from airflow_bigdata_ai.cluster.guard import guard_stage

ENDPOINT = ClusterEndpoint(
    spark_connect_url="sc://localhost:15002",
    ray_address="127.0.0.1:6379",
    spark_ui_url="",
    ray_dashboard_url="",
    pid=1,
    started_at="2026-11-30T00:00:00+00:00",
    master="local-cluster[2,2,1024]",
    versions={},
    cluster_id="c0ffee",
)


def test_an_error_while_the_cluster_is_gone_becomes_cluster_lost_naming_it() -> None:
    with pytest.raises(ClusterLost, match=r"training: the shared cluster c0ffee stopped answering \(Ray GCS gone\)"):
        with guard_stage(ENDPOINT, lambda: "Ray GCS gone", "training", interval_s=60):
            raise RuntimeError("The actor is temporarily unavailable: RpcError: Socket closed")


def test_an_error_while_the_cluster_answers_stays_what_it_is() -> None:
    with pytest.raises(ValueError, match="bad kwargs"):
        with guard_stage(ENDPOINT, lambda: None, "training", interval_s=60):
            raise ValueError("bad kwargs")


class _BlockedSession:
    """A Spark Connect session whose call blocks in retries until its channel is closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.client = self

    def close(self) -> None:
        self.closed.set()

    def collect(self) -> None:
        if not self.closed.wait(30):
            raise AssertionError("still blocked: nobody closed the channel")
        raise ValueError("Cannot invoke RPC on closed channel!")


def test_the_watchdog_unblocks_a_call_retrying_against_a_dead_server() -> None:
    session = _BlockedSession()
    started = time.monotonic()
    with pytest.raises(ClusterLost, match="preprocessing: the shared cluster c0ffee stopped answering"):
        with guard_stage(
            ENDPOINT, lambda: "port closed", "preprocessing", lambda: session, interval_s=0.1, lost_after_s=0.3
        ):
            session.collect()
    assert time.monotonic() - started < 5


def test_a_short_blip_is_not_a_lost_cluster() -> None:
    answers = iter(["port closed", None] * 100)
    session = _BlockedSession()
    with guard_stage(ENDPOINT, lambda: next(answers), "training", lambda: session, interval_s=0.05, lost_after_s=0.3):
        time.sleep(1)
    assert not session.closed.is_set()
