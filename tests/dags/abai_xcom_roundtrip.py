"""Test DAG: a task writes a ShardSet, the next one receives it through a real XCom and reads it."""

from __future__ import annotations

import json

from airflow.sdk import dag, task


@dag(dag_id="abai_xcom_roundtrip", schedule=None, params={"root": "", "report": ""})
def abai_xcom_roundtrip():
    @task
    def produce(**context) -> dict:
        from airflow_bigdata_ai.shards import open_store, output_uri
        from tests.unit.shard_helpers import write_shardset

        root = context["params"]["root"]
        dataset = output_uri(root, "abai_xcom_roundtrip", "produce", context["logical_date"])
        return write_shardset(open_store(root), dataset, shards=4, rows=6).to_dict()

    @task
    def consume(ref: dict, **context) -> int:
        from airflow_bigdata_ai.shards import ShardSet, open_store, read_table

        shardset = ShardSet.coerce(ref)
        rows = read_table(open_store(context["params"]["root"]), shardset).num_rows
        report = {"ref": shardset.to_dict(), "xcom_bytes": len(json.dumps(ref).encode()), "rows": rows}
        with open(context["params"]["report"], "w") as handle:
            json.dump(report, handle)
        return rows

    consume(produce())


abai_xcom_roundtrip()
