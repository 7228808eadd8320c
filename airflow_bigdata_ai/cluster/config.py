"""Configuration, endpoint record and on-disk state of the shared cluster (no Airflow, no engines).

State directory layout (directory mode 0700):

- ``token``          the cluster's auth token, mode 0600 (never logged, never on a command line)
- ``config.json``    the ClusterConfig the service was started with (without the token)
- ``service.json``   pid, create time and session id of the service process (written first thing by the service)
- ``pids.json``      the service's descendant processes, refreshed periodically (used to clean up after a crash)
- ``endpoint.json``  the published ClusterEndpoint (written atomically once both engines are up)
- ``last_attach``    touched by every attach (the idle timeout counts from its mtime)
- ``service.log``    the service's stdout/stderr
- ``lock``           inter-process lock serialising starts
- ``scratch/``       what the running cluster writes and nobody needs after it stops, removed at stop (and at
  the next start, after a crash): ``ray/`` Ray's temp root (sessions, sockets, spill), ``spark-home/`` the
  Spark home the JVM sees (links into pyspark; its ``work/`` holds the executors' work directories, which
  Spark would otherwise write into the installed pyspark), ``spark-local/`` (``spark.local.dir``) and
  ``tmp/`` (the JVMs' ``java.io.tmpdir``)
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ENV_STATE_DIR = "AIRFLOW_BIGDATA_AI_STATE_DIR"
ENV_HOME = "AIRFLOW_BIGDATA_AI_HOME"
# set by the service for its Ray processes: how a driver job on the cluster finds the cluster it runs on
ENV_CLUSTER_STATE_DIR = "AIRFLOW_BIGDATA_AI_CLUSTER_STATE_DIR"
DEFAULT_CLUSTER_NAME = "ray_on_spark_default"
EXECUTOR_CORES_CONF = "spark.airflow_bigdata_ai.cores"
"""Spark conf with the cores the executors really have. The embedded cluster sets it to this machine's
cores (it has more task slots than cores, so Ray worker nodes can hold slots); for another master, set it
in ``spark_conf``. Preprocessing runs one task per core when it is known."""


# Ray puts AF_UNIX sockets at <temp root>/ray-<port>-<id>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store:
# 85 bytes after the root, and the kernel allows 107. A longer root goes through a short link in /tmp.
RAY_TEMP_ROOT_MAX = 22


class ClusterUnavailable(RuntimeError):
    """The shared cluster is not reachable (remote mode) or could not be started (embedded mode)."""


def state_root() -> str:
    """Home of everything the provider keeps locally: ``$AIRFLOW_BIGDATA_AI_HOME`` or ~/.cache/airflow-bigdata-ai."""
    return os.environ.get(ENV_HOME) or os.path.join(os.path.expanduser("~"), ".cache", "airflow-bigdata-ai")


def default_state_dir(name: str = DEFAULT_CLUSTER_NAME) -> str:
    """The state directory of cluster ``name`` (the CLI and the default connection share ``ray_on_spark_default``)."""
    env = os.environ.get(ENV_STATE_DIR)
    if env and name == DEFAULT_CLUSTER_NAME:
        return env
    return os.path.join(state_root(), "clusters", name)


@dataclass(frozen=True)
class ClusterConfig:
    """How to find (and, in embedded mode, start) the shared Spark application hosting Ray.

    ``master="embedded"`` means a Spark ``local-cluster[...]`` sized from this machine; otherwise any Spark
    master URL (``spark://``, ``yarn``, ``k8s://``). ``mode="remote"`` never starts anything: it only
    attaches to the endpoint published in ``state_dir`` and names the endpoint that failed.
    """

    state_dir: str = field(default_factory=default_state_dir)
    master: str = "embedded"
    mode: str = "embedded"
    ray_max_worker_nodes: int | None = None
    ray_num_cpus_worker_node: int = 2
    idle_timeout_s: float = 3600.0
    auth_token: str | None = None
    spark_conf: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 600.0  # a cold start takes ~40 s on an idle 2-core box, minutes on a loaded one
    # Additions beyond the agreed API (defaults keep the agreed behaviour):
    ray_min_worker_nodes: int = 0
    # Ray worker nodes stay up this long when idle. The embedded layout leaves Spark a task slot per executor
    # even with every Ray node up, so a warm node costs memory, not Spark capacity; scaling back up cost each
    # training or inference task 10-25 s (Ray on Spark starts one node per 10 s).
    ray_autoscale_idle_timeout_minutes: float = 3.0
    # Where Airflow workers on other hosts reach the cluster: the Jobs API (Ray's dashboard) listens on
    # ``bind_address``; every other server stays on loopback (drivers run on the cluster). Fixed ports (0 = a
    # free one) keep a connection valid across restarts of the service.
    bind_address: str = "127.0.0.1"
    jobs_port: int = 0
    spark_connect_port: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("embedded", "remote"):
            raise ValueError(f"mode must be 'embedded' or 'remote', not {self.mode!r}")
        if not self.state_dir:
            object.__setattr__(self, "state_dir", default_state_dir())
        object.__setattr__(self, "state_dir", os.path.abspath(os.path.expanduser(self.state_dir)))

    def __repr__(self) -> str:  # never show the token
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown.get("auth_token"):
            shown["auth_token"] = "***"
        return "ClusterConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def to_public_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("auth_token", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class ClusterEndpoint:
    """The record a running service publishes in ``state_dir/endpoint.json`` (no secrets inside)."""

    spark_connect_url: str
    ray_address: str
    spark_ui_url: str
    ray_dashboard_url: str
    pid: int
    started_at: str
    master: str
    versions: dict[str, str]
    cluster_id: str
    pid_create_time: float = 0.0
    spark_connect_port: int = 0
    jobs_url: str = ""  # Ray's Jobs API (the dashboard) on the bind address: what other hosts connect to

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterEndpoint:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def spark_connect_url_with_token(self, token: str) -> str:
        return f"{self.spark_connect_url.rstrip('/')}/;token={token}"


class StatePaths:
    def __init__(self, state_dir: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(state_dir))
        self.token = os.path.join(self.root, "token")
        self.config = os.path.join(self.root, "config.json")
        self.service = os.path.join(self.root, "service.json")
        self.pids = os.path.join(self.root, "pids.json")
        self.endpoint = os.path.join(self.root, "endpoint.json")
        self.last_attach = os.path.join(self.root, "last_attach")
        self.log = os.path.join(self.root, "service.log")
        self.lock = os.path.join(self.root, "lock")
        self.scratch = os.path.join(self.root, "scratch")
        self.ray_temp = os.path.join(self.scratch, "ray")
        self.spark_home = os.path.join(self.scratch, "spark-home")
        self.spark_local = os.path.join(self.scratch, "spark-local")
        self.java_tmp = os.path.join(self.scratch, "tmp")

    def ensure(self) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)

    @property
    def ray_temp_link(self) -> str:
        """A short, per-state-dir name in the system temp dir for a ``ray_temp`` whose path is too long."""
        tmp = tempfile.gettempdir()
        base = tmp if len(tmp) <= 8 else "/tmp"
        return os.path.join(base, f"abai-r-{hashlib.sha256(self.root.encode()).hexdigest()[:8]}")

    def ray_temp_root(self) -> str:
        """The root to hand Ray: ``scratch/ray`` itself, or the short link to it (socket path limit)."""
        return self.ray_temp if len(self.ray_temp.encode()) <= RAY_TEMP_ROOT_MAX else self.ray_temp_link


def prepare_scratch(paths: StatePaths) -> str:
    """Fresh scratch directories (a crashed predecessor's are removed first); returns Ray's temp root."""
    remove_scratch(paths)
    for directory in (paths.ray_temp, paths.spark_home, paths.spark_local, paths.java_tmp):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    root = paths.ray_temp_root()
    if root != paths.ray_temp:
        os.symlink(paths.ray_temp, root)
    return root


def remove_scratch(paths: StatePaths) -> bool:
    """Remove ``scratch/`` and the short link to it (only if it is ours). True if there was anything."""
    found = False
    link = paths.ray_temp_link
    if os.path.islink(link) and os.readlink(link) == paths.ray_temp:
        os.unlink(link)
        found = True
    if os.path.isdir(paths.scratch):
        shutil.rmtree(paths.scratch, ignore_errors=True)
        found = True
    return found


def write_json_atomic(path: str, data: Any, mode: int = 0o600) -> None:
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str) -> Any | None:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_token(path: str, token: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_token(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip() or None
    except FileNotFoundError:
        return None


def new_token() -> str:
    return secrets.token_urlsafe(32)
