"""Client side: find, start (embedded), attach to, inspect and stop the shared cluster."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.cluster import procs
from airflow_bigdata_ai.cluster.config import (
    ClusterConfig,
    ClusterEndpoint,
    ClusterUnavailable,
    StatePaths,
    new_token,
    read_json,
    read_token,
    remove_scratch,
    write_json_atomic,
    write_token,
)
from airflow_bigdata_ai.cluster.guard import ClusterLost, bound_spark_connect_retries, guard_stage
from airflow_bigdata_ai.cluster.ray_driver import reload_ray_auth_config, route_ray_logging
from airflow_bigdata_ai.cluster.ray_loopback import pin_if_loopback
from airflow_bigdata_ai.cluster.service import port_open

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


# -- liveness -----------------------------------------------------------------------------------------
def _hostport(address: str) -> tuple[str, int]:
    address = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


def _spark_connect_hostport(endpoint: ClusterEndpoint) -> tuple[str, int]:
    host, port = _hostport(endpoint.spark_connect_url)
    return ("127.0.0.1" if host == "localhost" else host), port


def _probe(endpoint: ClusterEndpoint, check_pid: bool) -> str | None:
    """None when the endpoint answers, else what failed (naming the endpoint)."""
    if check_pid and not procs.is_alive(endpoint.pid, endpoint.pid_create_time or None):
        return f"service process {endpoint.pid} is gone (endpoint {endpoint.spark_connect_url})"
    host, port = _spark_connect_hostport(endpoint)
    if not port_open(host, port):
        return f"Spark Connect endpoint {endpoint.spark_connect_url} is not accepting connections"
    host, port = _hostport(endpoint.ray_address)
    if not port_open(host, port):
        return f"Ray GCS {endpoint.ray_address} is not accepting connections"
    return None


def _read_endpoint(paths: StatePaths) -> ClusterEndpoint | None:
    data = read_json(paths.endpoint)
    if not data:
        return None
    try:
        return ClusterEndpoint.from_dict(data)
    except TypeError:
        return None


def _touch(path: str) -> None:
    try:
        with open(path, "a"):
            pass
        os.utime(path, None)
    except OSError:
        pass


# -- starting -----------------------------------------------------------------------------------------
class _FileLock:
    def __init__(self, path: str, timeout_s: float) -> None:
        self.path, self.timeout_s = path, timeout_s
        self.fd: int | None = None

    def __enter__(self) -> _FileLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise ClusterUnavailable(f"timed out waiting for the start lock {self.path}") from None
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def _cleanup_dead(paths: StatePaths) -> list[int]:
    """Kill whatever a dead or half-dead previous service left behind (by recorded PID / session)."""
    victims: dict[int, Any] = {}
    service = read_json(paths.service) or {}
    if service.get("pid") and procs.is_alive(int(service["pid"]), service.get("create_time")):
        import psutil

        victims[int(service["pid"])] = psutil.Process(int(service["pid"]))
    if service.get("sid"):
        for proc in procs.session_members(int(service["sid"]), exclude=[os.getpid()]):
            victims[proc.pid] = proc
    for proc in procs.recorded(read_json(paths.pids) or []):
        victims[proc.pid] = proc
    victims.pop(os.getpid(), None)
    procs.terminate(victims.values(), grace_s=3.0)
    remove_scratch(paths)  # a killed service could not remove its own
    for path in (paths.endpoint, paths.service, paths.pids):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return sorted(victims)


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def _start_service(config: ClusterConfig, paths: StatePaths) -> ClusterEndpoint:
    token = config.auth_token or read_token(paths.token) or new_token()
    write_token(paths.token, token)
    write_json_atomic(paths.config, config.to_public_dict())
    cluster_id = uuid.uuid4().hex[:12]
    env = dict(os.environ)
    for name in ("RAY_AUTH_TOKEN", "SPARK_REMOTE", "RAY_ADDRESS", "PYSPARK_SUBMIT_ARGS"):
        env.pop(name, None)
    log_fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow_bigdata_ai.cluster",
                "serve",
                "--state-dir",
                paths.root,
                "--cluster-id",
                cluster_id,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd=paths.root,
        )
    finally:
        os.close(log_fd)
    log.info("started cluster service pid %s (cluster %s), log %s", proc.pid, cluster_id, paths.log)
    deadline = time.monotonic() + config.start_timeout_s
    while time.monotonic() < deadline:
        endpoint = _read_endpoint(paths)
        if endpoint is not None and endpoint.cluster_id == cluster_id:
            problem = _probe(endpoint, check_pid=True)
            if problem is None:
                _touch(paths.last_attach)
                return endpoint
        if proc.poll() is not None:
            _cleanup_dead(paths)
            raise ClusterUnavailable(
                f"cluster service exited with code {proc.returncode} before publishing its endpoint; "
                f"log {paths.log}:\n{_tail(paths.log)}"
            )
        time.sleep(0.25)
    _cleanup_dead(paths)
    raise ClusterUnavailable(
        f"cluster service did not publish an endpoint within {config.start_timeout_s:.0f} s; "
        f"log {paths.log}:\n{_tail(paths.log)}"
    )


def _wait_for_starting_service(config: ClusterConfig, paths: StatePaths) -> ClusterEndpoint | None:
    """A service still starting whose starter went away (e.g. a killed task): wait for it instead of
    killing it and paying the cold start again."""
    service = read_json(paths.service) or {}
    pid, created = int(service.get("pid") or 0), service.get("create_time")
    if not pid or not procs.is_alive(pid, created):
        return None
    log.info("cluster service %s is still starting: waiting for it", pid)
    deadline = time.monotonic() + config.start_timeout_s
    while time.monotonic() < deadline and procs.is_alive(pid, created):
        endpoint = _read_endpoint(paths)
        if endpoint is not None and endpoint.pid == pid and _probe(endpoint, check_pid=True) is None:
            _touch(paths.last_attach)
            return endpoint
        time.sleep(0.25)
    return None


def ensure_cluster(config: ClusterConfig) -> ClusterEndpoint:
    """Return the running cluster's endpoint; in embedded mode start (or replace a dead) service first.

    Two callers at once produce one cluster: starts are serialised by an inter-process file lock and the
    endpoint is re-checked under it. In remote mode nothing is started: ClusterUnavailable names the
    endpoint that failed.
    """
    paths = StatePaths(config.state_dir)
    endpoint = _read_endpoint(paths)
    if config.mode == "remote":
        if endpoint is None:
            raise ClusterUnavailable(f"no shared cluster endpoint record at {paths.endpoint}")
        problem = _probe(endpoint, check_pid=False)
        if problem:
            raise ClusterUnavailable(
                f"shared cluster {endpoint.spark_connect_url} (Ray {endpoint.ray_address}, record {paths.endpoint}) "
                f"unreachable: {problem}"
            )
        _touch(paths.last_attach)
        return endpoint
    if endpoint is not None and _probe(endpoint, check_pid=True) is None:
        _touch(paths.last_attach)
        return endpoint
    paths.ensure()
    with _FileLock(paths.lock, config.start_timeout_s + 30):
        endpoint = _read_endpoint(paths)
        if endpoint is not None:
            problem = _probe(endpoint, check_pid=True)
            if problem is None:
                _touch(paths.last_attach)
                return endpoint
            log.warning("replacing dead shared cluster: %s", problem)
        else:
            adopted = _wait_for_starting_service(config, paths)
            if adopted is not None:
                return adopted
        killed = _cleanup_dead(paths)
        if killed:
            log.warning("ended %d leftover processes of a previous service", len(killed))
        return _start_service(config, paths)


def _token_for(config: ClusterConfig) -> str:
    token = config.auth_token or read_token(StatePaths(config.state_dir).token)
    if not token:
        raise ClusterUnavailable(f"no auth token for the shared cluster in {config.state_dir}")
    return token


class AttachedCluster:
    """A client's handle on the running shared cluster. ``close()`` never stops the cluster."""

    def __init__(self, config: ClusterConfig, endpoint: ClusterEndpoint) -> None:
        self.config = config
        self.endpoint = endpoint
        self._spark: SparkSession | None = None
        self._ray_initialised = False
        self._lost = False

    def __repr__(self) -> str:
        return f"AttachedCluster({self.endpoint.spark_connect_url}, ray={self.endpoint.ray_address})"

    def spark(self) -> SparkSession:
        """A Spark Connect session on the shared application (created once, then cached)."""
        if self._spark is None:
            from pyspark.sql import SparkSession

            for name in ("NO_PROXY", "no_proxy"):
                current = os.environ.get(name, "")
                if "localhost" not in current.split(","):
                    os.environ[name] = ",".join(filter(None, [current, "localhost", "127.0.0.1"]))
            url = self.endpoint.spark_connect_url_with_token(_token_for(self.config))
            self._spark = SparkSession.builder.remote(url).create()
            bound_spark_connect_retries(self._spark)
        return self._spark

    def ray(self) -> None:
        """Connect this process to the shared Ray cluster (token auth through the environment).

        Ray's own log lines then go through this process's logging, once, at their real level
        (:func:`~airflow_bigdata_ai.cluster.ray_driver.route_ray_logging`).
        """
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = _token_for(self.config)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if ray.is_initialized() and not _same_gcs_port(
            ray.get_runtime_context().gcs_address, self.endpoint.ray_address
        ):
            ray.shutdown()  # this process was connected to another cluster: switch, never run work there
        route_ray_logging()  # before ray.init, which logs its own "connecting" lines
        if not ray.is_initialized():
            reload_ray_auth_config()
            # ray.init installs its own SIGTERM handler; put the caller's back (an Airflow task runner's
            # handler is what calls on_kill), when we are in the main thread and there was one.
            in_main = threading.current_thread() is threading.main_thread()
            previous = signal.getsignal(signal.SIGTERM) if in_main else None
            pin_if_loopback(self.endpoint.ray_address)
            ray.init(address=self.endpoint.ray_address, ignore_reinit_error=True, log_to_driver=False)
            if callable(previous):
                signal.signal(signal.SIGTERM, previous)
            self._ray_initialised = True
        # Ray Data calls ray.init() itself when this process lost its connection: with no address that starts a
        # local Ray on this (Airflow worker) host and runs the job there. Pointing it here makes it fail instead.
        os.environ["RAY_ADDRESS"] = self.endpoint.ray_address
        import ray.data  # its import installs a stderr handler: route again

        route_ray_logging()

    def interrupt_tag(self, tag: str) -> None:
        """Interrupt this handle's Spark operations carrying ``tag`` (Spark Connect acts per session)."""
        if self._spark is not None:
            self._spark.interruptTag(tag)

    def close(self) -> None:
        if self._spark is not None:
            try:
                if self._lost:  # releasing the session would retry against a dead server for a minute
                    self._spark.client.close()
                else:
                    self._spark.stop()
            except Exception:
                log.debug("Spark Connect session stop failed", exc_info=True)
            self._spark = None
        if self._ray_initialised:
            self._ray_initialised = False
            if not self._lost:  # on a lost cluster ray.shutdown would wait for the dead GCS (atexit still runs)
                import ray

                ray.shutdown()
                if os.environ.get("RAY_ADDRESS") == self.endpoint.ray_address:
                    del os.environ["RAY_ADDRESS"]

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run one stage's work; if the cluster dies meanwhile, fail within a minute with :class:`ClusterLost`."""
        try:
            probe = functools.partial(_probe, self.endpoint, check_pid=False)
            with guard_stage(self.endpoint, probe, what, spark=lambda: self._spark):
                yield
        except ClusterLost:
            self._lost = True  # close() must not wait on a server that is gone
            raise

    def __enter__(self) -> AttachedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same_gcs_port(connected: str, wanted: str) -> bool:
    """Ray reports the GCS under the node's IP, the endpoint records 127.0.0.1: compare the ports."""
    return connected.rsplit(":", 1)[-1] == wanted.rsplit(":", 1)[-1]


