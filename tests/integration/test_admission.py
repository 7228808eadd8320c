"""Concurrent jobs on the real shared cluster: admitted whole or queued, never deadlocked (issue 15).

Before admission control, three trainings started together with ``cache_data=False`` (the path of every
ShardSet over 512 MiB) each got their Ray Train workers and left no CPU for the Ray Data reads that feed
them: all three hung. Here the load of a backfill (4 such trainings, 2 inferences, 2 preprocessings) runs in
eight processes at once and must all finish, with the outputs each would have alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from airflow_bigdata_ai.cluster import cluster_status
from airflow_bigdata_ai.cluster.admission import (
    AdmissionRefused,
    AdmissionTimeout,
    admission_queue,
    admitted,
    live_ray_drivers,
)
from airflow_bigdata_ai.cluster.usage import running_spark_jobs
from airflow_bigdata_ai.examples.sample_data import write_digits_shardset
from airflow_bigdata_ai.operators.cluster import TeardownRayOnSparkClusterOperator
from airflow_bigdata_ai.shards import ModelRef, ShardSet, load_manifest, open_store, read_table
from airflow_bigdata_ai.train import RunKey, TrainConfig, train
from tests.integration.conftest import subprocess_env

pytestmark = pytest.mark.integration

FACTORY = "airflow_bigdata_ai.examples.models.digits:make_digits_cnn"
SETTINGS: dict[str, Any] = {"epochs": 2, "batch_size": 64, "lr": 5e-3, "num_workers": 2, "cache_data": False}

DRIVER = textwrap.dedent(
    """
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from airflow_bigdata_ai.cluster import ClusterConfig, attach
    from airflow_bigdata_ai.shards import ModelRef, ShardSet, open_store

    state_dir, root, job = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cluster, store = attach(ClusterConfig(state_dir=state_dir, mode="remote")), open_store(root)
    if job["kind"] == "train":
        from airflow_bigdata_ai.train import RunKey, TrainConfig, train

        cluster.ray()
        ref = train(ShardSet.from_json(job["data"]), store, job["factory"], config=TrainConfig(**job["settings"]),
                    run=RunKey("admission_it", "train", job["name"], "2026-01-01"))
        print("RESULT " + ref.to_json())
    elif job["kind"] == "infer":
        from airflow_bigdata_ai.infer import InferOptions, run_inference

        cluster.ray()
        result = run_inference(ModelRef.from_json(job["model"]), ShardSet.from_json(job["data"]), job["out"],
                               model_store=store, input_store=store,
                               options=InferOptions(engine="ray", precision="f32", num_workers=1))
        print("RESULT " + result.shardset.to_json())
    else:
        from airflow_bigdata_ai.preprocess import preprocess

        shards = preprocess({"uri": job["source"], "labels": "folders"}, job["out"], spark=cluster.spark(),
                            transform="airflow_bigdata_ai.examples.transforms:digits_float",
                            guards={"channels": [1]}, parallelism=2, tag="abai-admission_it-" + job["name"])
        print("RESULT " + shards.to_json())
    """
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    root = str(tmp_path_factory.mktemp("admission-store"))
    return root, write_digits_shardset(open_store(root), f"{root}/digits/prep/ds=2026-01-01")


def _teardown_while_others_work(
    shared_cluster: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> tuple[bool, str]:
    """Another DAG's teardown task, run while the trainings hold the cluster: it must leave it running."""
    conn = {"conn_type": "ray_on_spark", "extra": {"mode": "remote", "state_dir": shared_cluster.config.state_dir}}
    monkeypatch.setenv("AIRFLOW_CONN_OTHER_DAGS_CLUSTER", json.dumps(conn))
    teardown = TeardownRayOnSparkClusterOperator(
        task_id="teardown_cluster", ray_on_spark_conn_id="other_dags_cluster", wait_for_other_jobs_s=2
    )
    capfd.readouterr()
    stopped = teardown.execute({})  # type: ignore[arg-type]
    out, err = capfd.readouterr()
    return stopped, out + err


def _wait_for_a_granted_job(timeout_s: float) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while not ray.get(admission_queue().snapshot.remote())["granted"]:
        assert time.monotonic() < deadline, "no training was admitted"
        time.sleep(0.5)


