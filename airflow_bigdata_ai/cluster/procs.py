"""Process bookkeeping: find every process a service started and end them, by PID only.

A service runs in a session of its own (``start_new_session=True``), and everything it starts (the Spark
JVM, local-cluster executors, Python workers, the Ray head, raylets, ``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``...) inherits that session id even after being re-parented to init. So the
leftovers of a service are: the processes whose session id is the service's, plus the descendant PIDs
the service recorded (checked against their create time, so a recycled PID is never hit).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable

import psutil

from airflow_bigdata_ai.cluster.config import StatePaths, read_json, write_json_atomic

log = logging.getLogger("airflow_bigdata_ai.cluster.service")


def proc_key(proc: psutil.Process) -> tuple[int, float]:
    return proc.pid, proc.create_time()


def is_alive(pid: int, create_time: float | None = None) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time and abs(proc.create_time() - create_time) > 1.0:
            return False
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return False


def session_members(sid: int, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    skip = set(exclude)
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid in skip or proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except (ProcessLookupError, PermissionError, OSError):
            continue
    return found


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def recorded(entries: Iterable[dict]) -> list[psutil.Process]:
    """Processes from a ``[{pid, create_time}]`` record that are still the same processes."""
    found = []
    for entry in entries:
        try:
            proc = psutil.Process(int(entry["pid"]))
            if abs(proc.create_time() - float(entry["create_time"])) <= 1.0 and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
            continue
    return found


def terminate(procs: Iterable[psutil.Process], grace_s: float = 5.0) -> list[int]:
    """SIGTERM, wait ``grace_s``, SIGKILL whatever is left. Returns the PIDs that had to be killed."""
    procs = [p for p in procs if p.pid != os.getpid()]
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    killed = []
    for proc in alive:
        try:
            proc.send_signal(signal.SIGKILL)
            killed.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return killed


def wait_gone(pid: int, create_time: float | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(pid, create_time):
            return True
        time.sleep(0.2)
    return not is_alive(pid, create_time)


class PidRecorder(threading.Thread):
    """Keeps ``pids.json`` current so a crashed service can still be cleaned up by PID."""

    def __init__(self, paths: StatePaths, sid: int) -> None:
        super().__init__(name="pid-recorder", daemon=True)
        self.paths, self.sid = paths, sid
        self.stop_event = threading.Event()

    def record(self) -> None:
        seen: dict[int, float] = {}
        for proc in descendants(os.getpid()) + session_members(self.sid, exclude=[os.getpid()]):
            try:
                seen[proc.pid] = proc.create_time()
            except psutil.NoSuchProcess:
                continue
        previous = read_json(self.paths.pids) or []
        for entry in recorded(previous):
            seen.setdefault(entry.pid, entry.create_time())
        write_json_atomic(self.paths.pids, [{"pid": p, "create_time": c} for p, c in sorted(seen.items())])

    def run(self) -> None:
        while not self.stop_event.wait(3.0):
            try:
                self.record()
            except Exception:  # bookkeeping must never kill the service
                log.debug("pid record failed", exc_info=True)
