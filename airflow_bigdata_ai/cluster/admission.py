"""Admission control on the shared Ray cluster: a job gets all the CPUs it needs, or waits its turn.

Why: Ray schedules each task and actor on its own. Two trainings started together each got their trainer
workers, and then neither had a CPU left for the Ray Data tasks that feed those workers: both waited
forever ("Cluster resources are not enough to run any task"). Ray Train keeps only its *own* trainer out of
Ray Data's budget, so concurrent jobs do not see each other (ray #41603).

How: every job that runs on Ray states its whole need up front (trainer workers plus the CPUs its data
reading may use; inference actors plus their input tasks) and asks one queue, a detached named actor that
lives in the cluster. The queue grants in arrival order, and only while the granted needs fit the cluster's
capacity (its CPUs once fully scaled up), so a job never starts with part of what it needs and never
starves another; each job's Ray Data is capped at the CPUs it asked for. A job that can never fit is refused
at once, with the figures. Holders and waiters renew a lease; a job whose process died (SIGKILL) loses its
place when the lease runs out, so a dead task cannot block the cluster. A lease that ran out while the job's
Ray driver is still alive is kept: on an overloaded machine renewals time out (seen with 8 jobs on 2 cores),
and expiring a live holder handed its CPUs to the next job while the first still used them, which
overloaded the machine further until nothing progressed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

QUEUE_NAME = "admission"
NAMESPACE = "airflow_bigdata_ai"
LEASE_S = 60.0
POLL_S = 1.0
LOG_EVERY_S = 30.0


class AdmissionRefused(ValueError):
    """The job needs more than the cluster can ever give: waiting cannot help (not retried)."""


class AdmissionTimeout(TimeoutError):
    """The job waited longer than its admission timeout (a retry may find the cluster free)."""


@dataclass
class _Entry:
    job_id: str
    cpus: float
    label: str
    since: float
    renewed: float
    granted: bool = False
    driver: str | None = None  # the Ray job id of the process that asked


class AdmissionQueue:
    """First come, first served over a CPU capacity, with leases. Plain Python: the actor wraps it.

    ``live_drivers`` returns the Ray job ids whose driver is alive (None when that cannot be told); an entry
    whose lease ran out is dropped only if its driver is not among them.
    """

    def __init__(
        self,
        capacity_cpus: float,
        lease_s: float = LEASE_S,
        clock: Callable[[], float] = time.monotonic,
        live_drivers: Callable[[], set[str] | None] | None = None,
    ):
        self.capacity = float(capacity_cpus)
        self.lease_s = lease_s
        self.clock = clock
        self.live_drivers = live_drivers
        self.entries: dict[str, _Entry] = {}  # insertion order is arrival order

    def request(self, job_id: str, cpus: float, label: str, driver: str | None = None) -> dict[str, Any]:
        """Queue ``job_id``. An entry of another attempt of the same task (same ``label``) is dropped first:
        a new attempt means the old one's process is gone (SIGKILL, lost worker), and its place would
        otherwise block the retry until its lease ran out."""
        if cpus > self.capacity:
            return {"state": "refused", "capacity": self.capacity, "cpus": cpus}
        now = self.clock()
        replaced = []
        if job_id not in self.entries:
            replaced = [j for j, e in self.entries.items() if e.label == label]
            for old in replaced:
                del self.entries[old]
            self.entries[job_id] = _Entry(job_id, float(cpus), label, now, now, driver=driver)
        return {**self.poll(job_id), "replaced": replaced}

    def poll(self, job_id: str) -> dict[str, Any]:
        """Renew ``job_id``'s lease, grant what fits, and say where ``job_id`` stands."""
        now = self.clock()
        entry = self.entries.get(job_id)
        if entry is not None:
            entry.renewed = now
        self._expire(now)
        self._grant()
        return self._status(job_id, now)

    def release(self, job_id: str) -> None:
        self.entries.pop(job_id, None)
        self._grant()

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        self._expire(now)
        return {
            "capacity": self.capacity,
            "in_use": self._in_use(),
            "granted": [e.label for e in self.entries.values() if e.granted],
            "waiting": [e.label for e in self.entries.values() if not e.granted],
        }

    def _in_use(self) -> float:
        return sum(e.cpus for e in self.entries.values() if e.granted)

    def _expire(self, now: float) -> None:
        stale = [e for e in self.entries.values() if now - e.renewed > self.lease_s]
        if not stale:
            return
        live = self._live_drivers()
        for entry in stale:
            if live is not None and entry.driver in live:
                entry.renewed = now  # slow to renew, not dead: keep its place and its CPUs
            else:
                del self.entries[entry.job_id]

    def _live_drivers(self) -> set[str] | None:
        if self.live_drivers is None:
            return None
        try:
            return self.live_drivers()
        except Exception:  # cannot tell: the lease decides, as without a liveness check
            log.debug("cannot list the live Ray drivers", exc_info=True)
            return None

    def _grant(self) -> None:
        """Strict arrival order: a waiting job is never overtaken, so a large job cannot starve."""
        free = self.capacity - self._in_use()
        for entry in self.entries.values():
            if entry.granted:
                continue
            if entry.cpus > free:
                return
            entry.granted, free = True, free - entry.cpus

    def _status(self, job_id: str, now: float) -> dict[str, Any]:
        entry = self.entries.get(job_id)
        if entry is None:
            return {"state": "unknown"}
        waiting = [e for e in self.entries.values() if not e.granted]
        return {
            "state": "granted" if entry.granted else "waiting",
            "ahead": 0 if entry.granted else waiting.index(entry),
            "waited_s": now - entry.since,
            "in_use": self._in_use(),
            "capacity": self.capacity,
            "holders": [e.label for e in self.entries.values() if e.granted and e.job_id != job_id],
        }


