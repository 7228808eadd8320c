"""RayTrainOperator under a real Airflow (scheduler, LocalExecutor task supervisor) with the user's own model.

One DAG in its own DAGs folder, its model factory in a module beside it (the Ray workers cannot import it),
factory kwargs templated from params. Three trainings and one failing run cover issue 13 for training:

- defect 1: the factory module beside the DAG reaches the Ray Train workers;
- defect 2: an edited module takes effect on the next run, same cluster, no restart;
- defect 5: ``{"channels": "{{ params.channels }}"}`` renders "6" and the factory gets the int 6;
- defect 7: the task log holds no Ray line at error level, each epoch line once, no line over 2,000 chars;
- defect 9: the run's checkpoint folder is gone once the task succeeded;
- defect 11: two runs with the same seed on the same shards train byte-identical weights;
- defect 12: a missing module fails the task on its first try (``AirflowFailException``, retries unused);
- defect 17: a run without a logical date writes its weights under ``run=<run id>``.

And issue 15: a task process SIGKILLed mid-training (no ``on_kill``) is retried by the scheduler; the retry
finds the run handle in the task state store, resumes from the checkpoint and returns the ModelRef to XCom
(``ResumableJobMixin``'s reconnect branch returned None before), and the dead attempt's Ray actors are gone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from airflow_bigdata_ai.shards import ModelRef, ShardSet, open_store
from airflow_bigdata_ai.shards.paths import safe_segment
from airflow_bigdata_ai.train.events import finished_epochs
from tests.support.airflow_services import AirflowServices
from tests.support.cluster_fixtures import SharedCluster, jobs_client, stop_leftover_jobs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

DAG_ID = "user_train"
MAX_LINE = 2000

USER_MODULE = """
'''The user's own model, beside the DAG: not installed, not importable on the cluster.'''
from torch import nn


def make_model(channels: int = 4, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * 64, num_classes),{extra}
    )
"""
EDIT = "\n        nn.ReLU(),\n        nn.Linear(num_classes, num_classes),"

DAG = """
import json
import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from airflow_bigdata_ai.operators.train import RayTrainOperator

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "train_data.json")) as handle:
    TRAIN_DATA = json.load(handle)

with DAG(
    "user_train",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"channels": 6, "factory": "user_models:make_model"},
    default_args={"retries": 3, "retry_delay": timedelta(seconds=1)},
):
    RayTrainOperator(
        task_id="train",
        train_data=TRAIN_DATA,
        model_factory="{{ params.factory }}",
        factory_kwargs={"channels": "{{ params.channels }}"},
        epochs=2,
        batch_size=32,
        lr=5e-3,
        num_workers=2,
        seed=3,
    )

# the same training with retries: the task is the driver (resume), or its driver runs on the cluster service (a
# connection with jobs_url) while the task waits in the triggerer (deferred) or in its own process (remote)
for dag_id, conn_id, deferrable, epochs in (
    ("user_train_resume", "ray_on_spark_default", False, 4),
    ("user_train_deferred", "abai_service", True, 5000),
    ("user_train_remote", "abai_service", False, 60),
):
    with DAG(
        dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        default_args={"retries": 2, "retry_delay": timedelta(seconds=1)},
    ):
        RayTrainOperator(
            task_id="train",
            train_data=TRAIN_DATA,
            model_factory="user_models:make_model",
            epochs=epochs,
            batch_size=32,
            lr=5e-3,
            num_workers=2,
            seed=3,
            ray_on_spark_conn_id=conn_id,
            deferrable=deferrable,
        )
"""
RESUME_DAG_ID = "user_train_resume"
DEFERRED_DAG_ID, REMOTE_DAG_ID = "user_train_deferred", "user_train_remote"


@dataclass
class UserAirflow:
    services: AirflowServices
    dags: str
    store_root: str

    def trigger(self, **body: Any) -> str:
        return str(self.services.api("POST", f"/dags/{DAG_ID}/dagRuns", json=body)["dag_run_id"])

    def run(self, **body: Any) -> tuple[str, str]:
        run_id = self.trigger(**body)
        return run_id, self.services.wait_for_runs(DAG_ID, [run_id], timeout_s=900)[run_id]

    def model_ref(self, run_id: str) -> ModelRef:
        entry = self.services.api(
            "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train/xcomEntries/return_value"
        )
        value = entry["value"]
        return ModelRef.coerce(json.loads(value) if isinstance(value, str) else value)

    def task_instance(self, run_id: str) -> dict[str, Any]:
        return dict(self.services.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train"))

    def log_records(self, run_id: str, attempt: int = 1) -> list[tuple[str, dict[str, Any]]]:
        """(raw line, parsed record) of the task's log file as the supervisor wrote it."""
        path = os.path.join(
            self.services.home,
            "logs",
            f"dag_id={DAG_ID}",
            f"run_id={run_id}",
            "task_id=train",
            f"attempt={attempt}.log",
        )
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [(line, json.loads(line)) for line in handle if line.strip()]

    def write_module(self, extra: str = "") -> None:
        path = os.path.join(self.dags, "user_models.py")
        with open(path, "w") as handle:
            handle.write(USER_MODULE.replace("{extra}", extra))
        os.utime(path, (time.time() + 2, time.time() + 2))  # a new mtime even within the same second


