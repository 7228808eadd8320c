"""The shared cluster core: one long-lived Spark application hosting Spark Connect and Ray on Spark.

Airflow-free on purpose (the hook and operators wrap it; the CLI uses it directly). Engines are imported
only inside the functions that need them.
"""

from airflow_bigdata_ai.cluster.client import (
    AttachedCluster,
    attach,
    cluster_status,
    ensure_cluster,
    stop_cluster,
)
from airflow_bigdata_ai.cluster.config import ClusterConfig, ClusterEndpoint, ClusterUnavailable, default_state_dir
from airflow_bigdata_ai.cluster.guard import ClusterLost

__all__ = [
    "AttachedCluster",
    "ClusterConfig",
    "ClusterEndpoint",
    "ClusterLost",
    "ClusterUnavailable",
    "attach",
    "cluster_status",
    "default_state_dir",
    "ensure_cluster",
    "stop_cluster",
]
