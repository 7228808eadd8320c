"""Shared cluster core without engines: config, sizing, state files, liveness, lock, cleanup by PID, CLI."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys

import psutil
import pytest

from airflow_bigdata_ai.cluster import (
    ClusterConfig,
    ClusterEndpoint,
    ClusterUnavailable,
    attach,
    cluster_status,
    ensure_cluster,
    stop_cluster,
)
from airflow_bigdata_ai.cluster.client import _FileLock
from airflow_bigdata_ai.cluster.config import (
    RAY_TEMP_ROOT_MAX,
    StatePaths,
    prepare_scratch,
    read_json,
    remove_scratch,
    write_json_atomic,
    write_token,
)
from airflow_bigdata_ai.cluster.service import (
    _Py4JRetryFilter,
    _scratch_conf,
    _spark_home_in,
    embedded_layout,
    free_port,
)


def _dead_endpoint(**overrides) -> ClusterEndpoint:
    data = dict(
        spark_connect_url=f"sc://localhost:{free_port()}",
        ray_address=f"127.0.0.1:{free_port()}",
        spark_ui_url="",
        ray_dashboard_url="",
        pid=2**22 + 11,
        started_at="2026-01-01T00:00:00+00:00",
        master="local-cluster[2,3,3072]",
        versions={},
        cluster_id="c0ffee",
    )
    data.update(overrides)
    return ClusterEndpoint(**data)


def test_config_defaults_and_token_hidden(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_BIGDATA_AI_STATE_DIR", str(tmp_path / "s"))
    config = ClusterConfig(auth_token="sekrit-token-value")
    assert config.state_dir == str(tmp_path / "s")
    assert config.master == "embedded" and config.mode == "embedded"
    assert config.ray_num_cpus_worker_node == 2 and config.idle_timeout_s == 3600.0
    assert "sekrit" not in repr(config) and "sekrit" not in json.dumps(config.to_public_dict())
    assert ClusterConfig.from_dict({**config.to_public_dict(), "unknown": 1}).state_dir == config.state_dir
    with pytest.raises(ValueError, match="mode"):
        ClusterConfig(state_dir=str(tmp_path), mode="sometimes")


def test_embedded_layout_leaves_spark_slots():
    master, max_workers = embedded_layout(ClusterConfig(state_dir="/tmp/x"))
    executors, cores, memory = (int(v) for v in master[len("local-cluster[") : -1].split(","))
    assert executors >= 2 and cores == 3 and memory >= 1024
    # one Ray worker node (2 CPUs) per executor leaves one Spark task slot on each
    assert max_workers == executors


def test_endpoint_round_trip_and_token_url():
    endpoint = _dead_endpoint()
    assert ClusterEndpoint.from_dict(json.loads(json.dumps(endpoint.to_dict()))) == endpoint
    assert endpoint.spark_connect_url_with_token("abc").endswith("/;token=abc")


def test_atomic_json_and_token_modes(tmp_path):
    paths = StatePaths(str(tmp_path / "state"))
    paths.ensure()
    assert stat.S_IMODE(os.stat(paths.root).st_mode) == 0o700
    write_token(paths.token, "t0ken")
    assert stat.S_IMODE(os.stat(paths.token).st_mode) == 0o600
    write_json_atomic(paths.endpoint, {"a": 1})
    assert read_json(paths.endpoint) == {"a": 1}
    assert [n for n in os.listdir(paths.root) if n.endswith(".tmp")] == []


def test_remote_mode_names_the_failing_endpoint(tmp_path):
    with pytest.raises(ClusterUnavailable, match="no shared cluster endpoint record"):
        ensure_cluster(ClusterConfig(state_dir=str(tmp_path / "none"), mode="remote"))
    paths = StatePaths(str(tmp_path / "dead"))
    paths.ensure()
    endpoint = _dead_endpoint()
    write_json_atomic(paths.endpoint, endpoint.to_dict())
    with pytest.raises(ClusterUnavailable, match=endpoint.spark_connect_url):
        attach(ClusterConfig(state_dir=paths.root, mode="remote"))
    status = cluster_status(ClusterConfig(state_dir=paths.root))
    assert status["state"] == "dead" and not status["alive"]


def test_status_of_empty_state_dir(tmp_path):
    status = cluster_status(ClusterConfig(state_dir=str(tmp_path)))
    assert status == {"state_dir": str(tmp_path), "mode": "embedded", "alive": False, "state": "stopped"}
    assert stop_cluster(ClusterConfig(state_dir=str(tmp_path))) is False


def test_file_lock_excludes_a_second_holder(tmp_path):
    path = str(tmp_path / "lock")
    with _FileLock(path, 5):
        code = (
            "import sys; from airflow_bigdata_ai.cluster.client import _FileLock\n"
            "from airflow_bigdata_ai.cluster import ClusterUnavailable\n"
            "try:\n    _FileLock(sys.argv[1], 0.5).__enter__()\nexcept ClusterUnavailable:\n    print('BLOCKED')\n"
        )
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60)
        assert "BLOCKED" in out.stdout, out.stderr
    with _FileLock(path, 0.5):
        pass


def test_stop_kills_leftovers_of_a_dead_service_by_pid(tmp_path):
    """A 'service' whose session still holds a process (like an orphaned ray::DashboardAgent) is cleaned up."""
    paths = StatePaths(str(tmp_path / "state"))
    paths.ensure()
    # a session leader that starts an orphan in its session, then exits
    leader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; p = subprocess.Popen(['sleep', '300']); print(p.pid, flush=True)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    orphan_pid = int(leader.stdout.readline())
    leader.wait(timeout=30)
    orphan = psutil.Process(orphan_pid)
    assert os.getsid(orphan_pid) == leader.pid
    write_json_atomic(paths.service, {"pid": leader.pid, "create_time": 0, "sid": leader.pid, "cluster_id": "x"})
    write_json_atomic(paths.endpoint, _dead_endpoint(pid=leader.pid).to_dict())
    assert stop_cluster(ClusterConfig(state_dir=paths.root), timeout_s=5) is True
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    assert not os.path.exists(paths.endpoint) and not os.path.exists(paths.service)


def test_cluster_core_imports_no_airflow_and_no_engine():
    code = (
        "import sys, json, airflow_bigdata_ai.cluster, airflow_bigdata_ai.cli\n"
        "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules} & {'airflow', 'pyspark', 'ray', 'torch'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_cli_status_and_stop_on_empty_state(tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "airflow_bigdata_ai", "cluster", *args, "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    status = cli("status")
    assert status.returncode == 3 and json.loads(status.stdout)["state"] == "stopped"
    stop = cli("stop")
    assert stop.returncode == 0 and "not running" in stop.stdout
    remote = cli("start", "--mode", "remote")
    assert remote.returncode == 1 and "no shared cluster endpoint record" in remote.stderr


# -- what a cluster leaves on disk (issue 13, defects 9, 15 and 16) -------------------------------------------


def test_scratch_holds_ray_temp_through_a_short_link_and_goes_at_stop(tmp_path):
    deep = StatePaths(str(tmp_path / ("d" * 40) / "clusters" / "ray_on_spark_default"))
    deep.ensure()
    root = prepare_scratch(deep)
    # Ray's sockets sit 85 bytes below its temp root and the kernel allows 107: a deep state dir gets a link
    assert root == deep.ray_temp_link and len(root.encode()) <= RAY_TEMP_ROOT_MAX
    assert os.path.realpath(root) == os.path.realpath(deep.ray_temp)
    for directory in (deep.ray_temp, deep.spark_home, deep.spark_local, deep.java_tmp):
        assert os.path.isdir(directory) and directory.startswith(deep.scratch + os.sep)
    open(os.path.join(root, "ray-1-x.lock"), "w").close()  # written through the link, lands in the state dir
    assert os.listdir(deep.ray_temp) == ["ray-1-x.lock"]
    assert prepare_scratch(deep) == root and os.listdir(deep.ray_temp) == []  # a predecessor's scratch goes
    assert remove_scratch(deep) is True
    assert not os.path.lexists(root) and not os.path.exists(deep.scratch)
    assert remove_scratch(deep) is False

    short = StatePaths("/tmp/s")  # short enough: no link (path only, nothing created)
    assert short.ray_temp_root() == "/tmp/s/scratch/ray"


def test_remove_scratch_leaves_a_link_it_does_not_own(tmp_path):
    paths = StatePaths(str(tmp_path / "state"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, paths.ray_temp_link)
    try:
        remove_scratch(paths)
        assert os.path.islink(paths.ray_temp_link)
    finally:
        os.unlink(paths.ray_temp_link)


def test_spark_home_links_the_install_but_not_its_work_dir(tmp_path):
    import pyspark

    paths = StatePaths(str(tmp_path / "state"))
    paths.ensure()
    prepare_scratch(paths)
    try:
        home = _spark_home_in(paths)
        installed = os.path.dirname(pyspark.__file__)
        for name in ("bin", "jars", "python"):
            assert os.path.realpath(os.path.join(home, name)) == os.path.realpath(os.path.join(installed, name))
        # executors of a local-cluster master write into $SPARK_HOME/work: that must be the scratch dir
        assert not os.path.exists(os.path.join(home, "work"))
    finally:
        remove_scratch(paths)


def test_scratch_conf_keeps_the_users_java_options(tmp_path):
    paths = StatePaths(str(tmp_path))
    conf = _scratch_conf(paths, {"spark.executor.extraJavaOptions": "-Dx=1", "spark.foo": "bar"}, executors=True)
    assert conf["spark.driver.extraJavaOptions"] == f"-Djava.io.tmpdir={paths.java_tmp}"
    assert conf["spark.executor.extraJavaOptions"] == f"-Djava.io.tmpdir={paths.java_tmp} -Dx=1"
    assert conf["spark.foo"] == "bar"
    remote = _scratch_conf(paths, {}, executors=False)  # executors on other hosts keep their own temp dir
    assert "spark.executor.extraJavaOptions" not in remote


def _record(level: int, msg: str, pathname: str) -> logging.LogRecord:
    return logging.LogRecord("root", level, pathname, 1040, msg, None, None)


def test_py4j_send_notes_are_dropped_but_other_records_pass():
    import py4j.java_gateway

    gateway = py4j.java_gateway.__file__
    keep = _Py4JRetryFilter().filter
    assert not keep(_record(logging.INFO, "Exception while sending command.", gateway))  # resent, then fine
    # not resent (a reply lost to a reset connection): the caller gets a Py4JError, py4j's record is noise
    assert not keep(_record(logging.ERROR, "Exception while sending command.", gateway))
    assert keep(_record(logging.ERROR, "Exception while sending command.", "/srv/mine/app.py"))
    assert keep(_record(logging.INFO, "Exception while sending command.", "/srv/mine/app.py"))
    assert keep(_record(logging.INFO, "something else", gateway))


def test_service_logging_drops_py4j_retry_traceback():
    code = (
        "import logging, py4j.java_gateway as g\n"
        "from airflow_bigdata_ai.cluster.service import _setup_logging\n"
        "_setup_logging('t')\n"
        "try:\n    raise ConnectionResetError(104, 'Connection reset by peer')\n"
        "except OSError:\n"
        "    exec(compile('logging.info(\"Exception while sending command.\", exc_info=True)', g.__file__, 'exec'))\n"
        "    exec(compile('logging.exception(\"Exception while sending command.\")', g.__file__, 'exec'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Exception while sending command." not in out.stdout and "Traceback" not in out.stdout, out.stdout