@pytest.fixture(scope="module")
def user_airflow(tmp_path_factory: pytest.TempPathFactory, shared_cluster: SharedCluster) -> Iterator[UserAirflow]:
    from airflow_bigdata_ai.examples.sample_data import write_digits_shardset

    base = tmp_path_factory.mktemp("user-train")
    state_home = str(base / "abai")
    store_root = os.path.join(state_home, "store")
    shardset = write_digits_shardset(
        open_store(store_root), os.path.join(store_root, "digits", "prep", "ds=2026-01-01")
    )
    dags = base / "dags"
    dags.mkdir()
    (dags / "train_data.json").write_text(shardset.to_json())
    (dags / "user_train_dag.py").write_text(DAG)
    services = AirflowServices(
        home=str(base / "airflow"),
        dags_folder=str(dags),
        extra_env={
            "AIRFLOW_BIGDATA_AI_HOME": state_home,
            "AIRFLOW_BIGDATA_AI_STATE_DIR": shared_cluster.config.state_dir,
            "AIRFLOW_CONN_ABAI_SERVICE": service_connection(shared_cluster, store_root),
        },
    )
    env = UserAirflow(services, str(dags), store_root)
    env.write_module()
    services.start()
    try:
        services.wait_for_dag(DAG_ID)
        yield env
    finally:
        services.stop()  # ends every service and its descendants by PID (hard, if they do not stop in time)
        # a test that failed half-way may leave a (5000-epoch) driver job holding the CPUs of every later test
        stop_leftover_jobs(shared_cluster, "abai-user_train")


def service_connection(shared_cluster: SharedCluster, store_root: str) -> str:
    """The connection ``cluster status --connection`` prints for the shared cluster: its Jobs API and token."""
    from airflow_bigdata_ai.cluster.config import StatePaths, read_token

    token = read_token(StatePaths(shared_cluster.config.state_dir).token)
    extra = {"mode": "remote", "jobs_url": shared_cluster.endpoint.jobs_url, "store_root": store_root}
    extra["unsigned_references"] = "accept"  # train_data.json is written by hand, not by an operator
    return json.dumps({"conn_type": "ray_on_spark", "password": token, "extra": extra})


