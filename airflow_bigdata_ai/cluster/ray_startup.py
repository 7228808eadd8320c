"""Ray on Spark's start-up without its fixed sleeps, and the settings the service gives every Ray node.

``ray.util.spark.setup_ray_cluster`` (Ray 2.60) launches the head node and then sleeps a fixed
``_RAY_HEAD_STARTUP_TIMEOUT`` (20 s) before it checks once that the GCS port is open; it then polls for its
minimum worker nodes every 3 s. The head is up after ~7 s on an idle 2-core machine, so a cold start spent
~13 s asleep. Here the single check becomes a poll of the same port (the driver that Ray on Spark connects
next waits by itself until the head's raylet has registered), with a deadline longer than Ray's 20 s so a
loaded machine is not failed sooner than before. If a Ray release renames these internals, Ray's own
behaviour is kept.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

HEAD_PORT_DEADLINE_S = 120.0

# Environment of every Ray node (the head inherits the service's; worker nodes get it through the executors'
# environment). A user's own value is kept (docs/real-cluster.rst).
NODE_ENV = {
    # Ray Train's preemption watcher reports cloud nodes being drained; Ray on Spark's nodes are Spark tasks,
    # never drained that way, and the watcher was one more actor process and poller in every training.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
# ``ray start`` options of every node. The log monitor forwards workers' output to their drivers, and this
# package's drivers connect with ``log_to_driver=False`` (job logs are files the Jobs API reads itself). It
# globs the logs folder ten times a second, so it costs more as worker logs pile up: 8.5 % of all the CPU
# time of a whole ``make test`` run.
NODE_OPTIONS: dict[str, object] = {"include_log_monitor": False}
POLL_INTERVAL_S = 0.2
WORKER_PROGRESS_INTERVAL_S = 0.5


def node_env() -> dict[str, str]:
    """:data:`NODE_ENV`, with any value already set in this process's environment winning."""
    return {name: os.environ.get(name, value) for name, value in NODE_ENV.items()}


def _polling(is_port_in_use: Callable[[str, int], bool], deadline_s: float) -> Callable[[str, int], bool]:
    def head_port_in_use(host: str, port: int) -> bool:
        give_up = time.monotonic() + deadline_s
        while not is_port_in_use(host, port):
            if time.monotonic() >= give_up:
                return False
            time.sleep(POLL_INTERVAL_S)
        return True

    head_port_in_use.polls = is_port_in_use  # type: ignore[attr-defined]
    return head_port_in_use


def poll_for_the_head_instead_of_sleeping(deadline_s: float = HEAD_PORT_DEADLINE_S) -> bool:
    """Patch Ray on Spark's start-up waits in this process; True when the patch applies (idempotent)."""
    import ray.util.spark.cluster_init as cluster_init

    check = getattr(cluster_init, "is_port_in_use", None)
    names = ("_RAY_HEAD_STARTUP_TIMEOUT", "_RAY_CLUSTER_STARTUP_PROGRESS_CHECKING_INTERVAL")
    if check is None or not all(hasattr(cluster_init, name) for name in names):
        log.info("Ray on Spark's start-up internals changed: keeping its fixed waits")
        return False
    if not hasattr(check, "polls"):
        cluster_init.is_port_in_use = _polling(check, deadline_s)
    cluster_init._RAY_HEAD_STARTUP_TIMEOUT = 0
    cluster_init._RAY_CLUSTER_STARTUP_PROGRESS_CHECKING_INTERVAL = WORKER_PROGRESS_INTERVAL_S  # type: ignore[assignment]
    return True
