"""PublishTablePartitionOperator: a ShardSet (predictions, features) becomes the ``ds`` partition of a table.

A thin face on :func:`airflow_bigdata_ai.tables.publish_partition`: verifies the upstream reference,
attaches to the shared cluster over Spark Connect and publishes with a per-task job tag (``on_kill``
cancels only this task's Spark work). Analysts then query the table with Spark SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_bigdata_ai.operators.base import SharedClusterOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class PublishTablePartitionOperator(SharedClusterOperator):
    """Publish ``shardset`` as partition ``partition_column=partition_value`` of ``table``.

    :param shardset: the ShardSet reference (usually an upstream operator's ``.output``).
    :param table: ``[database.]table`` in the shared cluster's catalog; created (Parquet, partitioned by
        ``partition_column``) if missing. Templated.
    :param partition_value: the partition to replace, by default the run's ``{{ ds }}``. Templated.
    :param partition_column: the partition column (string), ``ds`` by default.
    :param columns: the shard set's columns to publish (default: every column that is not a tensor).

    A rerun replaces only its partition, atomically for readers: a query sees the old or the new rows.
    Returns ``{"table", "partition_column", "partition_value", "location", "rows", "columns", "replaced"}``.
    """

    template_fields: Sequence[str] = ("shardset", "table", "partition_value", "columns", "output_root")
    ui_color = "#e3f1fd"

    def __init__(
        self,
        *,
        shardset: Any,
        table: str,
        partition_value: str = "{{ ds }}",
        partition_column: str = "ds",
        columns: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.shardset = shardset
        self.table = table
        self.partition_value = partition_value
        self.partition_column = partition_column
        self.columns = columns
        self.track_reference_sources("shardset")

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_bigdata_ai.lineage import table_dataset
        from airflow_bigdata_ai.shards import ShardSet
        from airflow_bigdata_ai.tables import publish_partition

        ref = self.check_reference(context, "shardset", ShardSet)
        if not str(self.partition_value or "").strip():
            raise AirflowFailException("partition_value is empty (a run without a logical date has no {{ ds }})")
        store = self.hook.store_for(ref.manifest_uri)
        attached = self.attach_cluster(context)
        self._tag = self.job_tag(context)
        try:
            self._spark = spark = attached.spark()
            spark.addTag(self._tag)
            try:
                published = publish_partition(
                    spark, store, ref, self.table, str(self.partition_value),
                    partition_column=self.partition_column, columns=self.columns,
                )  # fmt: skip
            except ValueError as exc:  # names, columns that do not fit the table: the same on every retry
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
            finally:
                spark.removeTag(self._tag)
        finally:
            self._spark = None
            attached.close()
        self.record_lineage(outputs=[table_dataset(published.table, published.table_location, published.schema,
                                                   published.rows)])  # fmt: skip
        replaced = " (replaced the previous version)" if published.replaced else ""
        self.log.info(
            "Published %d rows as %s=%s of %s%s", published.rows, published.partition_column,
            published.partition_value, published.table, replaced,
        )  # fmt: skip
        return published.to_dict()

    def on_kill(self) -> None:
        self.interrupt_spark_tag()
