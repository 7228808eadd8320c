"""Faults that take parts of the cluster away (issue 15), on a small cluster of this module's own.

Not on the session's shared cluster: these tests kill its executors and its service. An executor also hosts
a Ray worker node, and the shared cluster's Ray on Spark took minutes to settle after losing one (later
tests' trainings waited 5 minutes for nodes). Order matters and is the file's: the executor is killed first;
then the whole service, whose "retry" starts a new cluster; then that cluster's Ray worker node, during an
inference. The fixture stops whatever cluster is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest
from PIL import Image

from airflow_bigdata_ai.cluster import ClusterConfig, attach, stop_cluster
from airflow_bigdata_ai.cluster.procs import session_members
from airflow_bigdata_ai.examples.datasets.digits import write_digits
from airflow_bigdata_ai.examples.sample_data import write_digits_shardset
from airflow_bigdata_ai.preprocess import preprocess
from airflow_bigdata_ai.shards import ShardSet, current_shardset, load_manifest, open_store, read_table
from airflow_bigdata_ai.train import RunKey, checkpoint_uri
from airflow_bigdata_ai.train.events import finished_epochs
from tests.support.cluster_fixtures import assert_nothing_left, cluster_processes, service_record, subprocess_env

pytestmark = pytest.mark.integration

LAYOUT = {"master": "local-cluster[2,3,1536]", "ray_max_worker_nodes": 1}


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterConfig]:
    config = ClusterConfig(state_dir=str(tmp_path_factory.mktemp("fault-cluster")), **LAYOUT)  # type: ignore[arg-type]
    seen: dict[int, float] = {}
    try:
        yield config
    finally:
        seen.update(cluster_processes(config.state_dir))
        stop_cluster(config)
        assert_nothing_left(seen)


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = str(tmp_path_factory.mktemp("fault-digits") / "png")
    write_digits(folder, "png")
    return folder


def _checksums(store: Any, shardset: ShardSet) -> list[str]:
    return [s.sha256 for s in load_manifest(store, shardset).shards]


def _executor_pids(state_dir: str) -> list[int]:
    """The Spark executors (JVMs) of the cluster's application."""
    pids = []
    for pid in cluster_processes(state_dir):
        try:
            if "CoarseGrainedExecutorBackend" in " ".join(psutil.Process(pid).cmdline()):
                pids.append(pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def _slow(image: Image.Image) -> np.ndarray:  # long enough for a kill to land mid-job
    time.sleep(0.01)
    return np.asarray(image, dtype=np.uint8)[None]


def test_executor_killed_mid_job_is_retried_and_the_output_equals_a_fault_free_run(
    own_cluster: ClusterConfig, digit_images: str, tmp_path: Any
) -> None:
    """SIGKILL one Spark executor while its tasks write shards; Spark reruns them on a relaunched executor."""
    with attach(own_cluster) as own:
        spark = own.spark()
        root = str(tmp_path / "store")
        store = open_store(root)
        clean = preprocess(digit_images, f"{root}/clean", spark=spark, transform=_slow, rows_per_shard=300)
        executors = _executor_pids(own_cluster.state_dir)
        assert executors, "no Spark executor found"
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["ref"] = preprocess(
                    digit_images, f"{root}/faulty", spark=spark, transform=_slow, rows_per_shard=300
                )
            except BaseException as exc:
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 120
        while not store.list(f"{root}/faulty") and time.monotonic() < deadline:  # the job has started writing
            time.sleep(0.2)
        os.kill(executors[0], signal.SIGKILL)
        thread.join(300)
        assert not thread.is_alive() and "error" not in result, result.get("error")
        assert _checksums(store, result["ref"]) == _checksums(store, clean)
        assert result["ref"].num_rows == clean.num_rows == 1797
        assert spark.range(3).count() == 3  # the application carries on with its relaunched executor
        assert set(_executor_pids(own_cluster.state_dir)) - set(executors), "no executor was relaunched"


# A task's work as the operators run it: attach (starting the embedded cluster when there is none), then the
# stage inside ``attached.guard``. Prints the reference, or the error's type and text.
TASK = textwrap.dedent(
    """
    import json, logging, sys, time
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    import numpy as np
    from airflow_bigdata_ai.cluster import ClusterConfig, attach
    from airflow_bigdata_ai.shards import ShardSet, open_store

    def slow(image):
        time.sleep(0.05)
        return np.asarray(image, dtype=np.uint8)[None]

    config, root, job = ClusterConfig(**json.loads(sys.argv[1])), sys.argv[2], json.loads(sys.argv[3])
    cluster, store = attach(config), open_store(root)
    try:
        if job["kind"] == "train":
            from airflow_bigdata_ai.train import RunKey, TrainConfig, train

            cluster.ray()
            with cluster.guard("training"):
                ref = train(ShardSet.from_json(job["data"]), store,
                            "airflow_bigdata_ai.examples.models.digits:make_digits_cnn",
                            config=TrainConfig(epochs=job["epochs"], num_workers=1, batch_size=64),
                            run=RunKey("faults_it", "train", "r1", "2026-01-01"), output_root=root)
        elif job["kind"] == "infer":
            from airflow_bigdata_ai.infer import InferOptions, run_inference
            from airflow_bigdata_ai.shards import ModelRef

            cluster.ray()
            with cluster.guard("inference"):
                ref = run_inference(ModelRef.from_json(job["model"]), ShardSet.from_json(job["data"]), job["out"],
                                    model_store=store, input_store=store,
                                    options=InferOptions(engine="ray", precision="f32", num_workers=1),
                                    log_fn=lambda line: print(line, file=sys.stderr, flush=True)).shardset
        else:
            from airflow_bigdata_ai.preprocess import preprocess

            with cluster.guard("preprocessing"):
                ref = preprocess(job["source"], job["out"], spark=cluster.spark(), transform=slow,
                                 rows_per_shard=300, parallelism=2, tag="abai-faults_it-prep")
        print("RESULT " + ref.to_json(), flush=True)
    except Exception as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
    finally:
        cluster.close()
    """
)


def _start_task(config: ClusterConfig, root: str, job: dict[str, Any], log: Any) -> subprocess.Popen[str]:
    cfg = json.dumps({"state_dir": config.state_dir, **LAYOUT})
    return subprocess.Popen(
        [sys.executable, "-c", TASK, cfg, root, json.dumps(job)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )


def _kill_the_service(state_dir: str) -> list[int]:
    """SIGKILL every process of the service's session: the host of the cluster crashed."""
    members = session_members(int(service_record(state_dir)["sid"]))
    for proc in members:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(members, timeout=10)
    return [p.pid for p in members]


def test_the_cluster_service_killed_during_running_tasks_fails_them_in_bounded_time_and_their_retry_succeeds(
    own_cluster: ClusterConfig, digit_images: str, tmp_path: Any
) -> None:
    root = str(tmp_path / "store")
    store = open_store(root)
    data = write_digits_shardset(store, f"{root}/digits/prep/ds=2026-01-01")
    before = attach(own_cluster).endpoint  # the cluster of the first attempts (started by the executor test)
    jobs = {
        "train": {"kind": "train", "data": data.to_json(), "epochs": 6},
        "prep": {"kind": "prep", "source": digit_images, "out": f"{root}/prep-out/ds=2026-01-01"},
    }
    logs = {name: open(tmp_path / f"{name}-1.log", "w+") for name in jobs}
    tasks = {name: _start_task(own_cluster, root, job, logs[name]) for name, job in jobs.items()}
    try:
        deadline = time.monotonic() + 300
        events = checkpoint_uri(store, RunKey("faults_it", "train", "r1", "2026-01-01")).join("events")
        while time.monotonic() < deadline:  # both mid-job: an epoch done, images being transformed
            epochs = finished_epochs(store, events)
            if epochs and re.search(r"preprocess progress: [1-9]", (tmp_path / "prep-1.log").read_text()):
                break
            assert all(t.poll() is None for t in tasks.values()), "a task ended before the kill"
            time.sleep(0.5)
        killed_at = time.monotonic()
        assert _kill_the_service(own_cluster.state_dir)
        outcome = {}
        for name, task in tasks.items():
            out, _ = task.communicate(timeout=300)
            outcome[name] = (task.returncode, out, time.monotonic() - killed_at)
    finally:
        for task in tasks.values():
            if task.poll() is None:
                task.kill()
                task.wait()
    for name, (code, out, seconds) in outcome.items():
        logs[name].seek(0)
        log = logs[name].read()
        sys.stderr.write(f"\n[faults] {name}: ended {seconds:.0f} s after the service was killed\n")
        assert code != 0 and "ERROR ClusterLost" in out, (name, code, out, log[-3000:])
        assert f"the shared cluster {before.cluster_id} stopped answering" in out, out
        assert seconds < 150, f"{name} took {seconds:.0f} s to fail"
        assert "Started a new local Ray instance" not in log, "Ray Data fell back to a local Ray on the task's host"
    # nothing partial was published
    assert current_shardset(store, f"{root}/prep-out/ds=2026-01-01") is None
    assert not [u for u in store.list(root) if "/faults_it/train/ds=" in u.path and u.path.endswith(".pt")]

    # the retries: the first attach finds the service dead and starts a new cluster; both succeed
    logs2 = {name: open(tmp_path / f"{name}-2.log", "w+") for name in jobs}
    retries = {name: _start_task(own_cluster, root, job, logs2[name]) for name, job in jobs.items()}
    results = {name: task.communicate(timeout=600)[0] for name, task in retries.items()}
    for name, out in results.items():
        logs2[name].seek(0)
        assert "RESULT " in out, (name, out, logs2[name].read()[-3000:])
    after = attach(own_cluster).endpoint
    assert after.cluster_id != before.cluster_id, "the retry runs on a new cluster"
    prepared = ShardSet.from_json(results["prep"].split("RESULT ", 1)[1])
    assert prepared.num_rows == 1797 and current_shardset(store, f"{root}/prep-out/ds=2026-01-01") == prepared
    assert "resuming from the last checkpoint" in (tmp_path / "train-2.log").read_text()
    for handle in [*logs.values(), *logs2.values()]:
        handle.close()


def _worker_node_raylets(state_dir: str) -> list[psutil.Process]:
    """The raylets of Ray worker nodes: those Spark executors host (the head's raylet runs beside the driver)."""
    found = []
    for pid in cluster_processes(state_dir):
        try:
            proc = psutil.Process(pid)
            if "raylet" in proc.name() and any(
                "CoarseGrainedExecutorBackend" in " ".join(p.cmdline()) for p in proc.parents()
            ):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_ray_worker_node_killed_during_inference_every_row_is_predicted_once(
    own_cluster: ClusterConfig, tmp_path: Any
) -> None:
    from tests.support.infer_models import save_model, write_digits

    root = str(tmp_path / "store")
    store = open_store(root)
    model = save_model(store, f"{root}/models/digits/model.pt")
    data = write_digits(store, f"{root}/data/digits", shards=24)
    job = {"kind": "infer", "model": model.to_json(), "data": data.to_json(), "out": f"{root}/out/ds=2026-01-01"}
    log_path = tmp_path / "infer.log"
    with open(log_path, "w+") as log:
        task = _start_task(own_cluster, root, job, log)
        try:
            deadline = time.monotonic() + 300
            while "Predicting " not in log_path.read_text() and time.monotonic() < deadline:
                assert task.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.2)
            raylets = _worker_node_raylets(own_cluster.state_dir)
            assert raylets, "no Ray worker node found"
            for raylet in raylets:
                raylet.send_signal(signal.SIGKILL)
            out, _ = task.communicate(timeout=600)
        finally:
            if task.poll() is None:
                task.kill()
                task.wait()
    assert "RESULT " in out, (out, log_path.read_text()[-3000:])
    predictions = read_table(store, ShardSet.from_json(out.split("RESULT ", 1)[1]))
    source = read_table(store, data)
    assert predictions.column("record_id").to_pylist() == source.column("record_id").to_pylist()  # each once
    agree = (predictions.column("predicted").to_numpy() == source.column("label").to_numpy()).mean()
    assert agree > 0.8, agree