def _jobs(root: str, shardset: ShardSet, model: ModelRef, source: str) -> dict[str, dict[str, Any]]:
    """4 uncached trainings, 2 inferences and 2 preprocessings of the same images: what a backfill brings."""
    jobs: dict[str, dict[str, Any]] = {}
    for i in range(4):
        data = {"data": shardset.to_json(), "factory": FACTORY, "settings": SETTINGS}
        jobs[f"train{i}"] = {"kind": "train", "name": f"run{i}", **data}
    for i in range(2):
        jobs[f"infer{i}"] = {"kind": "infer", "model": model.to_json(), "data": shardset.to_json(),
                             "out": f"{root}/digits/infer{i}/ds=2026-01-01"}  # fmt: skip
        jobs[f"prep{i}"] = {"kind": "prep", "name": f"prep{i}", "source": source,
                            "out": f"{root}/digits/prep{i}/ds=2026-01-01"}  # fmt: skip
    return jobs


def _run_at_once(state_dir: str, root: str, jobs: dict[str, dict[str, Any]], tmp_path: Any) -> dict[str, Any]:
    logs = {name: open(tmp_path / f"{name}.log", "w+") for name in jobs}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", DRIVER, state_dir, root, json.dumps(job)],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=logs[name],
            text=True,
        )
        for name, job in jobs.items()
    }
    return {"procs": procs, "logs": logs}


def _collect(running: dict[str, Any], timeout_s: float) -> dict[str, tuple[int, str, str]]:
    outputs, deadline = {}, time.monotonic() + timeout_s
    try:
        for name, proc in running["procs"].items():
            out, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            log = running["logs"][name]
            log.seek(0)
            outputs[name] = (proc.returncode, out, log.read())
    finally:  # a hang fails the test (timeout above) and leaves no driver behind
        for proc in running["procs"].values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in running["logs"].values():
            log.close()
    return outputs


