"""Stage requests, the Jobs API client's errors, the retry rules and the trigger's form (no cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_bigdata_ai.cluster import ClusterUnavailable
from airflow_bigdata_ai.jobs import ClusterAuthError, ClusterJobRunner, JobsClient, StageRequest, StoreSpec
from airflow_bigdata_ai.jobs.entry import entrypoint, outcome_of
from airflow_bigdata_ai.jobs.request import decode_callable, encode_callable, submission_id, submission_prefix
from airflow_bigdata_ai.jobs.runner import StageFailed, _without_try, raise_for
from airflow_bigdata_ai.shards import open_store
from airflow_bigdata_ai.usercode import UserCallable, UserCodeError


def test_a_request_round_trips_through_json_and_names_its_files_in_the_store(tmp_path: Any) -> None:
    request = StageRequest("train", "abai-x-try1", StoreSpec(str(tmp_path)), {"a": [1, {"b": None}]}, task_key="abai-x")
    again = StageRequest.from_json(request.to_json())
    assert again == request
    assert again.request_uri == f"{tmp_path}/_jobs/abai-x-try1/request.json"
    assert again.result_uri.endswith("/_jobs/abai-x-try1/result.json")
    with pytest.raises(ValueError, match="unknown stage"):
        StageRequest("sing", "x", StoreSpec("/x"))


def test_submission_ids_are_stable_per_task_instance_and_differ_per_try() -> None:
    prefix = submission_prefix("dag", "task", "manual__2026-01-01T00:00:00+00:00", None)
    assert prefix == submission_prefix("dag", "task", "manual__2026-01-01T00:00:00+00:00", -1)
    assert prefix != submission_prefix("dag", "task", "manual__2026-01-01T00:00:00+00:00", 3)
    assert prefix != submission_prefix("dag", "task2", "manual__2026-01-01T00:00:00+00:00")
    assert submission_id(prefix, 1) != submission_id(prefix, 2) and submission_id(prefix, 2).startswith(prefix)
    assert all(c.isalnum() or c in "-_." for c in submission_id(prefix, 1))


def test_the_store_spec_and_entrypoint_hold_no_secret() -> None:
    from airflow_bigdata_ai.shards import S3Options

    options = S3Options(endpoint_url="http://127.0.0.1:9000", aws_access_key_id="AKID", aws_secret_access_key="SECRET")
    request = StageRequest("noop", "abai-n-try1", StoreSpec.of("s3://bucket/prefix", options))
    assert "SECRET" not in request.to_json() and "AKID" not in request.to_json()
    assert "SECRET" not in entrypoint(request) and request.store.credentials == "cluster"
    assert request.store.s3_options().endpoint_url == "http://127.0.0.1:9000"


def test_user_code_travels_in_the_request_by_import_path_and_by_value() -> None:
    by_path = UserCallable.of("airflow_bigdata_ai.examples.transforms:digits_float")
    assert decode_callable(json.loads(json.dumps(encode_callable(by_path)))) == by_path
    by_value = UserCallable.of(lambda x: x + 1)
    assert decode_callable(json.loads(json.dumps(encode_callable(by_value)))).load()(1) == 2


def test_a_thin_worker_finds_a_users_module_without_importing_it(tmp_path: Any) -> None:
    """check_import=False: the factory's module (which imports torch) is found and shipped, not run."""
    (tmp_path / "heavy_user_model.py").write_text("import torch\n\ndef make():\n    return torch.nn.Linear(1, 1)\n")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from airflow_bigdata_ai.usercode import UserCallable\n"
        "shipped = UserCallable.of('heavy_user_model:make', check_import=False)\n"
        "assert shipped.bundle.names == ('heavy_user_model',), shipped.bundle.names\n"
        "assert 'torch' not in sys.modules and 'heavy_user_model' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with pytest.raises(UserCodeError, match="no_such_user_module"):
        UserCallable.of("no_such_user_module:make", check_import=False)


def test_errors_a_retry_cannot_fix_are_recorded_as_such() -> None:
    assert outcome_of(UserCodeError("missing"))["retryable"] is False
    assert outcome_of(ValueError("bad setting"))["retryable"] is False
    assert outcome_of(ConnectionError("flaky"))["retryable"] is True
    with pytest.raises(StageFailed) as failed:
        raise_for(outcome_of(UserCodeError("missing module x")), "abai-s-try1")
    assert failed.value.retryable is False and "missing module x" in str(failed.value)
    assert raise_for({"status": "succeeded", "result": {"reference": {"k": 1}}}, "s") == {"reference": {"k": 1}}


