"""The production path on loopback: the cluster service against a real Spark standalone master + 2 workers
started from pyspark's own ``bin/spark-class``; a Spark Connect job and a Ray task; nothing left after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pyspark
import pytest

from airflow_bigdata_ai.cluster import ClusterConfig, attach, stop_cluster
from airflow_bigdata_ai.cluster.service import free_port, port_open
from tests.integration.conftest import assert_nothing_left, cluster_processes, session_processes

pytestmark = pytest.mark.integration

SPARK_HOME = os.path.dirname(pyspark.__file__)


def _spark_class(args: list[str], log_path: str, env: dict[str, str]) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [os.path.join(SPARK_HOME, "bin", "spark-class"), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    finally:
        log.close()


def _alive_workers(webui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=2) as response:
            data = json.load(response)
        return sum(1 for w in data.get("workers", []) if w.get("state") == "ALIVE")
    except OSError:
        return 0


def _end_sessions(sids: list[int]) -> dict[int, float]:
    """SIGTERM then SIGKILL every process in the given sessions (all started by this test); returns them."""
    procs = [p for sid in sids for p in session_processes(sid)]
    snapshot = {}
    for proc in procs:
        try:
            snapshot[proc.pid] = proc.create_time()
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    return snapshot


def test_service_on_standalone_master(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "SPARK_REMOTE", "PYSPARK_SUBMIT"))}
    env.update(
        SPARK_HOME=SPARK_HOME,
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_NO_DAEMONIZE="1",
        SPARK_LOG_DIR=str(tmp_path / "logs"),
        SPARK_WORKER_DIR=str(tmp_path / "work"),  # a standalone worker's executor dirs (else $SPARK_HOME/work)
        PYSPARK_PYTHON=sys.executable,
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    master_port, master_ui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    started: list[subprocess.Popen] = []
    config = ClusterConfig(
        state_dir=str(tmp_path / "state"),
        master=master_url,
        ray_max_worker_nodes=1,
        idle_timeout_s=600.0,
        spark_conf={"spark.executor.memory": "1g", "spark.executor.cores": "2"},
    )
    snapshot: dict[int, float] = {}
    try:
        started.append(
            _spark_class(
                [
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(master_port),
                    "--webui-port",
                    str(master_ui),
                ],
                str(tmp_path / "master.log"),
                env,
            )
        )
        deadline = time.monotonic() + 90
        while not port_open("127.0.0.1", master_port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert port_open("127.0.0.1", master_port), (tmp_path / "master.log").read_text()[-3000:]
        for i in range(2):
            started.append(
                _spark_class(
                    [
                        "org.apache.spark.deploy.worker.Worker",
                        master_url,
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        "2",
                        "--memory",
                        "3g",
                        "--webui-port",
                        str(free_port()),
                        "--work-dir",
                        str(tmp_path / f"work{i}"),
                    ],
                    str(tmp_path / f"worker{i}.log"),
                    env,
                )
            )
        while _alive_workers(master_ui) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _alive_workers(master_ui) == 2

        t0 = time.monotonic()
        handle = attach(config)
        sys.stderr.write(f"\n[standalone] cold start of the service on {master_url}: {time.monotonic() - t0:.1f} s\n")
        assert handle.endpoint.master == master_url
        spark = handle.spark()

        def double(batches):
            for pdf in batches:
                yield pdf.assign(id=pdf["id"] * 2)

        total = spark.range(1000).mapInPandas(double, "id long").groupBy().sum("id").collect()[0][0]
        assert total == 2 * sum(range(1000))
        handle.ray()
        import ray

        @ray.remote(num_cpus=1)
        def where() -> tuple[int, str]:
            return os.getpid(), os.environ.get("SPARK_EXECUTOR_POD_IP", "") or "spark-executor"

        pid, _ = ray.get(where.remote(), timeout=180)
        assert pid != os.getpid()
        # the Ray worker node runs as a Spark task on a standalone executor, i.e. under a Worker process
        ray_worker = psutil.Process(pid)
        worker_pids = {p.pid for p in started[1:]}
        assert any(a.pid in worker_pids for a in ray_worker.parents()), [a.cmdline()[:3] for a in ray_worker.parents()]
        handle.close()
        snapshot.update(cluster_processes(config.state_dir))
        assert stop_cluster(config)
    finally:
        snapshot.update(cluster_processes(config.state_dir))
        stop_cluster(config)
        snapshot.update(_end_sessions([p.pid for p in started]))
        for proc in started:
            proc.wait(timeout=30)
    assert_nothing_left(snapshot)
    assert not any(session_processes(p.pid) for p in started)
