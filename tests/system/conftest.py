"""Real Airflow (scheduler, dag processor, triggerer, API server) running the example DAGs on loopback.

One set of services per test session, with the example DAGs at the ``tiny`` scale. Their default
``ray_on_spark`` connection (embedded mode) finds the session's shared cluster through
``AIRFLOW_BIGDATA_AI_STATE_DIR`` and reuses it, as a production Airflow reuses its warm cluster: the
suite runs one cluster, and the session fixture stops it at the end.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from tests.support.airflow_services import AirflowServices
from tests.support.cluster_fixtures import SharedCluster

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class ExampleAirflow:
    services: AirflowServices
    state_home: str
    cluster: SharedCluster

    @property
    def store_root(self) -> str:
        return os.path.join(self.state_home, "store")

    @property
    def cluster_state_dir(self) -> str:
        return self.cluster.config.state_dir

    def task_logs(self) -> str:
        chunks = []
        for dirpath, _dirs, files in os.walk(os.path.join(self.services.home, "logs")):
            for name in files:
                with open(os.path.join(dirpath, name), errors="replace") as handle:
                    chunks.append(handle.read())
        return "\n".join(chunks)


@pytest.fixture(scope="session")
def example_airflow(
    tmp_path_factory: pytest.TempPathFactory, shared_cluster: SharedCluster
) -> Iterator[ExampleAirflow]:
    base = tmp_path_factory.mktemp("example-airflow")
    dags = base / "dags"
    dags.mkdir()
    for name in os.listdir(os.path.join(REPO, "dags_examples")):
        if name.endswith(".py"):
            shutil.copy(os.path.join(REPO, "dags_examples", name), dags / name)
    state_home = str(base / "abai")
    services = AirflowServices(
        home=str(base / "airflow"),
        dags_folder=str(dags),
        extra_env={
            "AIRFLOW_BIGDATA_AI_HOME": state_home,
            "AIRFLOW_BIGDATA_AI_EXAMPLE_SCALE": "tiny",
            # no run from the schedule: unpausing digits_e2e (catchup=False) queued a run for the latest
            # interval, a whole pipeline beside the tests' own runs (triggered and backfill runs still run)
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW_BIGDATA_AI_STATE_DIR": shared_cluster.config.state_dir,
            "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        },
    )
    before = {p.pid for p in psutil.process_iter()}
    services.start()
    env = ExampleAirflow(services, state_home, shared_cluster)
    try:
        yield env
    finally:
        services.stop()
        leftovers = [
            p
            for p in psutil.process_iter(["pid", "cmdline"])
            if p.pid not in before and any(str(base) in part for part in (p.info["cmdline"] or []))
        ]
        assert not leftovers, f"processes left behind: {[(p.pid, p.info['cmdline']) for p in leftovers]}"
