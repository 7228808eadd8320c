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
from airflow_bigdata_ai.jobs.request import StageRequest, job_file

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
        """Ended, or gone: a cluster restarted since has no record of it."""
        return self.status in TERMINAL or self.status == "MISSING"


def job_state(client: JobsClient, submission_id: str) -> JobState:
    info = client.info(submission_id)
    if info is None:
        return JobState(submission_id, "MISSING", f"the cluster has no job {submission_id} (restarted?)")
    return JobState(submission_id, str(info.get("status")), str(info.get("message") or ""))


def poll_job(client: JobsClient, submission_id: str, offset: int) -> tuple[JobState, list[str], int]:
    """One look at a job: its state, the log lines after ``offset``, and the new offset (the wait loop and the
    trigger both poll with it)."""
    state = job_state(client, submission_id)
    text = client.logs(submission_id)
    return state, text[offset:].splitlines(), max(offset, len(text))


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
    """The driver runs in this process, on ``attached`` (the embedded mode; the caller owns the handle).

    ``stores`` opens stores with this process's credentials (the hook's ``store_for``); default: the request's
    StoreSpec, which uses this host's own credential chain."""

    def __init__(
        self,
        attached: AttachedCluster | None,
        log_fn: Callable[..., None] | None = None,
        stores: Callable[[str | None], ShardStore] | None = None,
    ) -> None:
        self.attached = attached
        self.log_fn = log_fn or log.info
        self.stores = stores

    def run(self, request: StageRequest) -> dict[str, Any]:
        from airflow_bigdata_ai.jobs.drivers import DriverEnv, run_stage

        try:
            return run_stage(request, DriverEnv(self.attached, self.log_fn, self.stores or request.store.store_for))
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

    def earlier_job_of(self, request: StageRequest) -> tuple[str, str] | None:
        """(submission id, status) of a job an earlier try of this task instance started that a retry can use.

        The driver's own record decides, not Ray's status (a stopped driver records it first, while Ray still
        reports RUNNING): a job without a record is still working and is reconnected to; one that recorded
        success for the same request (the same data, code and settings; only the try differs) is used as it is.
        """
        mine = [j for j in self.client.list() if (j.get("metadata") or {}).get(TASK_KEY) == request.task_key]
        for job in sorted(mine, key=lambda j: int(j.get("start_time") or 0), reverse=True):
            submission, status = str(job.get("submission_id")), str(job.get("status"))
            record = self._read(job_file(request.store.root, submission, "result.json"))
            if record is None and status not in TERMINAL:
                return submission, status
            if record is not None and record.get("status") == "succeeded" and self._same_request(submission, request):
                return submission, status
        return None

    def _read(self, uri: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.store.read_bytes(uri))) if self.store.exists(uri) else None
        except (OSError, ValueError):
            return None

    def _same_request(self, submission: str, request: StageRequest) -> bool:
        earlier = self._read(job_file(request.store.root, submission, "request.json"))
        if earlier is None:
            return False
        return earlier.get("stage") == request.stage and _without_try(earlier.get("params")) == _without_try(
            request.params
        )

    def submit(self, request: StageRequest, reconnect: bool = True) -> str:
        """Start the driver (or use the one an earlier try of this task started); returns its submission id.

        ``reconnect=False``: always this try's own job (the earlier try's job it reconnected to was stopped).
        """
        if request.task_key and reconnect:
            earlier = self.earlier_job_of(request)
            if earlier is not None:
                log.info("Reconnecting to the driver job %s of this task (%s)", *earlier)
                return earlier[0]
        existing = self.client.info(request.submission_id)
        if existing is not None:  # this very try submitted already (the task process was restarted)
            return request.submission_id
        self.store.write_bytes(request.request_uri, request.to_json().encode())
        metadata = {TASK_KEY: request.task_key, "abai_stage": request.stage}
        return self.client.submit(entrypoint(request), request.submission_id, metadata=metadata)

    def state(self, submission_id: str) -> JobState:
        return job_state(self.client, submission_id)

    def result(self, submission_id: str, store_root: str) -> dict[str, Any]:
        """The reference the driver recorded; a job that ended without a record fails with its log's tail.

        Once read, the job's request and record are removed from the store (they are this attempt's alone: a
        later try submits its own), so ``_jobs/`` holds only jobs whose outcome nobody has read yet.
        """
        record = self._read(job_file(store_root, submission_id, "result.json"))
        if record is not None:
            self.forget(submission_id, store_root)
            return raise_for(record, submission_id)
        state = self.state(submission_id)
        tail = "\n".join(self.client.logs(submission_id).splitlines()[-20:])
        raise StageFailed(
            f"the driver job {submission_id} ended {state.status} without recording a result ({state.message}); "
            f"its log ends:\n{tail}",
            "DriverLost",
            True,
        )

    def forget(self, submission_id: str, store_root: str) -> None:
        """Remove the job's request and record (best effort: a leftover is only a few KB)."""
        folder = job_file(store_root, submission_id, "")
        try:
            self.store.delete_prefix(self.store.resolve(folder))
        except Exception:
            log.warning("could not remove %s", folder, exc_info=True)

    def cancel(self, submission_id: str) -> bool:
        return self.client.stop(submission_id)

    def wait(
        self, submission_id: str, log_fn: Callable[[str], None], poll_s: float = 1.0, timeout_s: float | None = None
    ) -> JobState:
        """Block until the job ends, handing each new line of its log to ``log_fn``."""
        offset, start = 0, time.monotonic()
        while True:
            state, lines, offset = poll_job(self.client, submission_id, offset)
            for line in lines:
                log_fn(line)
            if state.done:
                return state
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"the driver job {submission_id} did not end within {timeout_s} s")
            time.sleep(quick_poll(time.monotonic() - start, poll_s))

    def run(self, request: StageRequest, log_fn: Callable[[str], None]) -> dict[str, Any]:
        submission = self.submit(request)
        self.wait(submission, log_fn)
        return self.result(submission, request.store.root)


def _without_try(value: Any) -> Any:
    """A request's params without what differs between tries of one task (try numbers, the Spark job tag)."""
    if isinstance(value, dict):
        return {k: _without_try(v) for k, v in value.items() if k not in ("try_number", "tag")}
    if isinstance(value, list):
        return [_without_try(v) for v in value]
    return value


def quick_poll(elapsed_s: float, poll_s: float) -> float:
    """Every 0.2 s in a job's first 10 s (a short stage is not made to wait a whole interval), then ``poll_s``."""
    return min(poll_s, 0.2) if elapsed_s < 10.0 else poll_s
