"""The embedded cluster is reachable from this host only: every server of it listens on loopback."""

from __future__ import annotations

import ipaddress
import time

import psutil
import pytest

from tests.support.cluster_fixtures import cluster_process_tree

pytestmark = pytest.mark.integration


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _listening(pids: dict[int, float]) -> list[tuple[str, int, str, int]]:
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((conn.laddr.ip, conn.laddr.port, name, pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(found)


def test_every_server_of_the_embedded_cluster_listens_on_loopback_only(shared_cluster, attached):
    """GCS, raylets, dashboard and its agents, the client server, Spark, and the workers and actors of a job."""
    import ray

    attached.ray()

    @ray.remote(num_cpus=0)
    class Probe:
        def node_ip(self) -> str:
            return str(ray.util.get_node_ip_address())

    probe = Probe.remote()  # type: ignore[attr-defined]
    assert ray.get(probe.node_ip.remote(), timeout=120) == "127.0.0.1"
    assert attached.spark().range(100).count() == 100
    assert {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]} == {"127.0.0.1"}
    time.sleep(1.0)  # the service records new pids every 3 s; the actor's worker is a raylet child
    listening = _listening(cluster_process_tree(shared_cluster.config.state_dir))
    names = {name for _ip, _port, name, _pid in listening}
    assert {"gcs_server", "raylet", "java"} <= names, listening  # the servers were found at all
    outside = [entry for entry in listening if not _is_loopback(entry[0])]
    ray.kill(probe)
    assert not outside, f"listening beyond loopback: {outside}"
