"""Real Airflow services on loopback for tests: scheduler, dag processor, triggerer and API server.

LocalExecutor on SQLite (as ``airflow standalone`` runs it). Every process runs in its own session;
``stop()`` ends them and any descendants by PID, and reports anything that survived.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import requests

from tests.support.s3server import free_port

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SQLITE_CONNECT_ARGS = "tests.support.sqlite_settings.CONNECT_ARGS"


@dataclass
class AirflowServices:
    home: str
    dags_folder: str
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _token: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "AIRFLOW_HOME": self.home,
                "AIRFLOW__CORE__DAGS_FOLDER": self.dags_folder,
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # new DAG files are found within REFRESH_INTERVAL and parsed at once; a known file is parsed
                # again after 30 s (re-parsing every DAG every 5 s was 68 CPU-s of a whole `make test`)
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": os.path.join(self.home, "logs"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": SQLITE_CONNECT_ARGS,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": SQLITE_CONNECT_ARGS,
                "NO_PROXY": "localhost,127.0.0.1",
                "no_proxy": "localhost,127.0.0.1",
            }
        )
        env.update(self.extra_env)
        # the services import SQLITE_CONNECT_ARGS from this repository's tests package
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH", "")]))
        return env

    def start(self, timeout_s: float = 180) -> None:
        os.makedirs(self.home, exist_ok=True)
        env = self.env()
        subprocess.run([os.path.join(BIN, "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
        for name, args in {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.port)],
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer"],
        }.items():
            log = open(os.path.join(self.home, f"{name}.log"), "wb")
            self.procs[name] = subprocess.Popen(
                [os.path.join(BIN, "airflow"), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self._check_alive()
            try:
                if requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow API server did not answer on {self.base_url} within {timeout_s}s")

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                with open(os.path.join(self.home, f"{name}.log"), "rb") as handle:
                    tail = handle.read()[-3000:].decode(errors="replace")
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{tail}")

    # -- REST API ----------------------------------------------------------------------------------
    @property
    def token(self) -> str:
        if self._token is None:
            response = requests.get(f"{self.base_url}/auth/token", timeout=10)
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the REST API.

        Reads are retried: a loaded 2-core machine can stall the server for a while. Any call refused with
        503 "Database is locked" is retried too: the test deployment runs on SQLite, where Airflow refuses
        (and rolls back) e.g. a backfill's creation while the scheduler holds the database.
        """
        attempts = 4 if method == "GET" else 1
        locked_retries = 12
        attempt = 0
        while True:
            try:
                response = requests.request(
                    method,
                    f"{self.base_url}/api/v2{path}",
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=120,
                    **kwargs,
                )
            except (requests.ConnectionError, requests.Timeout):
                attempt += 1
                if attempt >= attempts:
                    raise
                time.sleep(5)
                continue
            if response.status_code == 503 and "database is locked" in response.text.lower() and locked_retries:
                locked_retries -= 1
                time.sleep(2)
                continue
            break
        if not response.ok:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self._check_alive()
            try:
                dag = self.api("GET", f"/dags/{dag_id}")
                if dag:
                    self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
                    return
            except AssertionError:
                pass
            time.sleep(2)
        raise TimeoutError(f"DAG {dag_id} was not parsed within {timeout_s}s")

    def wait_for_runs(self, dag_id: str, run_ids: list[str], timeout_s: float = 900) -> dict[str, str]:
        deadline = time.time() + timeout_s
        states: dict[str, str] = {}
        while time.time() < deadline:
            self._check_alive()
            states = {r: self.api("GET", f"/dags/{dag_id}/dagRuns/{r}")["state"] for r in run_ids}
            if all(s in ("success", "failed") for s in states.values()):
                return states
            time.sleep(1)
        raise TimeoutError(f"runs not finished within {timeout_s}s: {states}")

    # -- stop ----------------------------------------------------------------------------------------
    def stop(self, timeout_s: float = 30) -> list[int]:
        """Stop every service and its descendants; returns PIDs that had to be killed hard."""
        family: list[psutil.Process] = []
        for proc in self.procs.values():
            try:
                parent = psutil.Process(proc.pid)
                family += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _gone, alive = psutil.wait_procs(family, timeout=timeout_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        for proc in self.procs.values():
            proc.wait(timeout=10)
        return [p.pid for p in alive]
