"""Shared plumbing for operators that run on the shared cluster.

Translates Airflow context into core calls: which connection, where the date-partitioned output goes,
who produced it (for the reference), the extra links of the cluster the task actually used, and the
Asset events that carry the reference to asset-scheduled DAGs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink

from airflow_bigdata_ai.connection import DEFAULT_CONN_ID
from airflow_bigdata_ai.links import RayDashboardLink, SparkUILink, push_cluster_links

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_bigdata_ai.cluster import AttachedCluster
    from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook
    from airflow_bigdata_ai.shards import Producer, ShardStore


class SharedClusterOperator(BaseOperator):
    """Base for tasks on the shared Spark-hosted Ray cluster. Cheap to construct: nothing heavy here."""

    template_fields: Sequence[str] = ("output_root",)
    operator_extra_links: tuple[BaseOperatorLink, ...] = (SparkUILink(), RayDashboardLink())

    def __init__(
        self, *, ray_on_spark_conn_id: str = DEFAULT_CONN_ID, output_root: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.ray_on_spark_conn_id = ray_on_spark_conn_id
        self.output_root = output_root
        self._spark: Any = None  # the Spark Connect session while execute runs (for on_kill)
        self._tag: str | None = None  # this attempt's Spark job tag

    @cached_property
    def hook(self) -> RayOnSparkHook:
        from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook

        return RayOnSparkHook(self.ray_on_spark_conn_id)

    def attach_cluster(self, context: Context) -> AttachedCluster:
        """Attach (starting the embedded cluster if needed) and record its links for the task view."""
        attached = self.hook.attach()
        endpoint = attached.endpoint
        self.log.info(
            "Attached to shared cluster %s (Spark UI %s, Ray dashboard %s)",
            endpoint.cluster_id,
            endpoint.spark_ui_url,
            endpoint.ray_dashboard_url,
        )
        push_cluster_links(context, endpoint.spark_ui_url, endpoint.ray_dashboard_url)
        return attached

    def job_tag(self, context: Context) -> str:
        """Unique per task attempt; Spark tags may not contain commas, so keep a safe alphabet."""
        ti = context["ti"]
        raw = f"abai-{ti.dag_id}-{ti.task_id}-{ti.run_id}-{getattr(ti, 'map_index', -1)}-{getattr(ti, 'try_number', 0)}"
        return re.sub(r"[^A-Za-z0-9_.:+=-]", "_", raw)

    def interrupt_spark_tag(self) -> None:
        """Interrupt only the Spark operations carrying this attempt's tag (other tasks share the app)."""
        spark, tag = self._spark, self._tag
        if spark is not None and tag:
            self.log.info("Interrupting Spark operations tagged %s", tag)
            try:
                spark.interruptTag(tag)
            except Exception:  # the session may be closing already; nothing else to cancel
                self.log.exception("interruptTag(%s) failed", tag)

    def producer(self, context: Context) -> Producer:
        from airflow_bigdata_ai.shards import Producer

        ti = context["ti"]
        logical_date = context.get("logical_date")
        return Producer(
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            logical_date=logical_date.isoformat() if logical_date else None,
            try_number=getattr(ti, "try_number", None),
        )

    def output_location(self, context: Context) -> tuple[ShardStore, str]:
        """The store and the deterministic location of this task's output.

        ``<root>/<dag>/<task>/ds=<logical date>``; a run without a logical date (asset-triggered) writes to
        ``run=<run id>`` instead, so it never replaces another such run's output.
        """
        from airflow_bigdata_ai.shards import output_uri

        root = self.output_root or self.hook.store_root
        store = self.hook.store_for(root)
        ti = context["ti"]
        location = output_uri(root, ti.dag_id, ti.task_id, context.get("logical_date"), ti.run_id)
        if getattr(ti, "map_index", -1) not in (-1, None):
            location = f"{location}/map_index={ti.map_index}"
        return store, location

    def post_execute(self, context: Context, result: Any = None) -> None:
        """Attach the reference to every Asset outlet's event, so asset-scheduled DAGs receive it."""
        super().post_execute(context, result)
        if not isinstance(result, dict) or result.get("kind") not in ("ShardSet", "ModelRef"):
            return
        from airflow.sdk import Asset

        uri = result.get("manifest_uri") or result.get("weights_uri")
        for outlet in self.outlets or ():
            if isinstance(outlet, Asset):
                event = context["outlet_events"][outlet]
                event.extra.update({"kind": result["kind"], "uri": uri, "reference": result})