def _weights_keys(store_root: str, ref: ModelRef) -> list[str]:
    import io

    import torch

    data = open_store(store_root).read_bytes(ref.weights_uri)
    return sorted(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


def _check_log(records: list[tuple[str, dict[str, Any]]], epochs: int) -> None:
    errors = [r for _line, r in records if r.get("level") in ("error", "critical")]
    assert not errors, f"error-level lines in a successful task log: {errors[:5]}"
    assert not [r for _line, r in records if r.get("logger") == "task.stderr"], "raw stderr reached the task log"
    for epoch in range(1, epochs + 1):
        lines = [r for _line, r in records if str(r.get("event", "")).startswith(f"epoch {epoch}/{epochs} ")]
        assert len(lines) == 1, f"epoch {epoch} logged {len(lines)} times: {lines}"
    long = [len(line) for line, _r in records if len(line) > MAX_LINE]
    assert not long, f"log lines of {long} characters"


def test_user_model_beside_the_dag_trains_deterministically_and_edits_take_effect(user_airflow: UserAirflow) -> None:
    env = user_airflow
    # a missing module: fails at once, on its first try, although the task has retries (defect 12)
    missing = env.trigger(logical_date=None, conf={"factory": "missing_module:make_model"})
    first, state = env.run(logical_date="2026-01-01T00:00:00Z")
    assert state == "success", env.log_records(first)[-20:]
    ref = env.model_ref(first)
    assert ref.factory_kwargs == {"channels": 6}, ref.factory_kwargs  # "6" rendered, 6 given (defect 5)
    assert set(ref.code) == {"user_models"}, ref.code  # the code identity travels in the ModelRef
    assert "/ds=2026-01-01/weights/" in ref.weights_uri
    assert _weights_keys(env.store_root, ref) == ["0.bias", "0.weight", "3.bias", "3.weight"]
    _check_log(env.log_records(first), epochs=2)
    checkpoints = os.path.join(env.store_root, "_checkpoints", DAG_ID, "train")
    assert not os.path.exists(os.path.join(checkpoints, safe_segment(first))), "checkpoints kept after success"

    failed = env.services.wait_for_runs(DAG_ID, [missing], timeout_s=300)
    assert failed == {missing: "failed"}
    ti = env.task_instance(missing)
    # not retried: the attempt that ran the operator ended the task (an overloaded machine may lose an
    # attempt before the operator runs, so "first try" is "fewer tries than the retries allow")
    assert ti["state"] == "failed" and ti["try_number"] < 4, ti
    text = "\n".join(line for line, _r in env.log_records(missing, attempt=ti["try_number"]))
    assert "AirflowFailException" in text and "missing_module" in text, text[-3000:]

    again, state = env.run(logical_date="2026-01-02T00:00:00Z")  # same seed, same shards (defect 11)
    assert state == "success"
    assert env.model_ref(again).weights_sha256 == ref.weights_sha256

    env.write_module(EDIT)  # the user fixes their model; the cluster keeps running (defect 2)
    edited, state = env.run(logical_date=None)  # and this run has no logical date (defect 17)
    assert state == "success", env.log_records(edited)[-20:]
    new_ref = env.model_ref(edited)
    assert new_ref.code["user_models"] != ref.code["user_models"]
    assert _weights_keys(env.store_root, new_ref) == ["0.bias", "0.weight", "3.bias", "3.weight", "5.bias", "5.weight"]
    assert f"/run={safe_segment(edited)}/weights/" in new_ref.weights_uri, new_ref.weights_uri
    _check_log(env.log_records(edited), epochs=2)
    assert ShardSet.coerce(new_ref.trained_on).manifest_sha256 == ShardSet.coerce(ref.trained_on).manifest_sha256


def _training_driver(services: AirflowServices, timeout_s: float) -> tuple[int, str]:
    """(pid, Ray job id) of the task process that drives the training: a running Ray driver under the scheduler."""
    import psutil
    from ray.util.state import list_jobs

    scheduler = psutil.Process(services.procs["scheduler"].pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ours = {p.pid for p in scheduler.children(recursive=True)}
        for job in list_jobs(raise_on_missing_output=False):
            pid = (job.driver_info.pid if job.driver_info else None) or 0
            if job.status == "RUNNING" and int(pid) in ours:
                return int(pid), str(job.job_id)
        time.sleep(0.5)
    raise AssertionError("no training task process found under the scheduler")


def _registers_a_checkpoint(snapshot: bytes) -> bool:
    try:
        return bool(json.loads(snapshot).get("latest_checkpoint_result"))
    except ValueError:  # caught mid-write
        return False


def test_a_task_process_killed_mid_training_is_retried_and_returns_its_model_ref(
    user_airflow: UserAirflow, attached: Any
) -> None:
    import signal

    from airflow_bigdata_ai.train import RunKey, checkpoint_uri
    from airflow_bigdata_ai.train.core import wait_job_actors_gone

    env, store = user_airflow, open_store(user_airflow.store_root)
    attached.ray()
    env.services.wait_for_dag(RESUME_DAG_ID)  # parsed and unpaused
    run_id = str(env.services.api("POST", f"/dags/{RESUME_DAG_ID}/dagRuns", json={"logical_date": None})["dag_run_id"])
    events = checkpoint_uri(store, RunKey(RESUME_DAG_ID, "train", run_id)).join("events")
    deadline, epochs = time.monotonic() + 300, []
    while not epochs and time.monotonic() < deadline:
        epochs = finished_epochs(store, events)
        time.sleep(0.5)
    assert epochs, "no epoch finished in time"
    # Ray Train's controller registers a reported checkpoint a moment after the worker wrote it (it polls the
    # workers); a kill inside that window rightly restarts at epoch 0. Kill once the checkpoint is registered.
    base = checkpoint_uri(store, RunKey(RESUME_DAG_ID, "train", run_id))
    registered = False
    while not registered and time.monotonic() < deadline:
        snapshots = [u for u in store.list(base) if u.name == "checkpoint_manager_snapshot.json"]
        registered = any(_registers_a_checkpoint(store.read_bytes(u)) for u in snapshots)
        time.sleep(0.5)
    assert registered, "no checkpoint registered in time"
    pid, job_id = _training_driver(env.services, 60)
    os.kill(pid, signal.SIGKILL)  # no on_kill, no cleanup: what an OOM kill or a lost pod does

    state = env.services.wait_for_runs(RESUME_DAG_ID, [run_id], timeout_s=900)[run_id]
    ti = dict(env.services.api("GET", f"/dags/{RESUME_DAG_ID}/dagRuns/{run_id}/taskInstances/train"))
    retry_log = _task_log(env.services.home, RESUME_DAG_ID, run_id, ti["try_number"])
    assert state == "success" and ti["try_number"] == 2, (state, ti, retry_log[-3000:])
    assert "Reconnecting to existing job" in retry_log, retry_log[-3000:]
    assert "took over the shared cluster's queue place of an earlier attempt" in retry_log  # no 60 s lease wait
    assert wait_job_actors_gone(job_id, timeout=30) == []  # the dead attempt's trainer and workers are gone
    entry = env.services.api(
        "GET", f"/dags/{RESUME_DAG_ID}/dagRuns/{run_id}/taskInstances/train/xcomEntries/return_value"
    )
    value = entry["value"]
    ref = ModelRef.coerce(json.loads(value) if isinstance(value, str) else value)
    assert ref.metrics["resumed_from_epoch"] >= 1 and ref.metrics["epochs"] == 4, ref.metrics
    assert store.exists(ref.weights_uri)


def _task_log(home: str, dag_id: str, run_id: str, attempt: int, trigger: bool = False) -> str:
    """The attempt's task log; ``trigger``: the logs its triggers wrote (``attempt=N.log.trigger.<id>.log``)."""
    folder = os.path.join(home, "logs", f"dag_id={dag_id}", f"run_id={run_id}", "task_id=train")
    names = [n for n in sorted(os.listdir(folder)) if n.startswith(f"attempt={attempt}.log")]
    names = [n for n in names if (".trigger." in n) == trigger]
    text = ""
    for name in names:
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as handle:
            text += handle.read()
    return text


# -- drivers on the cluster service (issue 14) -------------------------------------------------------------------
def _jobs_of(shared_cluster: SharedCluster, dag_id: str) -> list[dict[str, Any]]:
    """The driver jobs of ``dag_id``'s train task on the cluster (any run, any try)."""
    jobs = jobs_client(shared_cluster).list()
    return [j for j in jobs if f"abai-{dag_id}_train-" in str(j.get("submission_id"))]


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _first_epoch_done(shared_cluster: SharedCluster, dag_id: str) -> dict[str, Any] | None:
    client = jobs_client(shared_cluster)
    for job in _jobs_of(shared_cluster, dag_id):
        if job.get("status") == "RUNNING" and "epoch 1/" in client.logs(str(job["submission_id"])):
            return job
    return None


def test_clearing_a_deferred_training_stops_its_cluster_job(
    user_airflow: UserAirflow, shared_cluster: SharedCluster, attached: Any
) -> None:
    """Clear the deferred task through the REST API: its trigger's on_kill stops the driver job (try 1). The cleared
    task runs again (try 2, a new job); marking the run failed stops that one too."""
    from airflow_bigdata_ai.train.core import wait_job_actors_gone

    services = user_airflow.services
    services.wait_for_dag(DEFERRED_DAG_ID)
    run_id = str(services.api("POST", f"/dags/{DEFERRED_DAG_ID}/dagRuns", json={"logical_date": None})["dag_run_id"])
    ti_path = f"/dags/{DEFERRED_DAG_ID}/dagRuns/{run_id}/taskInstances/train"
    job = _wait(lambda: _first_epoch_done(shared_cluster, DEFERRED_DAG_ID), 300, "the deferred training's first epoch")
    first = str(job["submission_id"])
    _wait(lambda: _trigger_watches(services, run_id, ti_path, first), 120, f"a trigger to watch {first}")
    services.api(
        "POST",
        f"/dags/{DEFERRED_DAG_ID}/clearTaskInstances",
        json={"dag_run_id": run_id, "task_ids": ["train"], "dry_run": False, "only_failed": False},
    )
    _wait(
        lambda: _status_of(shared_cluster, DEFERRED_DAG_ID, first) == "STOPPED", 180, f"the cleared job {first} to stop"
    )
    attached.ray()
    left = [a for a in _alive_classes(wait_job_actors_gone(str(job["job_id"]), timeout=60)) if a not in SINGLETONS]
    assert not left, left

    second = _wait(
        lambda: [j for j in _jobs_of(shared_cluster, DEFERRED_DAG_ID) if j["submission_id"] != first],
        300,
        "the cleared task's next try to submit its job",
    )[0]["submission_id"]
    # Marked failed before a triggerer picked its trigger up (about a second after the deferral), a task's job is
    # left running: Airflow deletes a trigger that never ran without calling its on_kill (docs/real-cluster.rst)
    _wait(lambda: _trigger_watches(services, run_id, ti_path, second), 300, f"the next try's trigger to watch {second}")
    services.api("PATCH", f"/dags/{DEFERRED_DAG_ID}/dagRuns/{run_id}", json={"state": "failed"})
    _wait(lambda: _status_of(shared_cluster, DEFERRED_DAG_ID, second) == "STOPPED", 180, f"the job {second} to stop")
    trigger_log = _task_log(services.home, DEFERRED_DAG_ID, run_id, 1, trigger=True)
    assert (
        "Trigger cancelled by user action, invoking on_kill" in trigger_log
        and f"Stopped the driver job {first}" in trigger_log
    ), trigger_log[-3000:]


def _trigger_watches(services: AirflowServices, run_id: str, ti_path: str, submission: str) -> bool:
    """The task is deferred and its current try's trigger runs in the triggerer: it streamed the job's log."""
    ti = services.api("GET", ti_path)
    if ti["state"] != "deferred":
        return False
    return f"driver {submission} " in _task_log(services.home, DEFERRED_DAG_ID, run_id, ti["try_number"], trigger=True)


# Ray's cluster-wide detached singletons: created by the first job that needs them, shared by all later ones
SINGLETONS = {"TrainStateActor", "_StatsActor", "_AutoscalingCoordinatorActor"}


def _alive_classes(ids: list[str]) -> list[str]:
    from ray.util.state import get_actor

    return [a.class_name for a in map(get_actor, ids) if a is not None and a.state != "DEAD"]


def test_a_killed_task_process_is_retried_and_reconnects_to_its_running_cluster_job(
    user_airflow: UserAirflow, shared_cluster: SharedCluster
) -> None:
    import signal

    import psutil

    services = user_airflow.services
    services.wait_for_dag(REMOTE_DAG_ID)
    run_id = str(services.api("POST", f"/dags/{REMOTE_DAG_ID}/dagRuns", json={"logical_date": None})["dag_run_id"])
    _wait(lambda: _first_epoch_done(shared_cluster, REMOTE_DAG_ID), 300, "the remote training's first epoch")
    ti_id = services.api("GET", f"/dags/{REMOTE_DAG_ID}/dagRuns/{run_id}/taskInstances/train")["id"]
    scheduler = psutil.Process(services.procs["scheduler"].pid)
    task = _wait(
        lambda: [p for p in scheduler.children(recursive=True) if _title(p) == f"airflow worker -- {ti_id}"],
        60,
        "the task process (titled 'airflow worker -- <ti id>'; its supervisor is 'airflow worker -- LocalExecutor')",
    )
    assert len(task) == 1, task
    os.kill(task[0].pid, signal.SIGKILL)  # no on_kill: what an OOM kill or a lost pod does

    state = services.wait_for_runs(REMOTE_DAG_ID, [run_id], timeout_s=900)[run_id]
    ti = dict(services.api("GET", f"/dags/{REMOTE_DAG_ID}/dagRuns/{run_id}/taskInstances/train"))
    retry_log = _task_log(services.home, REMOTE_DAG_ID, run_id, ti["try_number"])
    assert state == "success" and ti["try_number"] == 2, (state, ti, retry_log[-3000:])
    assert "Reconnecting to the driver job" in retry_log and "(RUNNING)" in retry_log, retry_log[-3000:]
    assert "Following the driver job" in retry_log and " submitted to " not in retry_log, retry_log[-3000:]
    jobs = _jobs_of(shared_cluster, REMOTE_DAG_ID)
    assert len(jobs) == 1 and jobs[0]["status"] == "SUCCEEDED", jobs  # one job for both tries
    value = services.api("GET", f"/dags/{REMOTE_DAG_ID}/dagRuns/{run_id}/taskInstances/train/xcomEntries/return_value")
    ref = ModelRef.coerce(json.loads(value["value"]) if isinstance(value["value"], str) else value["value"])
    assert ref.metrics["epochs"] == 60 and open_store(user_airflow.store_root).exists(ref.weights_uri)


def _title(proc: Any) -> str:
    try:
        return " ".join(proc.cmdline()).strip()
    except Exception:  # gone meanwhile
        return ""


def _status_of(shared_cluster: SharedCluster, dag_id: str, submission: str) -> str:
    return str(next(j["status"] for j in _jobs_of(shared_cluster, dag_id) if j["submission_id"] == submission))