_ACTOR_CLASS: Any = None


def live_ray_drivers() -> set[str]:
    """Ray job ids whose driver is connected, from the GCS job table (runs inside the queue actor)."""
    from ray._private import state

    return {job["JobID"] for job in state.jobs() if not job["IsDead"]}


class _ClusterAdmissionQueue(AdmissionQueue):
    """The queue as the cluster runs it: a lease outlives a stall while its driver is alive."""

    def __init__(self, capacity_cpus: float) -> None:
        super().__init__(capacity_cpus, live_drivers=live_ray_drivers)


def _actor_class() -> Any:
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        _ACTOR_CLASS = ray.remote(num_cpus=0, max_restarts=-1)(_ClusterAdmissionQueue)
    return _ACTOR_CLASS


def admission_queue(capacity_cpus: float | None = None) -> Any:
    """The cluster's queue actor; created on first use. The cluster service creates it with the cluster's
    full capacity; on a plain Ray cluster (a notebook) the CPUs it has now are its capacity."""
    import ray

    try:
        return ray.get_actor(QUEUE_NAME, namespace=NAMESPACE)
    except ValueError:
        pass
    capacity = capacity_cpus if capacity_cpus is not None else float(ray.cluster_resources().get("CPU", 0.0))
    return (
        _actor_class()
        .options(name=QUEUE_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True)
        .remote(capacity)
    )


class _Lease(threading.Thread):
    """Renews a granted job's lease while it runs, so only a dead process loses its place."""

    def __init__(self, queue: Any, job_id: str) -> None:
        super().__init__(name=f"admission-lease-{job_id}", daemon=True)
        self.queue, self.job_id, self.done = queue, job_id, threading.Event()

    def run(self) -> None:
        import ray

        while not self.done.wait(LEASE_S / 4):
            try:
                ray.get(self.queue.poll.remote(self.job_id), timeout=LEASE_S / 2)
            except Exception:  # the cluster is going away: the job itself will fail and say so
                log.debug("admission lease renewal failed", exc_info=True)


def _describe_wait(what: str, cpus: float, status: dict[str, Any], timeout_s: float) -> str:
    holders = ", ".join(status.get("holders") or []) or "none"
    return (
        f"waiting for the shared cluster: {what} needs {cpus:g} CPUs; {status['in_use']:g} of "
        f"{status['capacity']:g} CPUs are held by other jobs ({holders}); {status['ahead']} job(s) ahead in the "
        f"queue; waited {status['waited_s']:.0f} s of at most {timeout_s:.0f} s"
    )


@contextmanager
def admitted(
    cpus: float, label: str, what: str, timeout_s: float, say: Callable[[str], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Hold ``cpus`` of the shared Ray cluster for the body; wait in the cluster's queue until they are free.

    ``label`` names the job for others' logs (e.g. ``dag.task run``), ``what`` says what the CPUs are for;
    ``say`` (default: this module's logger) reports the wait, which the task log then shows.
    Raises :class:`AdmissionRefused` if the cluster can never give ``cpus``, :class:`AdmissionTimeout` after
    ``timeout_s`` of waiting. Requires a connected Ray.
    """
    import ray

    say = say or log.info
    queue = admission_queue()
    job_id = f"{label}#{uuid.uuid4().hex[:8]}"
    driver = ray.get_runtime_context().get_job_id()
    status = ray.get(queue.request.remote(job_id, cpus, label, driver))
    if status["state"] == "refused":
        raise AdmissionRefused(
            f"{what} needs {cpus:g} CPUs but the shared cluster has at most {status['capacity']:g} "
            "(its Ray worker nodes fully scaled up): ask for fewer workers or CPUs, or give the cluster more"
        )
    if status.get("replaced"):
        say(f"took over the shared cluster's queue place of an earlier attempt of {label} (its process is gone)")
    lease = _Lease(queue, job_id)
    try:
        started = next_log = time.monotonic()
        while status["state"] != "granted":
            if status["state"] == "unknown":  # our lease ran out and the queue saw no live driver: queue again
                status = ray.get(queue.request.remote(job_id, cpus, label, driver))
                continue
            now = time.monotonic()
            if now - started > timeout_s:
                raise AdmissionTimeout(_describe_wait(what, cpus, status, timeout_s) + ": giving up")
            if now >= next_log:
                say(_describe_wait(what, cpus, status, timeout_s))
                next_log = now + LOG_EVERY_S
            time.sleep(POLL_S)
            status = ray.get(queue.poll.remote(job_id))
        waited = time.monotonic() - started
        if waited >= POLL_S:
            say(f"admitted to the shared cluster after {waited:.0f} s: {what}, {cpus:g} CPUs")
        lease.start()
        yield status
    finally:
        lease.done.set()
        try:
            ray.get(queue.release.remote(job_id), timeout=30)
        except Exception:  # the lease runs out by itself
            log.debug("admission release failed", exc_info=True)
