"""Runs without a logical date keep their own outputs (issue 13, defect 17).

Asset-triggered runs have no logical date. They used to share ``ds=none``, so each run replaced the
previous run's output. Two real ``dag.test(logical_date=None)`` runs of an operator that writes where
:meth:`SharedClusterOperator.output_location` says must leave two committed outputs, one per run id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.system


DAG_SOURCE = """
from airflow.sdk import dag

from airflow_bigdata_ai.operators.base import SharedClusterOperator


class WriteShards(SharedClusterOperator):
    \"\"\"Commits a small ShardSet where output_location says (no cluster needed).\"\"\"

    def execute(self, context):
        from tests.unit.shard_helpers import write_shardset

        store, location = self.output_location(context)
        return write_shardset(store, location, shards=2, rows=3).to_dict()


@dag(dag_id="abai_runs_without_date", schedule=None, params={"root": ""})
def abai_runs_without_date():
    WriteShards(task_id="write", output_root="{{ params.root }}")


abai_runs_without_date()
"""


@pytest.fixture()
def dag_without_date() -> Iterator[Any]:
    """The DAG, written into the session's DAGs folder (``dag.test()`` runs only DAGs it can serialise)."""
    import importlib.util

    path = os.path.join(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], "abai_runs_without_date.py")
    with open(path, "w") as handle:
        handle.write(DAG_SOURCE)
    try:
        spec = importlib.util.spec_from_file_location("abai_runs_without_date", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module.abai_runs_without_date()
    finally:
        os.unlink(path)


def test_two_runs_without_a_logical_date_keep_both_outputs(airflow_db, dag_without_date, tmp_path):
    from airflow_bigdata_ai.shards import current_shardset, open_store, read_table
    from airflow_bigdata_ai.shards.paths import safe_segment

    store_root = str(tmp_path / "store")
    runs = [dag_without_date.test(logical_date=None, run_conf={"root": store_root}) for _ in range(2)]
    assert [r.state for r in runs] == ["success", "success"]
    assert all(r.logical_date is None for r in runs) and runs[0].run_id != runs[1].run_id

    task_dir = os.path.join(store_root, "abai_runs_without_date", "write")
    partitions = sorted(os.listdir(task_dir))
    assert len(partitions) == 2 and all(p.startswith("run=") for p in partitions), partitions
    store = open_store(store_root)
    refs = []
    for partition in partitions:
        ref = current_shardset(store, os.path.join(task_dir, partition))
        assert ref is not None, f"the output of {partition} was deleted"
        assert read_table(store, ref).num_rows == 6
        refs.append(ref)
    assert set(partitions) == {f"run={safe_segment(r.run_id)}" for r in runs}  # one partition per run id
    assert len({r.manifest_uri for r in refs}) == 2
