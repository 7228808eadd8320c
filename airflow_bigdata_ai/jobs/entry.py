"""A stage driver as a cluster job: ``python -m airflow_bigdata_ai.jobs <request_uri> <store spec JSON>``.

Runs on the cluster (the Jobs API starts it on the head node, beside the service): reads the request from
the store, attaches to the cluster through the service's state directory (the service puts it in
``AIRFLOW_BIGDATA_AI_CLUSTER_STATE_DIR`` for its Ray processes), runs the stage's driver and records the
outcome in ``result.json`` beside the request: ``{"status": "succeeded", "result": {...}}`` or
``{"status": "failed", "error_type", "message", "retryable"}``. The task reads that record, never the log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.cluster.config import ENV_CLUSTER_STATE_DIR, ClusterConfig, StatePaths
from airflow_bigdata_ai.jobs.request import StageRequest, StoreSpec

if TYPE_CHECKING:
    from airflow_bigdata_ai.cluster import AttachedCluster
    from airflow_bigdata_ai.shards import ShardStore

# errors that a second try meets again: bad settings, code or data (the task fails without retries)
NOT_RETRYABLE = frozenset(
    {
        "UserCodeError",
        "InvalidReference",
        "SignatureMismatch",
        "UnsignedReference",
        "ChecksumMismatch",
        "ValueError",
        "SettingsError",
        "SourceLayoutError",
        "TooManyBadRecords",
        "InferenceError",
        "AccuracyGateFailed",
        "AdmissionRefused",
    }
)

log = logging.getLogger("airflow_bigdata_ai.jobs")


def entrypoint(request: StageRequest) -> str:
    """The job's command line: the request's location and its store (no secret in either)."""
    import shlex

    spec = json.dumps(asdict(request.store), sort_keys=True)
    return f"python -m airflow_bigdata_ai.jobs {shlex.quote(request.request_uri)} {shlex.quote(spec)}"


def cluster_here() -> ClusterConfig:
    state_dir = os.environ.get(ENV_CLUSTER_STATE_DIR)
    if not state_dir:
        raise RuntimeError(f"{ENV_CLUSTER_STATE_DIR} is not set: this entry runs as a job of the cluster service")
    return ClusterConfig(state_dir=state_dir, mode="remote")


def heartbeat(state_dir: str, stop: threading.Event, every_s: float = 30.0) -> None:
    """A running driver is activity: the service's idle timeout must not stop the cluster under it."""
    path = StatePaths(state_dir).last_attach
    while not stop.wait(every_s):
        try:
            os.utime(path)
        except OSError:
            pass


def outcome_of(exc: BaseException) -> dict[str, Any]:
    name = type(exc).__name__
    retryable = name not in NOT_RETRYABLE and not any(c.__name__ in NOT_RETRYABLE for c in type(exc).__mro__)
    return {
        "status": "failed",
        "error_type": name,
        "message": str(exc),
        "retryable": retryable,
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
    }


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    request_uri, spec = argv[0], StoreSpec(**json.loads(argv[1]))
    store = spec.store_for(request_uri)
    request = StageRequest.from_json(store.read_bytes(request_uri))
    from airflow_bigdata_ai.cluster import attach
    from airflow_bigdata_ai.jobs.drivers import DriverEnv, run_stage

    cluster = cluster_here()
    stop = threading.Event()
    threading.Thread(target=heartbeat, args=(cluster.state_dir, stop), daemon=True).start()
    t0 = time.monotonic()
    log.info("driver %s (%s) started on the cluster", request.submission_id, request.stage)
    attached = attach(cluster)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: _stop_in_background(request, attached, store))
    try:
        result = run_stage(request, DriverEnv(attached, log.info, spec.store_for))
        record: dict[str, Any] = {"status": "succeeded", "result": result}
    except BaseException as exc:  # recorded for the task, then re-raised for the job's own status
        record = outcome_of(exc)
        store.write_bytes(request.result_uri, json.dumps(record).encode())
        log.error("driver %s failed after %.1f s: %s: %s", request.submission_id, time.monotonic() - t0, *_why(exc))
        raise
    finally:
        stop.set()
        attached.close()
    store.write_bytes(request.result_uri, json.dumps(record).encode())
    log.info("driver %s finished in %.1f s", request.submission_id, time.monotonic() - t0)
    return 0


def _stop_in_background(request: StageRequest, attached: AttachedCluster, store: ShardStore) -> None:
    """``ray job stop`` (a cleared task, a trigger's on_kill) sends SIGTERM: end this driver's work, then exit.

    In a thread, because the main thread sits in a Ray or Spark call: abort the trainings this driver runs
    (Ray Train's detached helpers end with them), interrupt its Spark operations (its job tag), record the stop.
    """

    def stop() -> None:
        log.info("driver %s: stop requested, ending its work on the cluster", request.submission_id)
        try:
            # first: until Ray sees the process gone the job still reads RUNNING, and a retry must not reconnect
            record = {"status": "failed", "error_type": "Stopped", "message": "the job was stopped", "retryable": True}
            store.write_bytes(request.result_uri, json.dumps(record).encode())
            if "ray" in sys.modules and sys.modules["ray"].is_initialized():
                from airflow_bigdata_ai.train.core import abort_active_trainings

                abort_active_trainings(timeout=20.0)
            if request.params.get("tag"):
                attached.interrupt_tag(request.params["tag"])
        finally:
            logging.shutdown()
            os._exit(143)

    threading.Thread(target=stop, name="stop-driver", daemon=True).start()


def _why(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)
