"""A job's view of the cluster dying under it: fail in bounded time, naming the cluster, never hang.

Without this, a task whose shared cluster was killed mid-job waited for pyspark's Spark Connect retries
(about 10 minutes of backoff against a closed port; measured: still blocked 272 s after the kill) or failed
with Ray's "actor is temporarily unavailable: Socket closed", which names neither the cluster nor the way out.
:func:`guard_stage` wraps one stage's work: a watchdog probes the cluster's ports while it runs and, once they
stay closed for ``lost_after_s``, closes the stage's Spark Connect session so a blocked call returns; any
error raised while the cluster does not answer becomes :class:`ClusterLost`, which names the cluster and
says that a retry attaches again (an embedded default starts a new cluster). Nothing partial is published:
every output commits only at its end.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.cluster.config import ClusterEndpoint, ClusterUnavailable

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 5.0
LOST_AFTER_S = 15.0  # ports closed this long: the service is gone (a busy service still accepts connections)
# Spark Connect's default policy retries a lost server for ~10 minutes (15 retries, backoff up to 60 s). A
# server that refuses connections for a minute is gone: retry ~50 s (backoff 50 ms x4 up to 8 s, 10 times).
SPARK_CONNECT_MAX_RETRIES = 10
SPARK_CONNECT_MAX_BACKOFF_MS = 8000


class ClusterLost(ClusterUnavailable):
    """The shared cluster stopped answering while a job ran on it (retryable: the next attempt attaches again)."""


def bound_spark_connect_retries(session: SparkSession) -> None:
    """Make a dead Spark Connect server an error within about a minute instead of ten."""
    from pyspark.sql.connect.client.retries import DefaultPolicy

    session.client.set_retry_policies(
        [DefaultPolicy(max_retries=SPARK_CONNECT_MAX_RETRIES, max_backoff=SPARK_CONNECT_MAX_BACKOFF_MS)]
    )


def lost_message(endpoint: ClusterEndpoint, what: str, problem: str) -> str:
    return (
        f"{what}: the shared cluster {endpoint.cluster_id} stopped answering ({problem}). Its service was "
        "stopped or killed while this job ran; nothing of this attempt was published. A retry attaches "
        "again (with an embedded cluster it starts a new one); check the service log if it keeps happening"
    )


class _Watchdog(threading.Thread):
    def __init__(
        self, probe: Callable[[], str | None], on_lost: Callable[[str], None], interval_s: float, lost_after_s: float
    ) -> None:
        super().__init__(name="cluster-watchdog", daemon=True)
        self.probe, self.on_lost = probe, on_lost
        self.interval_s, self.lost_after_s = interval_s, lost_after_s
        self.stop_event = threading.Event()
        self.problem: str | None = None

    def run(self) -> None:
        failing_since: float | None = None
        while not self.stop_event.wait(self.interval_s):
            problem = self.probe()
            if problem is None:
                failing_since = None
                continue
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since >= self.lost_after_s:
                self.problem = problem
                self.on_lost(problem)
                return


@contextlib.contextmanager
def guard_stage(
    endpoint: ClusterEndpoint,
    probe: Callable[[], str | None],
    what: str,
    spark: Callable[[], Any] | None = None,
    interval_s: float = PROBE_INTERVAL_S,
    lost_after_s: float = LOST_AFTER_S,
) -> Iterator[None]:
    """Run ``what`` (one stage's work); if the cluster goes away meanwhile, raise :class:`ClusterLost`.

    ``probe`` returns None while the cluster answers, else what failed. ``spark`` returns the stage's Spark
    Connect session if it has one: the watchdog stops it so a call blocked in retries returns at once.
    """

    def on_lost(problem: str) -> None:
        log.error("%s", lost_message(endpoint, what, problem))
        session = spark() if spark is not None else None
        if session is not None:
            with contextlib.suppress(Exception):
                session.client.close()

    watchdog = _Watchdog(probe, on_lost, interval_s, lost_after_s)
    watchdog.start()
    try:
        yield
    except ClusterLost:
        raise
    except Exception as exc:
        problem = watchdog.problem or probe()
        if problem is None:
            raise
        raise ClusterLost(lost_message(endpoint, what, problem)) from exc
    finally:
        watchdog.stop_event.set()
        watchdog.join(timeout=interval_s + 5)
