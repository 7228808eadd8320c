"""The real scheduler runs the example DAG: a REST-triggered run, a 6-date backfill (three runs at once), and
a cleared date.

The backfill is created with ``POST /api/v2/backfills`` (what the UI's Backfill button calls) with the
backfill's ``max_active_runs=3`` (a backfill ignores the DAG's own ``max_active_runs=1``), so trainings,
inferences and preprocessings of three dates share the cluster, ordered by its admission queue (issue 15).
Every date reads the same images, so each date's outputs must equal those of the run alone: identical
preprocessing shards, training accuracy within 1 point. Each date gets its own output partition; clearing
one date reruns it and atomically replaces only its outputs; one shared cluster (started once, for the whole
test session) serves every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import pytest

pytestmark = [pytest.mark.system, pytest.mark.integration, pytest.mark.timeout(2700)]

DAG_ID = "digits_e2e"
OUTPUT_TASKS = ("preprocess", "train", "infer")
SHARDSET_TASKS = ("preprocess", "infer")  # committed through a manifest; train writes content-addressed weights


def snapshot(store_root: str, date: str) -> dict[str, str]:
    """sha256 of every file of one date's outputs (shards, manifests, weights)."""
    found = {}
    for task in OUTPUT_TASKS:
        folder = os.path.join(store_root, DAG_ID, task, f"ds={date}")
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, store_root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def parquet_checksums(snap: dict[str, str], task: str) -> list[str]:
    return sorted(v for k, v in snap.items() if f"/{task}/" in k and k.endswith(".parquet"))


def manifests(snap: dict[str, str]) -> list[str]:
    return sorted(p for p in snap if "/_manifests/" in p)


BACKFILL_DATES = [f"2026-11-{day}" for day in range(11, 17)]  # not 11-05 (the browser test) nor 11-10 (alone)


def val_accuracy(api: Any, run_id: str) -> float:
    from airflow_bigdata_ai.shards import ModelRef

    value = api.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train/xcomEntries/return_value")["value"]
    return float(ModelRef.coerce(json.loads(value) if isinstance(value, str) else value).metrics["val_accuracy"])


def test_trigger_backfill_and_clear_through_the_api(example_airflow):
    api = example_airflow.services
    api.wait_for_dag(DAG_ID)

    manual = api.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": "2026-11-10T00:00:00Z"})
    assert api.wait_for_runs(DAG_ID, [manual["dag_run_id"]]) == {manual["dag_run_id"]: "success"}

    backfill = api.api(
        "POST",
        "/backfills",
        json={
            "dag_id": DAG_ID,
            "from_date": f"{BACKFILL_DATES[0]}T00:00:00Z",
            "to_date": f"{BACKFILL_DATES[-1]}T00:00:00Z",
            "max_active_runs": 3,  # three dates at once: the cluster's admission queue orders their jobs
            "reprocess_behavior": "none",
        },
    )
    assert backfill["dag_id"] == DAG_ID
    runs = api.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"run_type": "backfill"})["dag_runs"]
    run_ids = sorted(r["dag_run_id"] for r in runs)
    assert len(run_ids) == len(BACKFILL_DATES)
    states = api.wait_for_runs(DAG_ID, run_ids, timeout_s=1800)
    assert set(states.values()) == {"success"}, states

    dates = [*BACKFILL_DATES, "2026-11-10"]
    before = {d: snapshot(example_airflow.store_root, d) for d in dates}
    for date, snap in before.items():
        assert len(manifests(snap)) == len(SHARDSET_TASKS), f"{date}: one manifest per task, got {manifests(snap)}"
        assert any("/train/" in p and p.endswith(".pt") for p in snap), f"{date}: no trained weights"
    # each date equals the run alone: the same preprocessing bytes, the same training within 1 point
    alone = before["2026-11-10"]
    alone_accuracy = val_accuracy(api, manual["dag_run_id"])
    for date, run_id in zip(BACKFILL_DATES, run_ids, strict=True):
        assert date in run_id, (date, run_id)
        assert parquet_checksums(before[date], "preprocess") == parquet_checksums(alone, "preprocess"), date
        assert abs(val_accuracy(api, run_id) - alone_accuracy) <= 0.01, (date, val_accuracy(api, run_id))

    cleared = next(r for r in run_ids if "2026-11-12" in r)
    api.api(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        json={"dry_run": False, "dag_run_id": cleared, "only_failed": False, "reset_dag_runs": True},
    )
    assert api.wait_for_runs(DAG_ID, [cleared]) == {cleared: "success"}

    after = {d: snapshot(example_airflow.store_root, d) for d in dates}
    for date in dates:
        if date != "2026-11-12":
            assert after[date] == before[date], f"{date} changed although only 2026-11-12 was cleared"
    rerun = after["2026-11-12"]
    assert len(manifests(rerun)) == len(SHARDSET_TASKS)
    assert manifests(rerun) != manifests(before["2026-11-12"]), "the rerun published new manifests"
    assert parquet_checksums(rerun, "preprocess") == parquet_checksums(before["2026-11-12"], "preprocess"), (
        "preprocessing is deterministic"
    )

    # only the test's own runs shared the cluster: none from the schedule (USE_JOB_SCHEDULE off in the fixture)
    assert api.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"run_type": "scheduled"})["dag_runs"] == []

    logs = example_airflow.task_logs()
    starts = re.findall(r"started cluster service pid \d+ \(cluster (\w+)\)", logs)
    attached = re.findall(r"Attached to shared cluster (\w+)", logs)
    assert starts == [], f"no run may start a cluster of its own, saw {starts}"
    assert len(attached) >= 4 * (len(dates) + 1), "setup, preprocess, train and infer attached in every run"
    assert set(attached) == {example_airflow.cluster.endpoint.cluster_id}, f"one shared cluster, saw {set(attached)}"
