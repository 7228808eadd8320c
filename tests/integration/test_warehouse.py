"""Warehouse in, warehouse out on the real shared cluster: SQL and table sources over a date-partitioned
table, failing queries, and ShardSets published as table partitions (atomic for concurrent readers).

The catalog is the embedded cluster's persistent one (Hive metastore support that pyspark ships); that it
survives a restart of the cluster is shown in tests/integration/test_cluster.py, where a cluster is replaced.
"""

from __future__ import annotations

import io
import os
import threading
import time
from typing import Any

import pyarrow as pa
import pytest
from PIL import Image

from airflow_bigdata_ai.cluster.client import attach
from airflow_bigdata_ai.preprocess import preprocess
from airflow_bigdata_ai.preprocess.errors import QueryError
from airflow_bigdata_ai.preprocess.sources import shard_count
from airflow_bigdata_ai.shards import ShardSet, ShardWriter, load_manifest, open_store, read_table
from airflow_bigdata_ai.shards.refs import Producer
from airflow_bigdata_ai.tables import publish_partition

pytestmark = pytest.mark.integration

DB = "abai_it"
DATES = ("2026-03-01", "2026-03-02")
FLOAT_FN = "airflow_bigdata_ai.examples.transforms:digits_float"


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=value * 20).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def spark(attached: Any) -> Any:
    session = attached.spark()
    session.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    rows = []
    for day, ds in enumerate(DATES):
        for i in range(40 + 10 * day):  # 40 rows on the first date, 50 on the second
            rows.append({"event_id": f"{ds}-{i:03d}", "png": _png(i % 10), "label": i % 10, "ds": ds})
    rows.append({"event_id": f"{DATES[0]}-broken", "png": b"\x89PNG not really", "label": 1, "ds": DATES[0]})
    frame = session.createDataFrame(pa.Table.from_pylist(rows).to_pandas())
    frame.write.mode("overwrite").partitionBy("ds").saveAsTable(f"{DB}.events")
    return session


def _sql(ds: str) -> dict[str, Any]:
    return {
        "sql": f"SELECT event_id, png, label FROM {DB}.events WHERE ds = '{ds}'",
        "id_column": "event_id",
        "image_column": "png",
        "label_column": "label",
    }


def _checksums(store: Any, ref: ShardSet) -> list[str]:
    return [s.sha256 for s in load_manifest(store, ref).shards]


def test_sql_source_gives_each_date_its_rows_reruns_are_identical_and_broken_bytes_are_quarantined(
    spark: Any, tmp_path: Any
) -> None:
    store = open_store(f"file://{tmp_path}")
    refs = {}
    for ds in DATES:
        refs[ds] = preprocess(_sql(ds), f"file://{tmp_path}/events/ds={ds}", spark=spark, transform=FLOAT_FN,
                              rows_per_shard=16, max_bad_fraction=0.1)  # fmt: skip
    first = read_table(store, refs[DATES[0]])
    second = read_table(store, refs[DATES[1]])
    assert sorted(first.column("record_id").to_pylist()) == [f"{DATES[0]}-{i:03d}" for i in range(40)]
    assert sorted(second.column("record_id").to_pylist()) == [f"{DATES[1]}-{i:03d}" for i in range(50)]
    # the file rule: ceil(rows / 16) rounded up to a multiple of the cluster's 2 cores (41 -> 4, 50 -> 4)
    assert refs[DATES[0]].num_shards == shard_count(41, 16, 2) == 4 and refs[DATES[1]].num_shards == 4
    stats = refs[DATES[0]].stats
    assert stats["quarantined"] == 1 and stats["by_reason"] == {"undecodable": 1}, stats
    labels = dict(zip(first.column("record_id").to_pylist(), first.column("label").to_pylist(), strict=True))
    assert labels[f"{DATES[0]}-013"] == 3

    first_sums = _checksums(store, refs[DATES[0]])  # a rerun supersedes this manifest
    again = preprocess(_sql(DATES[0]), f"file://{tmp_path}/events/ds={DATES[0]}", spark=spark, transform=FLOAT_FN,
                       rows_per_shard=16, max_bad_fraction=0.1)  # fmt: skip
    assert again.manifest_uri != refs[DATES[0]].manifest_uri
    assert _checksums(store, again) == first_sums


