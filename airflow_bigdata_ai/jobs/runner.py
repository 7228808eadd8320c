"""Two runners behind one interface (submit, status, result, cancel): in this process, or as a cluster job.

:class:`InProcessRunner` calls the stage's driver here (the embedded mode: the task is the driver).
:class:`ClusterJobRunner` writes the request to the store, submits ``jobs.entry`` through the Jobs API under a
deterministic submission id, and reads the outcome the driver recorded. A retry of a task whose job still
runs reconnects to that job (found by the task key in the job's metadata) instead of starting a second one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.jobs.client import TERMINAL, JobsClient
from airflow_bigdata_ai.jobs.entry import entrypoint, outcome_of
from airflow_bigdata_ai.jobs.request import StageRequest

if TYPE_CHECKING:
    from airflow_bigdata_ai.cluster import AttachedCluster
    from airflow_bigdata_ai.shards import ShardStore

log = logging.getLogger(__name__)
TASK_KEY = "abai_task_key"


class StageFailed(RuntimeError):
    """The stage's driver failed; ``retryable`` says whether another try could succeed."""

    def __init__(self, message: str, error_type: str, retryable: bool) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.retryable = retryable


@dataclass(frozen=True)
class JobState:
    submission_id: str
    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED (Ray's job states)
    message: str = ""

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def raise_for(record: dict[str, Any], submission_id: str) -> dict[str, Any]:
    """The reference a driver recorded, or :class:`StageFailed` with the driver's own error."""
    if record.get("status") == "succeeded":
        return dict(record["result"])
    raise StageFailed(
        f"the driver {submission_id} failed: {record.get('error_type')}: {record.get('message')}",
        str(record.get("error_type")),
        bool(record.get("retryable", True)),
    )


class InProcessRunner:
    """The driver runs in this process, on ``attached`` (the embedded mode; the caller owns the handle)."""

    def __init__(self, attached: AttachedCluster | None, log_fn: Callable[..., None] | None = None) -> None:
        self.attached = attached
        self.log_fn = log_fn or log.info

    def run(self, request: StageRequest) -> dict[str, Any]:
        from airflow_bigdata_ai.jobs.drivers import run_stage

        try:
            return run_stage(request, self.attached, self.log_fn)
        except Exception as exc:
            outcome = outcome_of(exc)
            if outcome["retryable"]:
                raise
            raise StageFailed(f"{outcome['error_type']}: {outcome['message']}", outcome["error_type"], False) from exc


class ClusterJobRunner:
    """The driver runs on the cluster as a Ray job; ``store`` carries the request and the result."""

    def __init__(self, client: JobsClient, store: ShardStore) -> None:
        self.client = client
        self.store = store

    def running_job_of(self, task_key: str) -> str | None:
        """A job of this task instance (any try) that has not ended: the one a retry reconnects to."""
        for job in self.client.list():
            metadata = job.get("metadata") or {}
            if metadata.get(TASK_KEY) == task_key and job.get("status") not in TERMINAL:
                return str(job.get("submission_id"))
        return None

    def submit(self, request: StageRequest) -> str:
        """Start the driver (or find the one an earlier try of this task started); returns its submission id."""
        if request.task_key:
            running = self.running_job_of(request.task_key)
            if running is not None:
                log.info("Reconnecting to the running driver job %s of this task", running)
                return running
        existing = self.client.info(request.submission_id)
        if existing is not None:  # this very try submitted already (the task process was restarted)
            return request.submission_id
        self.store.write_bytes(request.request_uri, request.to_json().encode())
        metadata = {TASK_KEY: request.task_key, "abai_stage": request.stage}
        return self.client.submit(entrypoint(request), request.submission_id, metadata=metadata)

    def state(self, submission_id: str) -> JobState:
        info = self.client.info(submission_id)
        if info is None:
            return JobState(submission_id, "MISSING", f"the cluster has no job {submission_id} (restarted?)")
        return JobState(submission_id, str(info.get("status")), str(info.get("message") or ""))

    def result(self, request_or_uri: StageRequest | str, submission_id: str) -> dict[str, Any]:
        """The reference the driver recorded; a job that ended without a record fails with its log's tail."""
        uri = request_or_uri.result_uri if isinstance(request_or_uri, StageRequest) else request_or_uri
        uri = uri.replace(f"/{_submission_of(uri)}/", f"/{submission_id}/")
        if self.store.exists(uri):
            return raise_for(json.loads(self.store.read_bytes(uri)), submission_id)
        state = self.state(submission_id)
        tail = "\n".join(self.client.logs(submission_id).splitlines()[-20:])
        raise StageFailed(
            f"the driver job {submission_id} ended {state.status} without recording a result ({state.message}); "
            f"its log ends:\n{tail}",
            "DriverLost",
            True,
        )

    def cancel(self, submission_id: str) -> bool:
        return self.client.stop(submission_id)

    def wait(
        self, submission_id: str, log_fn: Callable[[str], None], poll_s: float = 1.0, timeout_s: float | None = None
    ) -> JobState:
        """Block until the job ends, handing each new line of its log to ``log_fn``."""
        offset, start = 0, time.monotonic()
        deadline = None if timeout_s is None else start + timeout_s
        while True:
            state = self.state(submission_id)
            text = self.client.logs(submission_id)
            for line in text[offset:].splitlines():
                log_fn(line)
            offset = len(text)
            if state.done or state.status == "MISSING":
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the driver job {submission_id} did not end within {timeout_s} s")
            time.sleep(quick_poll(time.monotonic() - start, poll_s))

    def run(self, request: StageRequest, log_fn: Callable[[str], None]) -> dict[str, Any]:
        submission = self.submit(request)
        self.wait(submission, log_fn)
        return self.result(request, submission)


def quick_poll(elapsed_s: float, poll_s: float) -> float:
    """Every 0.2 s in a job's first 10 s (a short stage is not made to wait a whole interval), then ``poll_s``."""
    return min(poll_s, 0.2) if elapsed_s < 10.0 else poll_s


def _submission_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 2)[-2]
