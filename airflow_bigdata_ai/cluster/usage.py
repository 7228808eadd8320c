"""Who is using the shared cluster right now, so a teardown never stops it under another run's feet.

Why: the cluster is shared by every DAG. One DAG's teardown task used to stop it while another DAG was
training on it, killing that training. Two sources say who is busy:

- Ray: every training and inference holds (or waits for) its CPUs in the admission queue
  (:mod:`airflow_bigdata_ai.cluster.admission`), labelled ``dag.task run``;
- Spark: every preprocessing job runs through Spark Connect, so its running Spark jobs carry Spark
  Connect's operation tags (and the client's own, ``abai-<dag>-<task>-...`` for ours). Ray on Spark's own
  long-running node jobs carry none and are not users.

An attached but idle client (a notebook, an operator between jobs) is not a user: only work counts.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_bigdata_ai.cluster.client import AttachedCluster
    from airflow_bigdata_ai.cluster.config import ClusterConfig

log = logging.getLogger(__name__)

SPARK_CONNECT_TAG = "SparkConnect_OperationTag"


def _get_json(url: str, timeout_s: float) -> object:
    """A GET on the Spark UI; its first call on a loaded driver took 12 s here (Jetty warming up)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read().decode())


def running_spark_jobs(spark_ui_url: str, timeout_s: float = 60.0) -> list[str]:
    """Names of the Spark Connect jobs running in the shared application (from the Spark UI's REST API)."""
    base = spark_ui_url.rstrip("/") + "/api/v1/applications"
    apps = _get_json(base, timeout_s)
    users: list[str] = []
    for app in apps if isinstance(apps, list) else []:
        jobs = _get_json(f"{base}/{app['id']}/jobs?status=running", timeout_s)
        for job in jobs if isinstance(jobs, list) else []:
            tags = [str(t) for t in job.get("jobTags") or []]
            if not any(t.startswith(SPARK_CONNECT_TAG) for t in tags):
                continue  # Ray on Spark's node jobs and the service's own work
            # a client's own tag shows as "SparkConnect_SessionTag_User_<user>_Session_<id>_Tag_<tag>"
            ours = [t.split("_Tag_", 1)[1] for t in tags if "_Tag_" in t]
            users.append(f"Spark job {job.get('jobId')} ({ours[0] if ours else 'a Spark Connect client'})")
    return users


def admitted_ray_jobs() -> list[str]:
    """Jobs holding or waiting for CPUs in the cluster's admission queue. Needs a connected Ray."""
    import ray

    from airflow_bigdata_ai.cluster.admission import NAMESPACE, QUEUE_NAME

    try:
        queue = ray.get_actor(QUEUE_NAME, namespace=NAMESPACE)
    except ValueError:  # never created: no job has run on Ray
        return []
    snapshot: Any = ray.get(queue.snapshot.remote(), timeout=30)
    return [f"Ray job {label} (running)" for label in snapshot["granted"]] + [
        f"Ray job {label} (queued)" for label in snapshot["waiting"]
    ]


def cluster_users(attached: AttachedCluster) -> list[str]:
    """Everything that is using the shared cluster now, described for a log line; empty when it is idle."""
    attached.ray()
    return admitted_ray_jobs() + running_spark_jobs(attached.endpoint.spark_ui_url)


def wait_for_other_jobs(
    config: ClusterConfig, timeout_s: float, poll_s: float = 5.0, say: Callable[[str], None] = log.info
) -> list[str]:
    """Wait up to ``timeout_s`` until no job uses the cluster ``config`` names; returns those still there.

    Attaches once for all the polls (a Ray connection per poll cost seconds each); a cluster that is not
    running has no users, and is never started here.
    """
    from airflow_bigdata_ai.cluster.client import attach, cluster_status

    if not cluster_status(config)["alive"]:
        return []
    with attach(config) as attached:
        return wait_until_unused(lambda: cluster_users(attached), timeout_s, poll_s, say)


def wait_until_unused(
    users: Callable[[], list[str]], timeout_s: float, poll_s: float = 5.0, say: Callable[[str], None] = log.info
) -> list[str]:
    """Poll ``users`` until it is empty or ``timeout_s`` passed; returns the users still there (or [])."""
    deadline = time.monotonic() + timeout_s
    current = users()
    while current and time.monotonic() < deadline:
        say(f"the shared cluster is in use by {len(current)} job(s): {'; '.join(current)}; waiting for them")
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        current = users()
    return current
