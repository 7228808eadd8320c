"""Issue 14 acceptance: a task runs as another host would, with nothing but the connection.

The test plays two hosts on this machine:

- the **service host**: a cluster service started with ``--bind-address`` on the host end of a veth pair and a
  fixed Jobs API port (Ray's dashboard); every other server of it stays on loopback;
- an **Airflow worker on another host**: a process in a network namespace the test creates (its end of the
  pair, an address the test assigns), in a private mount namespace where the service's home (its state
  directory and token) is hidden under an empty tmpfs. It holds the connection that
  ``airflow-bigdata-ai cluster status --connection`` printed, and a DAG folder with the user's model module.

The worker runs preprocess -> train -> infer on digits with ``deferrable=True`` (the drivers run on the cluster
as jobs, the triggers poll them); the same DAG then runs on the service host in the embedded way (the tasks
are the drivers). The outputs must agree: the same shard checksums, accuracy within 1 point. The worker's
process must not have imported pyspark, Ray, torch, OpenVINO or NNCF.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_bigdata_ai.cluster import ClusterConfig, ensure_cluster, stop_cluster
from tests.support.cluster_fixtures import assert_nothing_left, cluster_processes

pytestmark = [pytest.mark.system, pytest.mark.integration, pytest.mark.timeout(1500)]

DAG_ID = "abai_remote_worker"
DATE = "2026-11-21"
HEAVY = ("pyspark", "ray", "torch", "openvino", "nncf")

USER_MODEL = '''
"""The user's model, beside the DAG: not installed anywhere, shipped to the cluster with each job."""
from torch import nn


def make_model(width: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 64, 10)
    )
'''

DAG_FILE = '''
"""airflow DAG: digits, preprocess -> train -> infer; deferrable when the connection names a cluster service."""
import json
import os

import pendulum
from airflow.sdk import DAG, task

from airflow_bigdata_ai.operators.infer import OpenVINOInferOperator
from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator
from airflow_bigdata_ai.operators.train import RayTrainOperator

REMOTE = os.environ.get("ABAI_REMOTE") == "1"