def test_trainings_inferences_and_preprocessings_at_once_all_finish_with_correct_outputs(
    shared_cluster: Any,
    attached: Any,
    digits: tuple[str, Any],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow_bigdata_ai.examples.datasets.examples import prepare_digits_source
    from tests.support.infer_models import save_model

    root, shardset = digits
    store = open_store(root)
    model = save_model(store, f"{root}/models/digits/model.pt")
    source = prepare_digits_source(300)
    started = time.monotonic()
    running = _run_at_once(shared_cluster.config.state_dir, root, _jobs(root, shardset, model, source), tmp_path)
    try:
        attached.ray()
        _wait_for_a_granted_job(300)
        stopped, teardown_log = _teardown_while_others_work(shared_cluster, monkeypatch, capfd)
    finally:
        outputs = _collect(running, 1200)
    elapsed = time.monotonic() - started
    sys.stderr.write(f"\n[admission] 4 trainings + 2 inferences + 2 preprocessings at once: {elapsed:.0f} s\n")
    for name, (code, _out, err) in outputs.items():
        assert code == 0, f"{name}: {err[-4000:]}"
    results = {name: json.loads(out.split("RESULT ", 1)[1]) for name, (_code, out, _err) in outputs.items()}

    for i in range(4):
        assert ModelRef.from_dict(results[f"train{i}"]).metrics["val_accuracy"] > 0.8, results[f"train{i}"]
    source_ids = read_table(store, shardset).column("record_id").to_pylist()
    for i in range(2):  # every row predicted exactly once
        predictions = read_table(store, ShardSet.from_dict(results[f"infer{i}"]))
        assert predictions.column("record_id").to_pylist() == source_ids
        expected = read_table(store, shardset).column("label").to_numpy()
        assert (predictions.column("predicted").to_numpy() == expected).mean() > 0.8
    prepared = [ShardSet.from_dict(results[f"prep{i}"]) for i in range(2)]
    assert prepared[0].num_rows == prepared[1].num_rows == 300
    checksums = [[s.sha256 for s in load_manifest(store, p).shards] for p in prepared]
    assert checksums[0] == checksums[1]  # the bytes a run alone writes (pinned parallelism)

    logs = "\n".join(err for _code, _out, err in outputs.values())
    # 4 trainings x 3 CPUs on a 4-CPU cluster: at least two of them waited, and said for what and behind whom
    assert logs.count("waiting for the shared cluster: training (2 workers x 1 CPUs + data 1) needs 3 CPUs") >= 2
    assert "admission_it.train run" in logs and "job(s) ahead" in logs
    assert logs.count("admitted to the shared cluster after") >= 2
    # one DAG's teardown while these jobs ran: it waited, said for whom, and left the cluster running
    assert stopped is False
    assert "in use by" in teardown_log and "Ray job admission_it.train run" in teardown_log, teardown_log
    assert "Not stopping the shared cluster" in teardown_log, teardown_log
    assert cluster_status(shared_cluster.config)["alive"]


def test_the_queue_tells_a_live_driver_from_a_dead_one(shared_cluster: Any, attached: Any) -> None:
    """The liveness check behind the lease, against the real GCS: this driver is alive, a finished one is not."""
    import ray

    attached.ray()
    check = ray.remote(num_cpus=0)(live_ray_drivers)
    assert ray.get_runtime_context().get_job_id() in ray.get(check.remote(), timeout=60)
    finished = subprocess.run(
        [sys.executable, "-c", FINISHED_DRIVER, shared_cluster.config.state_dir],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    job = finished.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 60
    while job in ray.get(check.remote(), timeout=60) and time.monotonic() < deadline:
        time.sleep(1)
    assert job not in ray.get(check.remote(), timeout=60)


FINISHED_DRIVER = textwrap.dedent(
    """
    import sys, ray
    from airflow_bigdata_ai.cluster import ClusterConfig, attach
    attach(ClusterConfig(state_dir=sys.argv[1], mode="remote")).ray()
    print(ray.get_runtime_context().get_job_id())
    """
)


def test_a_job_that_can_never_fit_fails_at_once_and_a_wait_times_out(attached: Any, digits: tuple[str, Any]) -> None:
    attached.ray()
    root, shardset = digits
    import ray

    capacity = ray.get(admission_queue().snapshot.remote())["capacity"]
    started = time.monotonic()
    with pytest.raises(AdmissionRefused, match=rf"needs {capacity + 1:g} CPUs but the shared cluster has at most"):
        train(
            shardset,
            open_store(root),
            FACTORY,
            config=TrainConfig(**{**SETTINGS, "num_workers": int(capacity)}),
            run=RunKey("admission_it", "train", "too_big", "2026-01-01"),
        )
    assert time.monotonic() - started < 10
    with admitted(capacity, "admission_it.holder", "a job holding every CPU", 60):
        with pytest.raises(AdmissionTimeout, match=r"needs 3 CPUs; .* held by other jobs \(admission_it.holder\)"):
            train(
                shardset,
                open_store(root),
                FACTORY,
                config=TrainConfig(**{**SETTINGS, "admission_timeout_s": 3}),
                run=RunKey("admission_it", "train", "timeout", "2026-01-01"),
            )
    assert ray.get(admission_queue().snapshot.remote())["in_use"] == 0


def test_a_running_preprocessing_job_counts_as_a_user_of_the_cluster(shared_cluster: Any, attached: Any) -> None:
    """Spark Connect jobs are users (a teardown waits for them); Ray on Spark's own node jobs are not."""
    import threading

    spark = attached.spark()
    failure: list[BaseException] = []

    def sleep_rows(batches: Any) -> Any:  # defined here: shipped by value to the executors
        import time

        for batch in batches:
            time.sleep(8)
            yield batch

    def slow_job() -> None:
        spark.addTag("abai-teardown_it-prep-run1-1")  # Spark Connect tags belong to the thread
        try:
            spark.range(2).repartition(2).mapInPandas(sleep_rows, "id long").collect()
        except BaseException as exc:  # reported below
            failure.append(exc)

    worker = threading.Thread(target=slow_job)
    worker.start()
    try:
        deadline, users = time.monotonic() + 60, []
        while not users and time.monotonic() < deadline and worker.is_alive():
            users = running_spark_jobs(shared_cluster.endpoint.spark_ui_url)
            time.sleep(0.5)
        assert any("abai-teardown_it-prep-run1-1" in user for user in users), users
    finally:
        worker.join(120)
    assert not failure, failure
    assert running_spark_jobs(shared_cluster.endpoint.spark_ui_url) == []