def test_what_differs_between_tries_is_ignored_when_reusing_an_earlier_job() -> None:
    one = {"run": {"run_id": "r", "try_number": 1}, "tag": "abai-t-1", "x": [{"try_number": 1, "y": 2}]}
    two = {"run": {"run_id": "r", "try_number": 2}, "tag": "abai-t-2", "x": [{"try_number": 2, "y": 2}]}
    assert _without_try(one) == _without_try(two)
    assert _without_try(one) != _without_try({**two, "x": [{"y": 3}]})


class _FakeJobsAPI(BaseHTTPRequestHandler):
    """Ray's Jobs API answers as seen on the real cluster: 401 without a token, 403 with a wrong one."""

    token = "right"
    jobs: dict[str, dict[str, Any]] = {}

    def _answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        given = self.headers.get("Authorization")
        if given != f"Bearer {self.token}":
            self._answer(401 if given is None else 403, {"error": "Unauthorized: Missing or invalid token"})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorised():
            return
        name = self.path.removeprefix("/api/jobs/").strip("/")
        if not name:
            self._answer(200, list(self.jobs.values()))
        elif name in self.jobs:
            self._answer(200, self.jobs[name])
        else:
            self._answer(404, {"error": f"Job {name} does not exist"})

    def do_POST(self) -> None:
        if self._authorised():
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.jobs[body["submission_id"]] = {**body, "status": "PENDING", "start_time": len(self.jobs)}
            self._answer(200, {"submission_id": body["submission_id"]})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_api() -> Any:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeJobsAPI)
    _FakeJobsAPI.jobs = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_refused_or_missing_token_names_the_endpoint_and_says_token(fake_api: str) -> None:
    for token, said in (("wrong", "was refused"), (None, "is missing")):
        with pytest.raises(ClusterAuthError) as refused:
            JobsClient(fake_api, token).list()
        assert fake_api in str(refused.value) and "token" in str(refused.value) and said in str(refused.value)
    assert JobsClient(fake_api, "right").list() == []
    assert "right" not in repr(JobsClient(fake_api, "right"))


def test_an_unreachable_endpoint_is_named() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(ClusterUnavailable, match=url.replace(".", r"\.")):
            JobsClient(url, "x", timeout_s=2).list()


def test_a_retry_reconnects_to_a_running_job_of_its_task_instead_of_submitting_again(
    fake_api: str, tmp_path: Any
) -> None:
    runner = ClusterJobRunner(JobsClient(fake_api, "right"), open_store(str(tmp_path)))
    prefix = submission_prefix("dag", "train", "run")

    def request(try_number: int) -> StageRequest:
        return StageRequest("noop", submission_id(prefix, try_number), StoreSpec(str(tmp_path)), {}, task_key=prefix)

    first = runner.submit(request(1))
    assert runner.submit(request(2)) == first  # still running (PENDING): one job for both tries
    assert len(_FakeJobsAPI.jobs) == 1
    stopping = open_store(str(tmp_path))  # a stopped driver records it first, while Ray still says RUNNING
    stopping.write_bytes(request(1).result_uri, b'{"status": "failed", "error_type": "Stopped", "retryable": true}')
    assert runner.submit(request(2)) == submission_id(prefix, 2)  # not reconnected to a job being stopped
    del _FakeJobsAPI.jobs[submission_id(prefix, 2)]
    _FakeJobsAPI.jobs[first]["status"] = "FAILED"
    assert runner.submit(request(3)) == submission_id(prefix, 3)  # a failed job is not reused
    _FakeJobsAPI.jobs[submission_id(prefix, 3)]["status"] = "SUCCEEDED"  # and its driver recorded the result
    stopping.write_bytes(request(3).result_uri, b'{"status": "succeeded", "result": {"reference": {}}}')
    assert runner.submit(request(4)) == submission_id(prefix, 3)  # the same request succeeded: its result
    assert len(_FakeJobsAPI.jobs) == 2


def test_a_jobs_request_and_record_are_removed_once_its_outcome_is_read(fake_api: str, tmp_path: Any) -> None:
    runner = ClusterJobRunner(JobsClient(fake_api, "right"), open_store(str(tmp_path)))
    store = open_store(str(tmp_path))
    outcomes = {
        "ok": b'{"status": "succeeded", "result": {"reference": {"kind": "noop"}}}',
        "bad": b'{"status": "failed", "error_type": "ValueError", "message": "no", "retryable": false}',
    }
    for name, record in outcomes.items():
        request = StageRequest("noop", f"abai-{name}-try1", StoreSpec(str(tmp_path)), {})
        runner.submit(request)
        store.write_bytes(request.result_uri, record)
        if name == "ok":
            assert runner.result(request.submission_id, str(tmp_path)) == {"reference": {"kind": "noop"}}
        else:
            with pytest.raises(StageFailed, match="ValueError: no"):
                runner.result(request.submission_id, str(tmp_path))
    assert not (tmp_path / "_jobs").exists()  # nothing left behind, the folder included


