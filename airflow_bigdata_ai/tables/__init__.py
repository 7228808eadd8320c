"""ShardSets published as partitions of Spark tables (Airflow-free: notebooks and operators call it)."""

from airflow_bigdata_ai.tables.publish import PublishedPartition, publish_partition, table_columns

__all__ = ["PublishedPartition", "publish_partition", "table_columns"]
