"""A ShardSet survives a real Airflow XCom round trip under ``dag.test()``."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_shardset_round_trips_through_real_xcom(airflow_db, tmp_path):
    from airflow_bigdata_ai.shards import ShardSet
    from tests.dags.abai_xcom_roundtrip import abai_xcom_roundtrip

    report = tmp_path / "report.json"
    run = abai_xcom_roundtrip().test(run_conf={"root": str(tmp_path / "store"), "report": str(report)})
    assert run.state == "success"
    seen = json.loads(report.read_text())
    ref = ShardSet.from_dict(seen["ref"])
    assert ref.num_rows == seen["rows"] == 24 and ref.num_shards == 4
    assert seen["xcom_bytes"] < 4096
