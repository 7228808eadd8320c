"""The cluster service: one process owning the shared Spark application (Spark Connect + Ray on Spark).

Run as ``python -m airflow_bigdata_ai.cluster serve --state-dir DIR --cluster-id ID`` (``ensure_cluster``
does this, detached, in a session of its own). Never logs the token; the token never appears on a
command line (Spark's launch arguments are visible in ``ps``), it is read from the 0600 token file.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import signal
import socket
import sys
import threading
import time
import warnings
from typing import Any
from urllib.parse import urlparse

import psutil

from airflow_bigdata_ai.cluster import procs
from airflow_bigdata_ai.cluster.catalog import catalog_conf
from airflow_bigdata_ai.cluster.config import (
    ENV_CLUSTER_STATE_DIR,
    EXECUTOR_CORES_CONF,
    ClusterConfig,
    ClusterEndpoint,
    StatePaths,
    prepare_scratch,
    read_json,
    read_token,
    remove_scratch,
    write_json_atomic,
)
from airflow_bigdata_ai.cluster.ray_loopback import dashboard_on, install_ray_shim, pin_node_ip
from airflow_bigdata_ai.cluster.ray_startup import NODE_OPTIONS, node_env

log = logging.getLogger("airflow_bigdata_ai.cluster.service")

LOOPBACK = "127.0.0.1"
APP_NAME = "airflow-bigdata-ai-shared-cluster"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def embedded_layout(config: ClusterConfig) -> tuple[str, int]:
    """``local-cluster[N,C,M]`` sized from this machine, and the default max Ray worker nodes.

    Each executor gets one core more than a Ray worker node needs, so Spark jobs always find a task
    slot even while Ray workers are up (ARCHITECTURE facts 3 and 14: ``local-cluster[2,3,3072]`` here).
    """
    ray_cpus = max(1, config.ray_num_cpus_worker_node)
    cores = ray_cpus + 1
    cpus = os.cpu_count() or 2
    executors = max(2, cpus // cores)
    total_mib = psutil.virtual_memory().total // (1024 * 1024)
    memory = int(max(1024, min(16384, total_mib * 0.25 // executors)))
    per_executor = max(1, (cores - 1) // ray_cpus)
    return f"local-cluster[{executors},{cores},{memory}]", executors * per_executor


def _is_loopback_master(master: str) -> bool:
    if master.startswith(("local", "embedded")):
        return True
    host = urlparse(master).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


class _Py4JRetryFilter(logging.Filter):
    """Drop py4j's own "Exception while sending command." records, traceback included.

    When the JVM has closed a pooled connection, py4j's ``GatewayClient.send_command`` logs that message on
    the *root* logger: at INFO when it resends the command on a fresh connection (at every start), and with
    ``logging.exception`` when it does not resend (a reply lost to a reset connection; seen during Ray on
    Spark's start, which went on unharmed). In the second case py4j also hands the caller an error reply,
    which becomes a ``Py4JError`` where the call was made: the failure is reported there, once, by the code
    that knows what it was doing, so py4j's record is noise in both cases.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "Exception while sending command."
            and os.path.basename(os.path.dirname(record.pathname)) == "py4j"
        )


def _setup_logging(cluster_id: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"%(asctime)s %(levelname)s [service {cluster_id}] %(name)s: %(message)s",
    )
    logging.getLogger().addFilter(_Py4JRetryFilter())
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # Ray on Spark's helper threads are pyspark InheritableThreads started outside a session: nothing to inherit
    warnings.filterwarnings("ignore", message="Spark session is not provided. Tags will not be inherited.")


def _spark_home_in(paths: StatePaths) -> str:
    """A Spark home of links into the installed one, so that executor work dirs land in ``scratch``.

    A ``local-cluster`` master starts its workers without a work dir (``SPARK_WORKER_DIR`` is read only by
    the standalone Worker's command line), so they use ``$SPARK_HOME/work``: inside the virtualenv.
    """
    from pyspark.find_spark_home import _find_spark_home

    installed = os.path.realpath(_find_spark_home())
    for name in os.listdir(installed):
        if name not in ("work", "__pycache__", "py.typed") and not name.endswith((".py", ".pyi")):
            os.symlink(os.path.join(installed, name), os.path.join(paths.spark_home, name))
    return paths.spark_home


