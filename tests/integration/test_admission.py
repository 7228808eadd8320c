"""Concurrent jobs on the real shared cluster: admitted whole or queued, never deadlocked (issue 15).

Before admission control, three trainings started together with ``cache_data=False`` (the path of every
ShardSet over 512 MiB) each got their Ray Train workers and left no CPU for the Ray Data reads that feed
them: all three hung. Here they run in three processes at once and must all finish, one after another.
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
from airflow_bigdata_ai.cluster.admission import AdmissionRefused, AdmissionTimeout, admission_queue, admitted
from airflow_bigdata_ai.cluster.usage import running_spark_jobs
from airflow_bigdata_ai.examples.sample_data import write_digits_shardset
from airflow_bigdata_ai.operators.cluster import TeardownRayOnSparkClusterOperator
from airflow_bigdata_ai.shards import ModelRef, open_store
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
    from airflow_bigdata_ai.shards import ShardSet, open_store
    from airflow_bigdata_ai.train import RunKey, TrainConfig, train

    state_dir, root, shardset, factory, settings, name = sys.argv[1:7]
    attach(ClusterConfig(state_dir=state_dir, mode="remote")).ray()
    ref = train(ShardSet.from_json(shardset), open_store(root), factory, config=TrainConfig(**json.loads(settings)),
                run=RunKey("admission_it", "train", name, "2026-01-01"))
    print("MODELREF " + ref.to_json())
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


def test_three_uncached_trainings_at_once_all_finish(
    shared_cluster: Any,
    attached: Any,
    digits: tuple[str, Any],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    root, shardset = digits
    started = time.monotonic()
    logs = [open(tmp_path / f"run{i}.log", "w+") for i in range(3)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                DRIVER,
                shared_cluster.config.state_dir,
                root,
                shardset.to_json(),
                FACTORY,
                json.dumps(SETTINGS),
                f"run{i}",
            ],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=logs[i],
            text=True,
        )
        for i in range(3)
    ]
    outputs = []
    try:
        attached.ray()
        _wait_for_a_granted_job(300)
        stopped, teardown_log = _teardown_while_others_work(shared_cluster, monkeypatch, capfd)
        for proc, log in zip(procs, logs, strict=True):
            out, _ = proc.communicate(timeout=900)
            log.seek(0)
            outputs.append((proc.returncode, out, log.read()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    elapsed = time.monotonic() - started
    sys.stderr.write(f"\n[admission] three uncached trainings at once finished in {elapsed:.0f} s\n")
    for code, out, err in outputs:
        assert code == 0, err[-4000:]
        ref = ModelRef.from_json(out.split("MODELREF ", 1)[1])
        assert ref.metrics["val_accuracy"] > 0.8, ref.metrics
    logs = "\n".join(err for _code, _out, err in outputs)
    # 3 trainings x 3 CPUs on a 4-CPU cluster: at least two of them waited, and said for what and behind whom
    assert logs.count("waiting for the shared cluster: training (2 workers x 1 CPUs + data 1) needs 3 CPUs") >= 2
    assert "admission_it.train run" in logs and "job(s) ahead" in logs
    assert logs.count("admitted to the shared cluster after") >= 2
    # one DAG's teardown while these trainings ran: it waited, said for whom, and left the cluster running
    assert stopped is False
    assert "in use by" in teardown_log and "Ray job admission_it.train run" in teardown_log, teardown_log
    assert "Not stopping the shared cluster" in teardown_log, teardown_log
    assert cluster_status(shared_cluster.config)["alive"]


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
