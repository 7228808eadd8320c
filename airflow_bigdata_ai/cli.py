"""``airflow-bigdata-ai cluster start|status|stop`` for people who run the shared cluster outside Airflow.

Also reachable as ``python -m airflow_bigdata_ai``. No Airflow import: the cluster core is Airflow-free.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any


def _config(args: argparse.Namespace) -> Any:
    from airflow_bigdata_ai.cluster import ClusterConfig, default_state_dir

    kwargs: dict[str, Any] = {
        "state_dir": args.state_dir or default_state_dir(),
        "mode": getattr(args, "mode", None) or "embedded",
    }
    if getattr(args, "master", None):
        kwargs["master"] = args.master
    if getattr(args, "max_worker_nodes", None) is not None:
        kwargs["ray_max_worker_nodes"] = args.max_worker_nodes
    if getattr(args, "num_cpus_worker_node", None) is not None:
        kwargs["ray_num_cpus_worker_node"] = args.num_cpus_worker_node
    if getattr(args, "idle_timeout", None) is not None:
        kwargs["idle_timeout_s"] = args.idle_timeout
    for name in ("bind_address", "jobs_port", "spark_connect_port"):
        if getattr(args, name, None):
            kwargs[name] = getattr(args, name)
    conf = {}
    for item in getattr(args, "conf", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--conf expects KEY=VALUE, got {item!r}")
        conf[key] = value
    if conf:
        kwargs["spark_conf"] = conf
    return ClusterConfig(**kwargs)


def _print(data: dict) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def cmd_start(args: argparse.Namespace) -> int:
    from airflow_bigdata_ai.cluster import ClusterUnavailable, ensure_cluster

    t0 = time.monotonic()
    try:
        endpoint = ensure_cluster(_config(args))
    except ClusterUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    data = endpoint.to_dict()
    data["seconds"] = round(time.monotonic() - t0, 2)
    _print(data)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from airflow_bigdata_ai.cluster import cluster_status

    config = _config(args)
    status = cluster_status(config)
    if not args.connection:
        _print(status)
    elif status.get("alive"):
        print(connection_env(config, status, args.conn_id, args.store_root))
    else:
        print(f"error: the cluster of {config.state_dir} is not running", file=sys.stderr)
    return 0 if status.get("alive") else 3


def connection_env(config: Any, status: dict[str, Any], conn_id: str, store_root: str | None) -> str:
    """``AIRFLOW_CONN_<ID>='<json>'``: all an Airflow worker on another host needs (the token included)."""
    import shlex

    from airflow_bigdata_ai.cluster.config import StatePaths, read_token

    jobs_url = status.get("jobs_url") or ""
    extra = {"mode": "remote", "jobs_url": jobs_url, **({"store_root": store_root} if store_root else {})}
    conn = {
        "conn_type": "ray_on_spark",
        "host": status.get("master") or config.master,
        "password": read_token(StatePaths(config.state_dir).token),
    }
    name = "".join(c if c.isalnum() else "_" for c in conn_id).upper()
    return f"AIRFLOW_CONN_{name}={shlex.quote(json.dumps({**conn, 'extra': extra}))}"


def cmd_stop(args: argparse.Namespace) -> int:
    from airflow_bigdata_ai.cluster import stop_cluster

    stopped = stop_cluster(_config(args), timeout_s=args.timeout)
    print("stopped" if stopped else "not running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-bigdata-ai", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    top = parser.add_subparsers(dest="group", required=True)
    cluster = top.add_parser("cluster", help="the shared Spark application hosting Spark Connect and Ray")
    sub = cluster.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", help="default: $AIRFLOW_BIGDATA_AI_STATE_DIR or ~/.cache/...")
        p.add_argument("--mode", choices=["embedded", "remote"], default="embedded")

    start = sub.add_parser("start", help="start the cluster service (or report the running one)")
    common(start)
    start.add_argument("--master", help="embedded (default), spark://host:port, yarn, k8s://...")
    start.add_argument("--max-worker-nodes", type=int)
    start.add_argument("--num-cpus-worker-node", type=int)
    start.add_argument("--idle-timeout", type=float, help="seconds without attach before the service stops (0=never)")
    start.add_argument("--conf", action="append", metavar="KEY=VALUE", help="extra Spark conf (repeatable)")
    start.add_argument(
        "--bind-address", help="where the Jobs API listens for Airflow workers on other hosts (default 127.0.0.1)"
    )
    start.add_argument("--jobs-port", type=int, help="fixed port of the Jobs API (default: a free one)")
    start.add_argument("--spark-connect-port", type=int, help="fixed Spark Connect port (loopback; default: free)")
    start.set_defaults(func=cmd_start)

    status = sub.add_parser("status", help="print the endpoint record and liveness (exit 3 if not running)")
    common(status)
    status.add_argument("--master", help=argparse.SUPPRESS)
    status.add_argument(
        "--connection", action="store_true", help="print a ready AIRFLOW_CONN_... line (with the token) to paste"
    )
    status.add_argument("--conn-id", default="ray_on_spark_default", help="the connection's id (with --connection)")
    status.add_argument("--store-root", help="the shard store the workers share (with --connection)")
    status.set_defaults(func=cmd_status)

    stop = sub.add_parser("stop", help="stop the service and every process it started")
    common(stop)
    stop.add_argument("--master", help=argparse.SUPPRESS)
    stop.add_argument("--timeout", type=float, default=60.0)
    stop.set_defaults(func=cmd_stop)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
