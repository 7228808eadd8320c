"""RayOnSparkHook: turns a ``ray_on_spark`` connection into the core cluster and store objects.

The hook is the only place where Airflow connections meet the core: it builds a ``ClusterConfig``,
attaches to (or, in embedded mode, starts) the shared cluster, and opens shard stores with
credentials from an AWS connection. Heavy engines are imported only when a method is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_bigdata_ai.connection import (
    CONN_TYPE,
    DEFAULT_CONN_ID,
    RAY_ON_SPARK_CONN_FIELDS,
    RAY_ON_SPARK_UI_BEHAVIOUR,
    ConnectionSettings,
    ReferencePolicy,
)

if TYPE_CHECKING:
    from airflow_bigdata_ai.cluster import AttachedCluster, ClusterConfig, ClusterEndpoint
    from airflow_bigdata_ai.shards import S3Options, ShardStore


class RayOnSparkHook(BaseHook):
    """Attach to the shared Spark application that hosts Ray, and open shard stores."""

    conn_name_attr = "ray_on_spark_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Ray on Spark (shared cluster)"

    def __init__(self, ray_on_spark_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ray_on_spark_conn_id = ray_on_spark_conn_id
        self._settings: ConnectionSettings | None = None

    # -- connection ---------------------------------------------------------------------------------
    @property
    def settings(self) -> ConnectionSettings:
        """The connection's settings; the default id works without a connection (embedded defaults)."""
        if self._settings is None:
            try:
                conn = self.get_connection(self.ray_on_spark_conn_id)
            except Exception as exc:  # AirflowNotFoundException differs between SDK versions
                if self.ray_on_spark_conn_id != DEFAULT_CONN_ID or "isn't defined" not in str(exc):
                    raise
                self.log.info("Connection %s not defined: using the embedded defaults", DEFAULT_CONN_ID)
                self._settings = ConnectionSettings.from_parts(DEFAULT_CONN_ID, None, None, None)
            else:
                self._settings = ConnectionSettings.from_parts(
                    self.ray_on_spark_conn_id, conn.host, conn.password, conn.extra
                )
        return self._settings

    def cluster_config(self) -> ClusterConfig:
        from airflow_bigdata_ai.cluster import ClusterConfig

        s = self.settings
        return ClusterConfig(
            state_dir=s.state_dir,
            master=s.master,
            mode=s.mode,
            ray_max_worker_nodes=s.max_worker_nodes,
            ray_num_cpus_worker_node=s.num_cpus_worker_node,
            idle_timeout_s=s.idle_timeout_s,
            auth_token=s.auth_token,
            spark_conf=dict(s.spark_conf),
        )

    # -- cluster ------------------------------------------------------------------------------------
    def ensure_cluster(self) -> ClusterEndpoint:
        """Make sure the shared cluster runs (embedded mode starts it) and return its endpoint."""
        from airflow_bigdata_ai.cluster import ensure_cluster

        return ensure_cluster(self.cluster_config())

    def attach(self) -> AttachedCluster:
        """Spark Connect session and Ray client for the running shared cluster (starts it if embedded)."""
        from airflow_bigdata_ai.cluster import attach

        attached = attach(self.cluster_config())
        self._mask_token()
        return attached

    def stop_cluster(self) -> bool:
        from airflow_bigdata_ai.cluster import stop_cluster

        return stop_cluster(self.cluster_config())

    def _mask_token(self) -> None:
        """Generated tokens never came from a connection, so register them with the log masker too."""
        import os

        from airflow.sdk.log import mask_secret

        token_file = os.path.join(self.settings.state_dir, "token")
        if os.path.exists(token_file):
            with open(token_file) as handle:
                mask_secret(handle.read().strip())

    # -- shard stores -------------------------------------------------------------------------------
    @property
    def store_root(self) -> str:
        return self.settings.store_root

    def s3_options(self) -> S3Options:
        """S3 credentials and endpoint from the AWS connection named in this connection's extra."""
        from airflow_bigdata_ai.shards import S3Options

        try:
            aws = self.get_connection(self.settings.aws_conn_id)
        except Exception:
            self.log.info("AWS connection %s not defined: using boto3's default chain", self.settings.aws_conn_id)
            return S3Options()
        extra = aws.extra_dejson
        # the Amazon provider's convention: botocore Config kwargs under "config_kwargs"
        config = extra.get("config_kwargs") or {}
        retries = config.get("retries") or {}
        defaults = S3Options()
        return S3Options(
            endpoint_url=extra.get("endpoint_url")
            or (extra.get("service_config", {}).get("s3", {}) or {}).get("endpoint_url"),
            region_name=extra.get("region_name"),
            aws_access_key_id=aws.login or None,
            aws_secret_access_key=aws.password or None,
            aws_session_token=extra.get("aws_session_token"),
            max_attempts=int(retries.get("max_attempts", defaults.max_attempts)),
            retry_mode=str(retries.get("mode", defaults.retry_mode)),
            connect_timeout_s=float(config.get("connect_timeout", defaults.connect_timeout_s)),
            read_timeout_s=float(config.get("read_timeout", defaults.read_timeout_s)),
        )

    def store_for(self, uri: str | None = None) -> ShardStore:
        """A store for ``uri``, confined below ``store_root`` (see ``shards.store.confined_store``)."""
        from airflow_bigdata_ai.shards.store import confined_store

        s3 = self.s3_options() if self.store_root.startswith("s3://") or (uri or "").startswith("s3://") else None
        return confined_store(self.store_root, uri, s3)

    # -- reference signing --------------------------------------------------------------------------
    def reference_policy(self) -> ReferencePolicy:
        """This deployment's key for signing ShardSet/ModelRef references and its unsigned-reference rule.

        A ``reference_secret`` extra is masked by Airflow already (its name says "secret"); it is registered
        with the log masker here too, like a generated token, so it cannot reach a task log.
        """
        from airflow.sdk.log import mask_secret

        if self.settings.reference_secret:
            mask_secret(self.settings.reference_secret)
        return self.settings.reference_policy()

    def test_connection(self) -> tuple[bool, str]:
        """Used by the UI's Test button: is the shared cluster reachable?"""
        from airflow_bigdata_ai.cluster import cluster_status

        status = cluster_status(self.cluster_config())
        return bool(status.get("alive")), str({k: v for k, v in status.items() if k != "token"})

    # -- UI form (Python form methods for Airflow < 3.2; derived from the declarative definitions) ---
    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": list(RAY_ON_SPARK_UI_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(RAY_ON_SPARK_UI_BEHAVIOUR["relabeling"]),
            "placeholders": dict(RAY_ON_SPARK_UI_BEHAVIOUR["placeholders"]),
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from wtforms import IntegerField, StringField

        widgets: dict[str, Any] = {}
        for name, spec in RAY_ON_SPARK_CONN_FIELDS.items():
            types = spec["schema"]["type"]
            field_cls = IntegerField if "integer" in types else StringField
            widgets[name] = field_cls(spec["label"], widget=BS3TextFieldWidget(), description=spec.get("description"))
        return widgets