def attach(config: ClusterConfig) -> AttachedCluster:
    """ensure_cluster + a handle whose ``spark()`` / ``ray()`` connect lazily (well under 1 s when running)."""
    return AttachedCluster(config, ensure_cluster(config))


def stop_cluster(config: ClusterConfig, timeout_s: float = 60) -> bool:
    """SIGTERM the service, wait, then end every process it started that is still alive (by PID).

    Returns True when there was a service (or leftovers) to stop.
    """
    import signal

    paths = StatePaths(config.state_dir)
    service = read_json(paths.service) or {}
    endpoint = _read_endpoint(paths)
    pid = int(service.get("pid") or (endpoint.pid if endpoint else 0) or 0)
    create_time = service.get("create_time") or (endpoint.pid_create_time if endpoint else None)
    had_service = bool(pid) and procs.is_alive(pid, create_time)
    if had_service:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not procs.wait_gone(pid, create_time, timeout_s):
            log.warning("service %s did not stop within %.0f s: SIGKILL", pid, timeout_s)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            procs.wait_gone(pid, create_time, 10)
    leftovers = _cleanup_dead(paths)
    if leftovers:
        log.info("ended %d leftover processes of the shared cluster", len(leftovers))
    return had_service or bool(leftovers)


def cluster_status(config: ClusterConfig) -> dict[str, Any]:
    """What is known about the cluster in ``config.state_dir`` (no secrets)."""
    paths = StatePaths(config.state_dir)
    endpoint = _read_endpoint(paths)
    service = read_json(paths.service) or {}
    status: dict[str, Any] = {"state_dir": paths.root, "mode": config.mode, "alive": False}
    if endpoint is None:
        starting = bool(service.get("pid")) and procs.is_alive(int(service["pid"]), service.get("create_time"))
        status["state"] = "starting" if starting else "stopped"
        if starting:
            status["pid"] = service["pid"]
        return status
    problem = _probe(endpoint, check_pid=config.mode == "embedded")
    status.update(endpoint.to_dict())
    status["alive"] = problem is None
    status["state"] = "running" if problem is None else "dead"
    if problem:
        status["problem"] = problem
    try:
        status["last_attach"] = os.path.getmtime(paths.last_attach)
    except OSError:
        pass
    return status
