"""The test services' Airflow processes wait a minute for a SQLite lock (see tests/support/sqlite_settings.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.airflow_services import AirflowServices


def test_airflow_started_by_the_test_services_waits_a_minute_for_a_database_lock(tmp_path) -> None:
    env = AirflowServices(home=str(tmp_path), dags_folder=str(tmp_path)).env()
    probe = "from airflow import settings; print(settings._get_connect_args('sync').get('timeout'))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "60", out.stdout