def test_the_trigger_serialises_without_the_token_and_polls_quickly_at_first() -> None:
    from airflow_bigdata_ai.jobs.runner import quick_poll
    from airflow_bigdata_ai.triggers.cluster_job import ClusterJobTrigger

    trigger = ClusterJobTrigger(conn_id="abai", submission_id="abai-x-try1", poll_interval_s=5.0)
    path, kwargs = trigger.serialize()
    assert path == "airflow_bigdata_ai.triggers.cluster_job.ClusterJobTrigger"
    assert kwargs == {"conn_id": "abai", "submission_id": "abai-x-try1", "poll_interval_s": 5.0, "log_offset": 0}
    assert quick_poll(1.0, 5.0) == 0.2 and quick_poll(30.0, 5.0) == 5.0


def test_cluster_status_prints_a_connection_to_paste(tmp_path: Any) -> None:
    from airflow_bigdata_ai.cli import connection_env
    from airflow_bigdata_ai.cluster import ClusterConfig
    from airflow_bigdata_ai.cluster.config import StatePaths, write_token
    from airflow_bigdata_ai.connection import ConnectionSettings

    config = ClusterConfig(state_dir=str(tmp_path / "state"))
    StatePaths(config.state_dir).ensure()
    write_token(StatePaths(config.state_dir).token, "tok-123")
    status = {"alive": True, "jobs_url": "http://10.0.0.5:8265", "master": "local-cluster[2,3,3072]"}
    line = connection_env(config, status, "ray_on_spark_default", "s3://bucket/prefix")
    name, _, value = line.partition("=")
    assert name == "AIRFLOW_CONN_RAY_ON_SPARK_DEFAULT"
    conn = json.loads(value.strip("'"))
    settings = ConnectionSettings.from_parts("ray_on_spark_default", conn["host"], conn["password"], conn["extra"])
    assert settings.jobs_url == "http://10.0.0.5:8265" and settings.auth_token == "tok-123"
    assert settings.store_root == "s3://bucket/prefix" and settings.mode == "remote"


def test_a_running_driver_counts_as_activity_for_the_idle_timeout(tmp_path: Any) -> None:
    import os
    import time

    from airflow_bigdata_ai.cluster.config import StatePaths
    from airflow_bigdata_ai.jobs.entry import heartbeat

    paths = StatePaths(str(tmp_path))
    open(paths.last_attach, "w").close()
    os.utime(paths.last_attach, (1.0, 1.0))  # the last attach long ago
    stop = threading.Event()
    beat = threading.Thread(target=heartbeat, args=(str(tmp_path), stop, 0.05))
    beat.start()
    time.sleep(0.3)
    stop.set()
    beat.join(5)
    assert os.path.getmtime(paths.last_attach) > time.time() - 60


def test_a_try_whose_reconnected_job_was_stopped_by_someone_else_runs_its_own(fake_api: str, tmp_path: Any) -> None:
    """A task cleared while deferred starts its next try before the triggerer's on_kill stops the old job: that
    try reconnects, sees the job stopped, and must then run a job of its own rather than fail."""
    from types import SimpleNamespace

    from airflow_bigdata_ai.operators.train import RayTrainOperator

    runner = ClusterJobRunner(JobsClient(fake_api, "right"), open_store(str(tmp_path)))
    prefix = submission_prefix("dag", "train", "run")

    def request(try_number: int) -> StageRequest:
        return StageRequest("noop", submission_id(prefix, try_number), StoreSpec(str(tmp_path)), {}, task_key=prefix)

    first = runner.submit(request(1))
    assert runner.submit(request(2)) == first  # the race: try 2 reconnects to try 1's job
    assert runner.submit(request(2), reconnect=False) == submission_id(prefix, 2)

    op = RayTrainOperator(task_id="train", train_data={}, model_factory="pkg.mod:make")
    context: Any = {"ti": SimpleNamespace(try_number=2)}
    stopped = StageFailed("the job was stopped", "Stopped", True)
    op._submission = first
    assert op._earlier_job_was_stopped(stopped, context) and op._own_job_only  # runs its own job next
    assert not op._earlier_job_was_stopped(stopped, context)  # only once
    other = RayTrainOperator(task_id="train", train_data={}, model_factory="pkg.mod:make")
    other._submission = submission_id(prefix, 2)  # its own job stopped (on_kill of this try): a real failure
    assert not other._earlier_job_was_stopped(stopped, context)
    other._submission = first
    assert not other._earlier_job_was_stopped(StageFailed("boom", "ValueError", False), context)
