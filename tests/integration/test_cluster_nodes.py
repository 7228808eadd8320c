"""What the service gives every Ray node of the shared cluster (``cluster.ray_startup``): no log monitor, and
the node environment (no preemption watcher in trainings)."""

from __future__ import annotations

import os

import psutil
import pytest

from airflow_bigdata_ai.cluster.ray_startup import NODE_ENV
from tests.support.cluster_fixtures import cluster_process_tree

pytestmark = pytest.mark.integration


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = [item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item]
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def test_every_ray_node_runs_without_a_log_monitor_and_with_the_node_environment(shared_cluster, attached) -> None:
    import ray

    attached.ray()

    @ray.remote(num_cpus=1)  # the head has no CPUs: this runs on a worker node, started if none is up
    def worker_node_env() -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in NODE_ENV}

    assert ray.get(worker_node_env.remote(), timeout=300) == NODE_ENV

    command_of: dict[int, str] = {}
    for pid in cluster_process_tree(shared_cluster.config.state_dir):
        try:
            command_of[pid] = " ".join(psutil.Process(pid).cmdline())
        except psutil.NoSuchProcess:
            continue
    gcs = [pid for pid, command in command_of.items() if "/gcs_server " in command]
    assert len(gcs) == 1, command_of
    head = _environ(gcs[0])  # the head node's processes start with the service's environment
    assert {name: head.get(name) for name in NODE_ENV} == NODE_ENV
    commands = list(command_of.values())
    alive_nodes = [node for node in ray.nodes() if node["Alive"]]
    raylets = [command for command in commands if "/raylet " in command or command.endswith("/raylet")]
    assert len(alive_nodes) >= 2 and len(raylets) >= 2, (alive_nodes, raylets)  # the head and a worker node
    monitors = [command for command in commands if "log_monitor" in command]
    assert not monitors, f"a Ray log monitor runs: {monitors}"
