"""Every Ray server of an embedded cluster on one address (loopback by default), not on every interface.

Ray 2.60's gRPC servers (GCS, raylets, core workers) listen on 127.0.0.1 only when their node's IP is
127.0.0.1, and on ``*`` otherwise. Ray on Spark starts each node with ``ray start``, whose
``resolve_ip_for_localhost`` turns 127.0.0.1 into the host's outward address (eth0), and starts the
dashboard with ``--dashboard-host=0.0.0.0``. Measured with ``ss -ltnp`` on an embedded cluster: GCS,
raylets, the dashboard, its agents, the client server and every actor listened beyond loopback.

Two levers, both limited to this cluster's processes:

- the service's PATH begins with ``<state_dir>/bin``, holding a ``ray`` command that pins the node's IP
  and then runs Ray's own CLI: Ray on Spark runs ``python $(which ray) start`` for the head (from the
  service) and for each worker node (from a Spark executor, whose PATH the service sets);
- the service's ``cluster_init.get_all_interfaces_ip`` answers the same address (the dashboard host).

No Airflow import: the shim runs in Ray's node processes.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any

SHIM = """#!{python}
# Written by airflow-bigdata-ai for one cluster: Ray's CLI with every node of it on {ip}.
import sys

from airflow_bigdata_ai.cluster.ray_loopback import ray_cli

sys.exit(ray_cli({ip!r}))
"""


def _is_local_alias(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pin_node_ip(ip: str) -> None:
    """Make Ray in this process use ``ip`` as the node's address where it would resolve one."""
    import ray._private.services as services
    import ray.util

    # Ray's own functions, kept from the first pin: pinning again (the service's driver, then a client in the
    # same process) must not wrap a wrapper
    resolve = getattr(services.resolve_ip_for_localhost, "ray_original", services.resolve_ip_for_localhost)
    get_ip = getattr(services.get_node_ip_address, "ray_original", services.get_node_ip_address)

    def resolve_ip_for_localhost(host: str) -> str:
        return ip if _is_local_alias(host) else resolve(host)

    def get_node_ip_address(address: Any = None) -> str:
        import ray._private.worker

        return ip if ray._private.worker._global_node is None else get_ip(address)

    resolve_ip_for_localhost.ray_original = resolve  # type: ignore[attr-defined]
    get_node_ip_address.ray_original = get_ip  # type: ignore[attr-defined]
    services.resolve_ip_for_localhost = resolve_ip_for_localhost
    services.get_node_ip_address = get_node_ip_address
    ray.util.get_node_ip_address = get_node_ip_address


def pin_if_loopback(address: str) -> None:
    """Before ``ray.init(address=...)``: a GCS on loopback is reached on loopback, not on the host's eth0.

    Ray's client turns a 127.0.0.1 bootstrap address into the host's outward IP, where a cluster that
    listens on loopback only is not found; every driver of such a cluster pins its node IP first."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if _is_local_alias(host):
        pin_node_ip("127.0.0.1" if host == "localhost" else host)


def ray_cli(ip: str) -> int:
    """``ray ...`` with the node pinned to ``ip`` (the shim's body)."""
    pin_node_ip(ip)
    from ray.scripts.scripts import main

    sys.argv[0] = "ray"
    result = main()
    return int(result or 0)


def install_ray_shim(bin_dir: str, ip: str) -> str:
    """Write ``<bin_dir>/ray`` for ``ip`` and put ``bin_dir`` first on this process's PATH; returns bin_dir."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "ray")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(SHIM.format(python=sys.executable, ip=ip))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    entries = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    os.environ["PATH"] = os.pathsep.join([bin_dir, *entries])
    return bin_dir


def dashboard_on(ip: str) -> None:
    """Ray on Spark's dashboard (and anything else it binds to "all interfaces") on ``ip``."""
    import ray.util.spark.cluster_init as cluster_init
    from ray.util.spark.utils import _wait_service_up

    cluster_init.get_all_interfaces_ip = lambda: ip
    # Ray on Spark waits (60 s at most) for the dashboard on the head's address: look where it listens
    cluster_init._wait_service_up = lambda _host, port, timeout: _wait_service_up(ip, port, timeout)