def _scratch_conf(paths: StatePaths, user_conf: dict[str, str], executors: bool) -> dict[str, str]:
    """``user_conf`` plus the JVM temp dir (native libraries Spark unpacks...) in ``scratch``: the driver's,
    and the executors' when they run on this machine (``local-cluster``). The user's options are kept after
    ours. (Spark's local dirs come from ``SPARK_LOCAL_DIRS``: the conf would log a warning at every start.)"""
    java_tmp = f"-Djava.io.tmpdir={paths.java_tmp}"
    keys = ["spark.driver.extraJavaOptions"] + (["spark.executor.extraJavaOptions"] if executors else [])
    java = {key: f"{java_tmp} {user_conf[key]}" if user_conf.get(key) else java_tmp for key in keys}
    return {**user_conf, **java}


def _setup_env(token: str, loopback: bool) -> None:
    venv_bin = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[:1] != [venv_bin]:
        os.environ["PATH"] = venv_bin + os.pathsep + path
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    if loopback:
        os.environ["SPARK_LOCAL_IP"] = LOOPBACK
        # the head node's processes (dashboard agent, job supervisor, job drivers) resolve "this node" to
        # 127.0.0.1 instead of eth0 before they connect; the worker nodes are started with it forced to 1
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # a stopped driver job gets SIGTERM, then SIGKILL after this long (Ray's default 3 s): time to abort its
    # training, whose detached helpers otherwise outlive it (jobs.entry)
    os.environ.setdefault("RAY_JOB_STOP_WAIT_TIME_S", "30")
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.update(node_env())  # the head's processes; the executors get the same (worker nodes)
    for name in ("NO_PROXY", "no_proxy"):
        os.environ[name] = ",".join(filter(None, [os.environ.get(name, ""), "localhost", LOOPBACK]))
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "RAY_ADDRESS", "PYSPARK_SUBMIT_ARGS"):
        os.environ.pop(name, None)


