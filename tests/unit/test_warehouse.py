"""Issue 17's logic without a cluster: query sources, shard grouping, catalog settings, lineage names."""

from __future__ import annotations

import pyarrow as pa
import pytest

from airflow_bigdata_ai.cluster.catalog import catalog_conf
from airflow_bigdata_ai.lineage import namespace_and_name, sql_tables
from airflow_bigdata_ai.preprocess.query import ID_COLUMN, SHARD_COLUMN, rows_by_shard
from airflow_bigdata_ai.preprocess.sources import SourceSpec
from airflow_bigdata_ai.shards import tensor_field
from airflow_bigdata_ai.tables.publish import _check_names, table_columns

ROW_FEATURES = "airflow_bigdata_ai.examples.transforms:row_features"


def test_a_query_source_is_implied_by_table_or_sql_and_checked() -> None:
    assert SourceSpec.coerce({"sql": "SELECT 1"}).format == "sql"
    spec = SourceSpec.coerce({"table": "db.t", "label_column": "y"})
    assert spec.is_query and spec.describe() == "table db.t" and spec.to_dict()["table"] == "db.t"
    assert SourceSpec.coerce({"sql": "SELECT  *\n FROM t"}).describe() == "query 'SELECT * FROM t'"
    with pytest.raises(ValueError, match="exactly one"):
        SourceSpec.coerce({"table": "t", "sql": "SELECT 1", "format": "sql"})
    with pytest.raises(ValueError, match="path_column needs uri"):
        SourceSpec.coerce({"sql": "SELECT p FROM t", "path_column": "p"})
    with pytest.raises(ValueError, match="not both"):
        SourceSpec.coerce({"sql": "SELECT 1", "image_column": "a", "path_column": "b", "uri": "file:///x"})
    with pytest.raises(ValueError, match="needs uri"):
        SourceSpec.coerce({"format": "images"})
    with pytest.raises(ValueError, match="make a query source"):
        SourceSpec(uri="file:///x", format="parquet", sql="SELECT 1")


def test_rows_group_by_shard_sorted_by_id_whatever_the_arrival_order() -> None:
    rows = [
        {ID_COLUMN: "b", SHARD_COLUMN: 1, "v": 2},
        {ID_COLUMN: "a", SHARD_COLUMN: 1, "v": 1},
        {ID_COLUMN: "c", SHARD_COLUMN: 0, "v": 3},
        {ID_COLUMN: "a", SHARD_COLUMN: 1, "v": 0},  # the same id twice (identical rows without an id column)
    ]
    groups = list(rows_by_shard(pa.Table.from_pylist(rows)))
    reversed_groups = list(rows_by_shard(pa.Table.from_pylist(rows[::-1])))
    assert groups == reversed_groups
    assert [shard for shard, _ in groups] == [0, 1]
    ids = [u["record_id"] for u in groups[1][1]]
    assert ids == ["a", "a#1", "b"] and [u["row"]["v"] for u in groups[1][1]] == [0, 1, 2]
    assert all(ID_COLUMN not in u["row"] and SHARD_COLUMN not in u["row"] for _, us in groups for u in us)


def test_the_embedded_catalog_lives_in_the_state_dir_unless_the_deployment_has_one(tmp_path) -> None:
    conf = catalog_conf(str(tmp_path), {"spark.driver.extraJavaOptions": "-Xss4m"})
    assert conf["spark.sql.catalogImplementation"] == "hive"
    assert conf["spark.sql.warehouse.dir"] == f"file://{tmp_path}/catalog/warehouse"
    assert f"databaseName={tmp_path}/catalog/metastore_db" in conf["spark.hadoop.javax.jdo.option.ConnectionURL"]
    assert conf["spark.driver.extraJavaOptions"] == f"-Xss4m -Dderby.system.home={tmp_path}/catalog"
    assert catalog_conf(str(tmp_path), {"spark.sql.catalogImplementation": "in-memory"}) == {}
    remote = catalog_conf(str(tmp_path), {"spark.hadoop.hive.metastore.uris": "thrift://metastore:9083"})
    assert remote == {"spark.sql.catalogImplementation": "hive"}


def test_lineage_names_follow_openlineage_conventions() -> None:
    assert namespace_and_name("file:///data/x/ds=1") == ("file", "/data/x/ds=1")
    assert namespace_and_name("file:/data/warehouse/t") == ("file", "/data/warehouse/t")
    assert namespace_and_name("s3://bucket/prefix/x") == ("s3://bucket", "prefix/x")
    assert namespace_and_name("hdfs://nn:8020/warehouse/t") == ("hdfs://nn:8020", "/warehouse/t")
    assert sql_tables("SELECT a FROM db.t1 JOIN t2 ON t1.k = t2.k WHERE ds = '2026-01-01'") == ["db.t1", "t2"]


def test_published_columns_are_the_plain_ones_and_names_are_checked() -> None:
    schema = pa.schema(
        [("record_id", pa.string()), tensor_field("scores", (10,), "float32"), ("predicted", pa.int64())]
    )
    assert table_columns(schema) == ["record_id", "predicted"]
    assert table_columns(schema, ["predicted"]) == ["predicted"]
    with pytest.raises(ValueError, match="not in the shard set"):
        table_columns(schema, ["nope"])
    _check_names("db.predictions", "ds", ["record_id"])
    for bad in ("db.t; DROP TABLE x", "a.b.c.d", "t-1"):
        with pytest.raises(ValueError, match="table name"):
            _check_names(bad, "ds", ["record_id"])
    with pytest.raises(ValueError, match="also a data column"):
        _check_names("t", "ds", ["ds"])


def test_a_query_source_without_spark_says_so(tmp_path) -> None:
    from airflow_bigdata_ai.preprocess import SettingsError, preprocess

    with pytest.raises(SettingsError, match=r"table db\.t is run by Spark"):
        preprocess(
            {"table": "db.t"}, f"file://{tmp_path}/out", transform="airflow_bigdata_ai.examples.transforms:row_features"
        )
