"""Benchmark 7: backfill throughput of ``digits_e2e`` through the real scheduler (issue 15).

What an operator sees after pressing Backfill in the UI: the same dates' worth of work run one run at a time
(``max_active_runs=1``) and three at a time (``max_active_runs=3``), on the one shared cluster, where the
admission queue orders the trainings. Every date reads the same images, so the two backfills do the same work.
Reported: dates per hour of each (wall time from the ``POST /backfills`` until its last run ended), their
ratio (goal: 3 at once at least as fast as serial), and the slowest concurrent run against a run alone
(goal: no run slower than 3x its solo time). The services are this repo's test services (scheduler, dag
processor, triggerer, API server on loopback, LocalExecutor on SQLite), stopped by PID afterwards.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import time
from typing import Any

DAG_ID = "digits_e2e"
SOLO_DATE = dt.date(2026, 11, 20)  # the DAG starts 2026-11-01: earlier dates would create no runs
FIRST_BACKFILL_DATE = dt.date(2026, 11, 1)


def _seconds(run: dict[str, Any]) -> float:
    start = dt.datetime.fromisoformat(run["start_date"].replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(run["end_date"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def _backfill(services: Any, first: dt.date, dates: int, max_active_runs: int) -> tuple[float, list[float]]:
    """Create a backfill over ``dates`` days from ``first``; wall seconds until all ended, and each run's time."""
    last = first + dt.timedelta(days=dates - 1)
    started = time.monotonic()
    backfill = services.api(
        "POST",
        "/backfills",
        json={
            "dag_id": DAG_ID,
            "from_date": f"{first.isoformat()}T00:00:00Z",
            "to_date": f"{last.isoformat()}T00:00:00Z",
            "max_active_runs": max_active_runs,
            "reprocess_behavior": "none",
        },
    )
    params = {
        "run_type": "backfill",
        "logical_date_gte": f"{first.isoformat()}T00:00:00Z",
        "logical_date_lte": f"{last.isoformat()}T00:00:00Z",
    }
    runs = services.api("GET", f"/dags/{DAG_ID}/dagRuns", params=params)["dag_runs"]
    run_ids = [r["dag_run_id"] for r in runs]
    if len(run_ids) != dates:
        raise RuntimeError(f"backfill created {len(run_ids)} runs for {dates} dates: {run_ids}")
    states = services.wait_for_runs(DAG_ID, run_ids, timeout_s=3600)
    wall = time.monotonic() - started
    if set(states.values()) != {"success"}:
        raise RuntimeError(f"backfill at max_active_runs={max_active_runs} failed: {states}")
    deadline = time.monotonic() + 300  # the scheduler marks the backfill complete a moment after its last run;
    while not services.api("GET", f"/backfills/{backfill['id']}").get("completed_at"):  # until then, no new one
        if time.monotonic() > deadline:
            raise RuntimeError(f"backfill {backfill['id']} not marked complete 300 s after its runs ended")
        time.sleep(2)
    return wall, [_seconds(services.api("GET", f"/dags/{DAG_ID}/dagRuns/{r}")) for r in run_ids]


def bench_backfill(ctx: Any, repo: str, row: Any) -> dict[str, Any]:
    from tests.support.airflow_services import AirflowServices

    dates = 2 if ctx.fast else 3
    root = os.path.join(ctx.workdir, "backfill")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "dags"))
    shutil.copy(os.path.join(repo, "dags_examples", f"{DAG_ID}.py"), os.path.join(root, "dags"))
    services = AirflowServices(
        home=os.path.join(root, "airflow"),
        dags_folder=os.path.join(root, "dags"),
        extra_env={
            "AIRFLOW_BIGDATA_AI_HOME": os.path.join(root, "home"),
            "AIRFLOW_BIGDATA_AI_EXAMPLE_SCALE": "tiny",
            # only the benchmark's own runs: unpausing queued a run for the latest interval before the solo run
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW_BIGDATA_AI_STATE_DIR": ctx.state_dir,
            "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        },
    )
    services.start()
    try:
        services.wait_for_dag(DAG_ID, timeout_s=300)
        solo = services.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": f"{SOLO_DATE}T00:00:00Z"})
        if services.wait_for_runs(DAG_ID, [solo["dag_run_id"]], timeout_s=1800) != {solo["dag_run_id"]: "success"}:
            raise RuntimeError("the solo run failed")
        solo_s = _seconds(services.api("GET", f"/dags/{DAG_ID}/dagRuns/{solo['dag_run_id']}"))
        serial_wall, serial_runs = _backfill(services, FIRST_BACKFILL_DATE, dates, 1)
        concurrent_first = FIRST_BACKFILL_DATE + dt.timedelta(days=dates)
        concurrent_wall, concurrent_runs = _backfill(services, concurrent_first, dates, 3)
    finally:
        left = services.stop()
        if left:
            print(f"backfill bench: had to kill {left}", flush=True)
    serial_rate, concurrent_rate = dates * 3600 / serial_wall, dates * 3600 / concurrent_wall
    ratio = concurrent_rate / serial_rate
    slowest = max(concurrent_runs) / solo_s
    return {
        "rows": [
            row(f"backfill of {dates} dates, max_active_runs=1 (digits_e2e, scale tiny)", [serial_rate], "dates/h"),
            row(
                f"same {dates} dates' work, max_active_runs=3 (one shared cluster, admission-queued trainings)",
                [concurrent_rate],
                "dates/h",
                ratio,
                ">= 1.0x (vs serial)",
                ratio >= 1.0,
            ),
            row(
                f"slowest run at max_active_runs=3 vs a run alone ({solo_s:.0f} s)",
                [max(concurrent_runs)],
                "s",
                slowest,
                "<= 3x (vs solo)",
                slowest <= 3.0,
            ),
        ],
        "detail": {
            "dates": dates,
            "solo_s": solo_s,
            "serial": {"wall_s": serial_wall, "runs_s": serial_runs},
            "concurrent": {"wall_s": concurrent_wall, "runs_s": concurrent_runs},
        },
    }