def serve(state_dir: str, cluster_id: str) -> int:
    paths = StatePaths(state_dir)
    paths.ensure()
    _setup_logging(cluster_id)
    me = psutil.Process()
    sid = os.getsid(0)
    write_json_atomic(
        paths.service,
        {"pid": me.pid, "create_time": me.create_time(), "sid": sid, "cluster_id": cluster_id},
    )
    config = ClusterConfig.from_dict(read_json(paths.config) or {"state_dir": state_dir})
    token = read_token(paths.token)
    if not token:
        log.error("no token file in %s", paths.root)
        return 2

    stop_event = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s received: stopping", signum)
        stop_event.set()

    recorder = procs.PidRecorder(paths, sid)
    recorder.start()

    if config.master in ("embedded", "", None):
        master, default_max_workers = embedded_layout(config)
    else:
        master, default_max_workers = config.master, 0
    loopback = _is_loopback_master(master)
    _setup_env(token, loopback)
    if loopback:  # before the Spark conf copies PATH to the executors, which start Ray's worker nodes
        install_ray_shim(os.path.join(paths.root, "bin"), LOOPBACK)
    ray_temp_root = prepare_scratch(paths)
    embedded_workers = master.startswith("local-cluster")
    if embedded_workers:
        os.environ["SPARK_HOME"] = _spark_home_in(paths)
    if "spark.local.dir" not in config.spark_conf:  # the driver's and the embedded workers' local dirs
        os.environ.setdefault("SPARK_LOCAL_DIRS", paths.spark_local)
    log.info("starting Spark application on %s", master)
    t0 = time.monotonic()

    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    connect_port = config.spark_connect_port or free_port()
    public_conf: dict[str, str] = {
        "spark.app.name": APP_NAME,
        "spark.master": master,
        "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
        "spark.connect.grpc.binding.address": LOOPBACK,
        "spark.connect.grpc.binding.port": str(connect_port),
        "spark.ui.port": str(free_port()),
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": "2g",
        "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
        "spark.executorEnv.PATH": os.environ["PATH"],
        "spark.executorEnv.RAY_AUTH_MODE": "token",
        "spark.executorEnv.RAY_USAGE_STATS_ENABLED": "0",
        **{f"spark.executorEnv.{name}": value for name, value in node_env().items()},
        "spark.pyspark.python": sys.executable,
    }
    if loopback:
        public_conf.update({"spark.driver.host": LOOPBACK, "spark.driver.bindAddress": LOOPBACK})
    if embedded_workers:  # executors share this machine's cores
        public_conf[EXECUTOR_CORES_CONF] = str(os.cpu_count() or 1)
    user_conf = {k: str(v) for k, v in config.spark_conf.items()}
    user_conf.update(catalog_conf(paths.root, user_conf))
    public_conf.update(_scratch_conf(paths, user_conf, embedded_workers))
    # Secrets go into the SparkConf only after the JVM is up: launch arguments are visible in `ps`.
    secret_conf = {
        "spark.connect.authenticate.token": token,
        "spark.executorEnv.RAY_AUTH_TOKEN": token,
    }
    launch_conf = SparkConf(loadDefaults=False).setAll(list(public_conf.items()))
    SparkContext._ensure_initialized(conf=launch_conf)
    builder = SparkSession.builder
    for key, value in {**public_conf, **secret_conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    deadline = time.monotonic() + 60
    while not port_open(LOOPBACK, connect_port) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not port_open(LOOPBACK, connect_port):
        log.error("Spark Connect did not open port %s", connect_port)
        spark.stop()
        return 3
    t_spark = time.monotonic() - t0
    log.info("Spark %s up in %.1f s; Spark Connect on %s:%s", spark.version, t_spark, LOOPBACK, connect_port)

    from ray.util.spark import setup_ray_cluster, shutdown_ray_cluster

    from airflow_bigdata_ai.cluster.admission import admission_queue
    from airflow_bigdata_ai.cluster.ray_startup import poll_for_the_head_instead_of_sleeping

    poll_for_the_head_instead_of_sleeping()
    # the Jobs API (the dashboard) on the bind address; the head's other servers on loopback (this driver too)
    bind = config.bind_address or LOOPBACK
    if loopback:
        pin_node_ip(LOOPBACK)
    dashboard_on(bind)  # whatever the master: Ray on Spark would bind it to 0.0.0.0
    os.environ[ENV_CLUSTER_STATE_DIR] = paths.root  # driver jobs attach through it (jobs.entry)
    head_options: dict[str, Any] = dict(NODE_OPTIONS)
    if config.jobs_port:
        head_options["dashboard_port"] = config.jobs_port

    max_workers = config.ray_max_worker_nodes
    if max_workers is None:
        if default_max_workers:
            max_workers = default_max_workers
        else:
            total_cores = spark.sparkContext.defaultParallelism
            max_workers = max(1, total_cores // max(1, config.ray_num_cpus_worker_node) - 1)
    min_workers = min(config.ray_min_worker_nodes, max_workers)
    ray_address, _ = setup_ray_cluster(
        max_worker_nodes=max_workers,
        min_worker_nodes=min_workers,
        num_cpus_worker_node=config.ray_num_cpus_worker_node,
        num_gpus_worker_node=0,
        num_cpus_head_node=0,
        num_gpus_head_node=0,
        autoscale_idle_timeout_minutes=config.ray_autoscale_idle_timeout_minutes,
        ray_temp_root_dir=ray_temp_root,
        head_node_options=head_options,
        worker_node_options=dict(NODE_OPTIONS),
    )
    import ray.util.spark.cluster_init as cluster_init

    active = cluster_init._active_ray_cluster
    dashboard_port = getattr(active, "ray_dashboard_port", None)
    t_ray = time.monotonic() - t0 - t_spark
    log.info("Ray on Spark up in %.1f s at %s (max %s worker nodes)", t_ray, ray_address, max_workers)
    import ray

    capacity = max_workers * config.ray_num_cpus_worker_node
    ray.get(admission_queue(capacity).snapshot.remote(), timeout=config.start_timeout_s)
    log.info(
        "admission queue ready: jobs share %s CPUs (%s worker nodes x %s)",
        capacity,
        max_workers,
        config.ray_num_cpus_worker_node,
    )
    # Our handlers replace Ray's (which would only shut Ray down and re-raise). Installed after the last Ray
    # call of the start: creating the queue's actor put Ray's SIGTERM handler back, and a stop then skipped
    # our cleanup and its log line.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    import pyspark

    ui = spark.sparkContext.uiWebUrl or ""
    endpoint = ClusterEndpoint(
        spark_connect_url=f"sc://localhost:{connect_port}",
        ray_address=ray_address,
        spark_ui_url=ui.replace(f"//{socket.gethostname()}", f"//{LOOPBACK}") if ui else "",
        ray_dashboard_url=f"http://{ray_address.rsplit(':', 1)[0]}:{dashboard_port}" if dashboard_port else "",
        pid=me.pid,
        started_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        master=master,
        versions={
            "python": platform.python_version(),
            "pyspark": pyspark.__version__,
            "spark": spark.version,
            "ray": ray.__version__,
        },
        cluster_id=cluster_id,
        pid_create_time=me.create_time(),
        spark_connect_port=connect_port,
        jobs_url=f"http://{bind}:{dashboard_port}" if dashboard_port else "",
    )
    try:
        recorder.record()
    except Exception:
        log.debug("pid record failed", exc_info=True)
    write_json_atomic(paths.endpoint, endpoint.to_dict(), mode=0o644)
    log.info("endpoint published: %s", json.dumps({k: v for k, v in endpoint.to_dict().items() if k != "versions"}))
    log.info("cold start %.1f s (Spark %.1f s + Ray %.1f s)", t_spark + t_ray, t_spark, t_ray)

    last_busy = time.time()
    tracker = spark.sparkContext.statusTracker()
    while not stop_event.wait(1.0):
        if config.idle_timeout_s and config.idle_timeout_s > 0:
            # busy = a running Spark job (Spark Connect work, or Ray worker nodes, which are Spark tasks
            # and scale down when Ray is idle); otherwise idle time counts from the last attach
            try:
                if tracker.getActiveJobsIds():
                    last_busy = time.time()
            except Exception:
                log.debug("status tracker failed", exc_info=True)
            try:
                last = max(last_busy, os.path.getmtime(paths.last_attach))
            except OSError:
                last = last_busy
            if time.time() - last > config.idle_timeout_s:
                log.info("idle for more than %.0f s: stopping", config.idle_timeout_s)
                break

    log.info("shutting down")
    try:
        current = read_json(paths.endpoint) or {}
        if current.get("cluster_id") == cluster_id:
            os.unlink(paths.endpoint)
    except OSError:
        pass
    try:
        shutdown_ray_cluster()
    except Exception:
        log.warning("shutdown_ray_cluster failed", exc_info=True)
    try:
        spark.stop()
    except Exception:
        log.warning("spark.stop failed", exc_info=True)
    recorder.stop_event.set()
    leftovers = procs.descendants(me.pid) + procs.session_members(sid, exclude=[me.pid])
    killed = procs.terminate({p.pid: p for p in leftovers}.values(), grace_s=5.0)
    remove_scratch(paths)
    log.info(
        "stopped; %d leftover processes ended (%d needed SIGKILL); removed %s",
        len(leftovers),
        len(killed),
        paths.scratch,
    )
    logging.shutdown()
    return 0