def test_rows_that_name_image_files_are_read_from_the_store_and_a_missing_file_is_quarantined(
    spark: Any, tmp_path: Any
) -> None:
    """``path_column``: a URI or a path relative to ``uri``; a row whose file is gone is quarantined."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(12):
        (images / f"{i:02d}.png").write_bytes(_png(i % 10))
        rows.append((f"p-{i:02d}", f"{i:02d}.png" if i % 2 else f"file://{images}/{i:02d}.png", i % 10))
    rows.append(("p-gone", "gone.png", 1))
    spark.sql(f"DROP TABLE IF EXISTS {DB}.paths")
    spark.createDataFrame(rows, "id string, path string, label long").write.saveAsTable(f"{DB}.paths")
    source = {"table": f"{DB}.paths", "uri": f"file://{images}", "path_column": "path", "id_column": "id",
              "label_column": "label"}  # fmt: skip
    ref = preprocess(source, f"file://{tmp_path}/out", spark=spark, transform=FLOAT_FN, max_bad_fraction=0.1)
    table = read_table(open_store(f"file://{tmp_path}"), ref)
    assert sorted(table.column("record_id").to_pylist()) == [f"p-{i:02d}" for i in range(12)]
    assert ref.stats["by_reason"] == {"missing_file": 1}, ref.stats


def test_a_table_source_without_an_id_column_is_still_deterministic(spark: Any, tmp_path: Any) -> None:
    """Rows keyed by the sha256 of their values; two identical rows stay two records."""
    spark.sql(f"DROP TABLE IF EXISTS {DB}.features")
    spark.createDataFrame([(1.0, 2.0, 0), (1.0, 2.0, 0), (3.0, 4.0, 1)], "a double, b double, label long").write.mode(
        "overwrite"
    ).saveAsTable(f"{DB}.features")
    source = {"table": f"{DB}.features", "label_column": "label"}
    fn = "airflow_bigdata_ai.examples.transforms:row_features"
    one = preprocess(source, f"file://{tmp_path}/f1", spark=spark, transform=fn)
    two = preprocess(source, f"file://{tmp_path}/f2", spark=spark, transform=fn)
    store = open_store(f"file://{tmp_path}")
    ids = sorted(read_table(store, one).column("record_id").to_pylist())
    assert len(ids) == 3 and len(set(ids)) == 3 and sum(i.endswith("#1") for i in ids) == 1, ids
    assert _checksums(store, one) == _checksums(store, two)


@pytest.mark.parametrize(
    ("sql", "spark_says"),
    [
        ("SELEC event_id FROM abai_it.events", "PARSE_SYNTAX_ERROR"),
        ("SELECT * FROM abai_it.no_such_table", "TABLE_OR_VIEW_NOT_FOUND"),
    ],
)
def test_a_query_spark_cannot_run_fails_at_once_with_sparks_message(
    spark: Any, tmp_path: Any, sql: str, spark_says: str
) -> None:
    started = time.monotonic()
    with pytest.raises(QueryError, match=spark_says) as caught:
        preprocess({"sql": sql}, f"file://{tmp_path}/out", spark=spark, transform=FLOAT_FN)
    assert time.monotonic() - started < 30
    assert "query 'SELEC" in str(caught.value) or "no_such_table" in str(caught.value)
    assert not list((tmp_path / "out").glob("_manifests/*")), "nothing may be committed"


def _predictions(store: Any, uri: str, version: int, rows: int) -> ShardSet:
    schema = pa.schema([("record_id", pa.string()), ("predicted", pa.int64()), ("version", pa.int64())])
    writer = ShardWriter(store, uri)
    infos = []
    for shard in range(3):
        ids = [f"r{shard}-{i:04d}" for i in range(rows // 3)]
        table = pa.table({"record_id": ids, "predicted": [i % 2 for i in range(len(ids))],
                          "version": [version] * len(ids)}, schema=schema)  # fmt: skip
        infos.append(writer.write_table(shard, table))
    return writer.commit(infos, schema, Producer("dag", "infer", f"run-{version}", "2026-03-01", 1))


def test_a_rerun_replaces_only_its_partition_and_a_concurrent_reader_never_sees_a_mix(
    spark: Any, shared_cluster: Any, tmp_path: Any
) -> None:
    """An analyst's own Spark Connect session queries the partition in a loop while it is republished."""
    store = open_store(f"file://{tmp_path}")
    table = f"{DB}.predictions"
    spark.sql(f"DROP TABLE IF EXISTS {table}")
    rows = 600
    first = publish_partition(spark, store, _predictions(store, f"file://{tmp_path}/p/a1", 1, rows), table, DATES[0])
    other = publish_partition(spark, store, _predictions(store, f"file://{tmp_path}/p/b1", 1, rows), table, DATES[1])
    assert first.replaced is None and first.rows == rows and first.columns == ["record_id", "predicted", "version"]

    seen: list[tuple[int, int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    analyst = attach(shared_cluster.config)

    def read() -> None:
        reader = analyst.spark()
        query = f"SELECT count(*) AS n, min(version) AS lo, max(version) AS hi FROM {table} WHERE ds = '{DATES[0]}'"
        try:
            while not stop.is_set():
                row = reader.sql(query).collect()[0]
                seen.append((int(row["n"]), int(row["lo"]), int(row["hi"])))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    versions = []
    for version in (2, 3, 4):
        ref = _predictions(store, f"file://{tmp_path}/p/a{version}", version, rows)
        versions.append(publish_partition(spark, store, ref, table, DATES[0]))
    time.sleep(1.0)
    stop.set()
    reader.join(60)
    analyst.close()
    assert not errors, errors
    assert len(seen) >= 3, seen
    mixed = [s for s in seen if s[0] != rows or s[1] != s[2]]
    assert not mixed, f"a reader saw a mix of versions or a partial partition: {mixed[:5]}"
    assert {s[1] for s in seen} >= {4}, "the reader never saw the last version"

    current = spark.sql(f"SELECT ds, count(*) AS n, max(version) AS v FROM {table} GROUP BY ds ORDER BY ds").collect()
    assert [(r["ds"], r["n"], r["v"]) for r in current] == [(DATES[0], rows, 4), (DATES[1], rows, 1)]
    assert versions[-1].replaced == versions[-2].location
    from airflow_bigdata_ai.tables.publish import table_location

    assert table_location(spark, table, f"`ds` = '{DATES[1]}'") == other.location  # the other date untouched
    base = str(table_location(spark, table)).removeprefix("file:")
    kept = sorted(os.listdir(os.path.join(base, "_versions", f"ds={DATES[0]}")))
    assert kept == sorted(v.location.rsplit("/", 1)[1] for v in versions[-2:]), "the current and previous version"


def test_publishing_refuses_a_shard_set_whose_columns_differ_from_the_table(spark: Any, tmp_path: Any) -> None:
    store = open_store(f"file://{tmp_path}")
    table = f"{DB}.narrow"
    spark.sql(f"DROP TABLE IF EXISTS {table}")
    spark.sql(f"CREATE TABLE {table} (record_id STRING, ds STRING) USING parquet PARTITIONED BY (ds)")
    with pytest.raises(ValueError, match="has columns"):
        publish_partition(spark, store, _predictions(store, f"file://{tmp_path}/n", 1, 30), table, DATES[0])
    with pytest.raises(ValueError, match="table name"):
        publish_partition(spark, store, _predictions(store, f"file://{tmp_path}/m", 1, 30), "x; DROP", DATES[0])
