"""The ``ray_on_spark`` connection: its declarative form and its translation into core settings.

Kept free of Airflow imports so provider metadata loads cheaply and the mapping is unit-testable.
Standard fields: ``host`` = Spark master (``embedded``, ``spark://...``, ``yarn``, ``k8s://...``),
``password`` = the cluster's auth token (masked). Everything else lives in ``extra``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from airflow_bigdata_ai.cluster.config import default_state_dir, state_root

DEFAULT_CONN_ID = "ray_on_spark_default"
CONN_TYPE = "ray_on_spark"

RAY_ON_SPARK_CONN_FIELDS: dict[str, dict[str, Any]] = {
    "mode": {
        "label": "Mode",
        "schema": {"type": ["string", "null"], "default": "embedded", "enum": ["embedded", "remote"]},
        "description": "embedded: start the shared cluster on first use; remote: only attach to a running one",
    },
    "state_dir": {
        "label": "State directory",
        "schema": {"type": ["string", "null"]},
        "description": "Where the cluster service publishes its endpoint record and token",
    },
    "store_root": {
        "label": "Shard store root",
        "schema": {"type": ["string", "null"]},
        "description": "file:///abs/path or s3://bucket/prefix where outputs are written",
    },
    "aws_conn_id": {
        "label": "AWS connection id (for s3:// stores)",
        "schema": {"type": ["string", "null"], "default": "aws_default"},
    },
    "max_worker_nodes": {"label": "Max Ray worker nodes", "schema": {"type": ["integer", "null"]}},
    "num_cpus_worker_node": {
        "label": "CPUs per Ray worker node",
        "schema": {"type": ["integer", "null"], "default": 2},
    },
    "idle_timeout_s": {
        "label": "Idle timeout (seconds, 0 = never)",
        "schema": {"type": ["number", "null"], "default": 3600},
    },
    "spark_conf": {
        "label": "Extra Spark conf (JSON object)",
        "schema": {"type": ["string", "null"]},
    },
}

RAY_ON_SPARK_UI_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "login", "port"],
    "relabeling": {"host": "Spark master", "password": "Auth token"},
    "placeholders": {
        "host": "embedded | spark://host:7077 | yarn | k8s://https://...",
        "password": "leave empty to generate one per cluster",
        "state_dir": "~/.cache/airflow-bigdata-ai/clusters/default",
        "store_root": "file:///data/airflow-bigdata-ai or s3://bucket/prefix",
    },
}


@dataclass(frozen=True)
class ConnectionSettings:
    """What a ``ray_on_spark`` connection says, with defaults for a missing connection (embedded)."""

    conn_id: str = DEFAULT_CONN_ID
    master: str = "embedded"
    mode: str = "embedded"
    state_dir: str = ""
    store_root: str = ""
    aws_conn_id: str = "aws_default"
    auth_token: str | None = field(default=None, repr=False)
    max_worker_nodes: int | None = None
    num_cpus_worker_node: int = 2
    idle_timeout_s: float = 3600.0
    spark_conf: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_parts(
        cls, conn_id: str, host: str | None, password: str | None, extra: dict[str, Any] | str | None
    ) -> ConnectionSettings:
        extras = _parse_extra(extra)
        spark_conf = extras.get("spark_conf") or {}
        if isinstance(spark_conf, str):
            spark_conf = json.loads(spark_conf) if spark_conf.strip() else {}
        if not isinstance(spark_conf, dict):
            raise ValueError(f"connection {conn_id!r}: spark_conf must be a JSON object")
        mode = extras.get("mode") or "embedded"
        if mode not in ("embedded", "remote"):
            raise ValueError(f"connection {conn_id!r}: mode must be 'embedded' or 'remote', got {mode!r}")
        safe_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in conn_id)
        state_dir = extras.get("state_dir") or default_state_dir(safe_id)
        store_root = extras.get("store_root") or os.environ.get(
            "AIRFLOW_BIGDATA_AI_STORE", os.path.join(state_root(), "store")
        )
        return cls(
            conn_id=conn_id,
            master=(host or "embedded").strip(),
            mode=mode,
            state_dir=os.path.expanduser(state_dir),
            store_root=os.path.expanduser(store_root) if "://" not in store_root else store_root,
            aws_conn_id=extras.get("aws_conn_id") or "aws_default",
            auth_token=password or None,
            max_worker_nodes=_optional_int(extras.get("max_worker_nodes")),
            num_cpus_worker_node=_optional_int(extras.get("num_cpus_worker_node")) or 2,
            idle_timeout_s=float(extras.get("idle_timeout_s", 3600)),
            spark_conf={str(k): str(v) for k, v in spark_conf.items()},
        )


def _parse_extra(extra: dict[str, Any] | str | None) -> dict[str, Any]:
    if not extra:
        return {}
    data = json.loads(extra) if isinstance(extra, str) else dict(extra)
    # The UI stores declarative fields either plainly or prefixed ``extra__ray_on_spark__<name>``.
    prefix = f"extra__{CONN_TYPE}__"
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in data.items() if v not in ("", None)}


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)
