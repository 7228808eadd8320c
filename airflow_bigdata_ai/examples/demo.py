"""``make demo``: run ``smart_transportation_cv`` end to end with ``airflow dags test`` and summarise it.

Project-local ``AIRFLOW_HOME`` (SQLite) and state; the shared cluster is the embedded default. The
cluster is stopped at the end unless ``--keep-cluster`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _env(home: str, dags: str) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = os.path.dirname(sys.executable)
    env.update(
        {
            "AIRFLOW_HOME": os.path.join(home, "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": dags,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_BIGDATA_AI_HOME": os.path.join(home, "state"),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
            "NO_PROXY": "localhost,127.0.0.1",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", default=os.path.abspath(".demo"))
    parser.add_argument("--dags", default=os.path.abspath("dags_examples"))
    parser.add_argument("--dag-id", default="smart_transportation_cv")
    parser.add_argument("--date", default="2026-11-23")
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args(argv)
    env = _env(args.home, args.dags)
    os.environ.update(env)
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    started = time.monotonic()
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    print(f"Running {args.dag_id} for {args.date} with `airflow dags test` (AIRFLOW_HOME={env['AIRFLOW_HOME']})")
    conf = json.dumps({"keep_cluster": True})
    code = subprocess.run([airflow, "dags", "test", args.dag_id, args.date, "--conf", conf], env=env).returncode
    try:
        if code != 0:
            print(f"`airflow dags test` failed with exit code {code}", file=sys.stderr)
            return code
        _print_summary(args.dag_id, time.monotonic() - started)
        return 0
    finally:
        if not args.keep_cluster:
            subprocess.run([sys.executable, "-m", "airflow_bigdata_ai", "cluster", "stop"], env=env, check=False)


def _print_summary(dag_id: str, total_s: float) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from airflow_bigdata_ai.examples.report import format_summary

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id).all()
        run_id = max(tis, key=lambda t: t.start_date or 0).run_id
        tis = [t for t in tis if t.run_id == run_id]
        durations = {t.task_id: round(t.duration or 0.0, 1) for t in sorted(tis, key=lambda t: t.start_date or 0)}
        states = {t.task_id: t.state for t in tis}
        row = (
            session.query(XComModel)
            .filter(XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.task_id == "report")
            .filter(XComModel.key == "return_value")
            .one()
        )
        summary = row.value if isinstance(row.value, dict) else json.loads(row.value)
    print("\n" + "=" * 100)
    print(f"{dag_id} run {run_id}: " + ", ".join(f"{k}={v}" for k, v in states.items()))
    print(format_summary(summary, durations))
    print(f"{'demo wall time (s)':<34}{total_s:,.1f}")
    print("=" * 100)


if __name__ == "__main__":
    sys.exit(main())