with DAG("abai_remote_worker", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC")) as dag:
    prep = SparkPreprocessOperator(
        task_id="prep",
        source={"uri": os.environ["ABAI_IMAGES"], "classes": [str(d) for d in range(10)]},
        transform="airflow_bigdata_ai.examples.transforms:digits_float",
        rows_per_shard=300,
        parallelism=2,
        deferrable=REMOTE,
    )
    train = RayTrainOperator(
        task_id="train",
        train_data=prep.output,
        model_factory="user_model:make_model",
        epochs=3,
        batch_size=32,
        lr=5e-3,
        deferrable=REMOTE,
    )
    infer = OpenVINOInferOperator(
        task_id="infer", model_ref=train.output, input_data=prep.output, precision="f32", deferrable=REMOTE
    )

    @task
    def report(shards: dict, model: dict, predictions: dict) -> None:
        from airflow_bigdata_ai.shards import ShardSet, load_manifest, open_store

        data = ShardSet.coerce(shards)
        store = open_store(data.dataset_uri.rsplit("/abai_remote_worker/", 1)[0])
        out = {
            "sums": [s.sha256 for s in load_manifest(store, data).shards],
            "rows": data.num_rows,
            "val_accuracy": model["metrics"]["val_accuracy"],
            "infer_accuracy": predictions["stats"].get("accuracy"),
            "state_dir_visible": os.path.exists(os.environ["ABAI_SERVICE_STATE"]),
        }
        with open(os.environ["ABAI_REPORT"], "w") as handle:
            json.dump(out, handle)

    report(prep.output, train.output, infer.output)
'''

WORKER = """
import json, os, subprocess, sys, time
subprocess.run([os.path.join(os.path.dirname(sys.executable), "airflow"), "db", "migrate"], check=True,
               capture_output=True)
sys.path.insert(0, os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
from datetime import datetime, timezone
from abai_remote_worker import dag

t0 = time.monotonic()
run = dag.test(logical_date=datetime(2026, 11, 21, tzinfo=timezone.utc))
heavy = sorted(m for m in HEAVY if m in sys.modules)
print("WORKER-RESULT " + json.dumps({"state": str(run.state), "heavy": heavy, "seconds": time.monotonic() - t0}))
""".replace("HEAVY", repr(HEAVY))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def veth() -> Any:
    """A network namespace and a veth pair with addresses of this test's own /30; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("needs root, ip(8) and unshare(1) to play another host (ARCHITECTURE.md fact 21)")
    n = os.getpid() % 200 + 20
    netns, host_if, peer_if = f"abai-w{os.getpid()}", f"abai-h{os.getpid()}"[:15], f"abai-p{os.getpid()}"[:15]
    host_ip, worker_ip = f"10.213.{n}.1", f"10.213.{n}.2"
    made = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True)
    if made.returncode != 0:  # e.g. a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        _ip("link", "set", peer_if, "netns", netns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", netns, "ip", "addr", "add", f"{worker_ip}/30", "dev", peer_if)
        _ip("netns", "exec", netns, "ip", "link", "set", peer_if, "up")
        _ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
        yield {"netns": netns, "host_ip": host_ip, "worker_ip": worker_ip}
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def service(veth: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The cluster service on the service host: Jobs API on the veth address, the rest on loopback."""
    home = tmp_path_factory.mktemp("service-home")
    config = ClusterConfig(
        state_dir=str(home / "state"),
        bind_address=veth["host_ip"],
        jobs_port=_free_port(veth["host_ip"]),
        idle_timeout_s=1800.0,
    )
    try:
        endpoint = ensure_cluster(config)
        yield {"config": config, "endpoint": endpoint, "home": str(home)}
    finally:
        snapshot = cluster_processes(config.state_dir)
        stop_cluster(config, timeout_s=60)
        assert_nothing_left(snapshot)


def _project(base: Path, images: str, service_state: str, connection: str, remote: bool) -> dict[str, str]:
    """A host's Airflow: its own home and DAG folder (the user's module beside the DAG), its environment."""
    dags = base / "dags"
    dags.mkdir(parents=True)
    (dags / "abai_remote_worker.py").write_text(DAG_FILE)
    (dags / "user_model.py").write_text(USER_MODEL)
    drop = ("RAY_", "SPARK_REMOTE", "AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_BIGDATA_AI", "PYSPARK")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k != "AIRFLOW_HOME"}
    env.update(
        {
            "AIRFLOW_HOME": str(base / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
            "AIRFLOW_BIGDATA_AI_HOME": str(base / "abai"),
            "AIRFLOW_CONN_RAY_ON_SPARK_DEFAULT": connection,
            "ABAI_IMAGES": images,
            "ABAI_REPORT": str(base / "report.json"),
            "ABAI_SERVICE_STATE": service_state,
            "ABAI_REMOTE": "1" if remote else "0",
            "NO_PROXY": "localhost,127.0.0.1",
            "no_proxy": "localhost,127.0.0.1",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    return env


def _run(cmd: list[str], env: dict[str, str], label: str, base: Path) -> dict[str, Any]:
    log_path = base / f"{label}.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900, check=False)
    output = log_path.read_text(errors="replace")
    sys.stderr.write(f"\n[remote worker] {label}: exit {proc.returncode} in {time.monotonic() - t0:.1f} s\n")
    lines = [line for line in output.splitlines() if line.startswith("WORKER-RESULT ")]
    assert proc.returncode == 0 and lines, f"{label} failed ({proc.returncode}); log {log_path}:\n{output[-8000:]}"
    result = json.loads(lines[-1].split(" ", 1)[1])
    result["report"] = json.loads((base / "report.json").read_text())
    result["log"] = output
    return result


def test_a_worker_on_another_host_runs_the_pipeline_with_only_the_connection(
    veth: dict[str, str], service: dict[str, Any], tmp_path: Path
) -> None:
    from airflow_bigdata_ai.examples.datasets.digits import write_digits

    shared = tmp_path / "shared"  # what both hosts see: the images and the shard store (think S3)
    images = str(shared / "images")
    write_digits(images, "png")
    config: ClusterConfig = service["config"]
    printed = subprocess.run(
        [sys.executable, "-m", "airflow_bigdata_ai", "cluster", "status", "--state-dir", config.state_dir,
         "--connection", "--store-root", str(shared / "store-worker")],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    name, _, quoted = printed.partition("=")
    assert name == "AIRFLOW_CONN_RAY_ON_SPARK_DEFAULT"
    connection = json.loads(quoted.strip("'"))
    assert connection["extra"]["jobs_url"] == f"http://{veth['host_ip']}:{config.jobs_port}"

    worker_base = tmp_path / "worker"
    env = _project(worker_base, images, config.state_dir, json.dumps(connection), remote=True)
    (worker_base / "worker.py").write_text(WORKER)
    hide = f"mount -t tmpfs abai-hidden {service['home']} && exec {sys.executable} {worker_base / 'worker.py'}"
    remote = _run(
        ["ip", "netns", "exec", veth["netns"], "unshare", "-m", "sh", "-c", hide], env, "worker-in-netns", worker_base
    )

    host_conn = {
        "conn_type": "ray_on_spark",
        "extra": {"mode": "remote", "state_dir": config.state_dir, "store_root": str(shared / "store-host")},
    }
    host_base = tmp_path / "service-host"
    env = _project(host_base, images, config.state_dir, json.dumps(host_conn), remote=False)
    (host_base / "worker.py").write_text(WORKER)
    local = _run([sys.executable, str(host_base / "worker.py")], env, "embedded-on-service-host", host_base)

    sys.stderr.write(
        f"\n[remote worker] netns run {remote['seconds']:.1f} s, embedded run {local['seconds']:.1f} s; "
        f"val_accuracy {remote['report']['val_accuracy']:.4f} vs {local['report']['val_accuracy']:.4f}\n"
    )
    assert remote["state"].endswith("success") and local["state"].endswith("success")
    assert remote["report"]["state_dir_visible"] is False and local["report"]["state_dir_visible"] is True
    assert remote["heavy"] == [], f"the worker imported {remote['heavy']}"
    assert "Driver job abai-" in remote["log"] and "epoch 3/3" in remote["log"]  # the job's log in the task log
    assert remote["report"]["rows"] == local["report"]["rows"] == 1797
    assert remote["report"]["sums"] == local["report"]["sums"]
    assert abs(remote["report"]["val_accuracy"] - local["report"]["val_accuracy"]) <= 0.01
    assert abs(remote["report"]["infer_accuracy"] - local["report"]["infer_accuracy"]) <= 0.01
