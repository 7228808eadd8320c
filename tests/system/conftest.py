"""Real Airflow (scheduler, dag processor, triggerer, API server) running the example DAGs on loopback.

One set of services per test session, with the example DAGs at the ``tiny`` scale and a private state
directory, so the embedded shared cluster they start is theirs alone and is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from tests.support.airflow_services import AirflowServices

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class ExampleAirflow:
    services: AirflowServices
    state_home: str

    @property
    def store_root(self) -> str:
        return os.path.join(self.state_home, "store")

    @property
    def cluster_state_dir(self) -> str:
        return os.path.join(self.state_home, "clusters", "ray_on_spark_default")

    def task_logs(self) -> str:
        chunks = []
        for dirpath, _dirs, files in os.walk(os.path.join(self.services.home, "logs")):
            for name in files:
                with open(os.path.join(dirpath, name), errors="replace") as handle:
                    chunks.append(handle.read())
        return "\n".join(chunks)


@pytest.fixture(scope="session")
def example_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleAirflow]:
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
            "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        },
    )
    before = {p.pid for p in psutil.process_iter()}
    services.start()
    env = ExampleAirflow(services, state_home)
    try:
        yield env
    finally:
        from airflow_bigdata_ai.cluster import ClusterConfig, stop_cluster

        stop_cluster(ClusterConfig(state_dir=env.cluster_state_dir))
        services.stop()
        leftovers = [
            p
            for p in psutil.process_iter(["pid", "cmdline"])
            if p.pid not in before and any(str(base) in part for part in (p.info["cmdline"] or []))
        ]
        assert not leftovers, f"processes left behind: {[(p.pid, p.info['cmdline']) for p in leftovers]}"
