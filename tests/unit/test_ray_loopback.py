"""The pieces that keep an embedded cluster's Ray on loopback, without a cluster."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from airflow_bigdata_ai.cluster.ray_loopback import install_ray_shim


def test_the_shim_is_first_on_path_and_runs_rays_cli_pinned(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "bin"), "/usr/bin", "/bin"]))
    bin_dir = install_ray_shim(str(tmp_path / "bin"), "127.0.0.1")
    install_ray_shim(bin_dir, "127.0.0.1")  # a restart of the service: still one entry
    assert os.environ["PATH"].split(os.pathsep)[:2] == [bin_dir, "/usr/bin"]
    shim = os.path.join(bin_dir, "ray")
    assert os.access(shim, os.X_OK)
    # Ray on Spark runs `python $(which ray) start ...`: the shim resolves localhost to loopback, not eth0
    probe = (
        "import sys, runpy; import ray.scripts.scripts as s; "
        "s.main = lambda: print(__import__('ray._private.services', fromlist=['x']).resolve_ip_for_localhost("
        "'127.0.0.1'), __import__('ray.util', fromlist=['x']).get_node_ip_address()); "
        f"sys.argv = [{shim!r}, 'start']; runpy.run_path({shim!r}, run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["127.0.0.1", "127.0.0.1"]


def _printed_by(code: str) -> list[str]:
    """What a fresh interpreter prints (the pins patch Ray process-wide, so each check gets its own)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_drivers_pin_only_for_a_loopback_gcs() -> None:
    code = (
        "import ray._private.services as s\n"
        "from airflow_bigdata_ai.cluster.ray_loopback import pin_if_loopback\n"
        "before = s.resolve_ip_for_localhost\n"
        "pin_if_loopback('10.1.2.3:6379'); print(s.resolve_ip_for_localhost is before)\n"
        "pin_if_loopback('127.0.0.1:6379'); print(s.resolve_ip_for_localhost('localhost'), s.get_node_ip_address())\n"
        "print(s.resolve_ip_for_localhost('10.1.2.3'))\n"
    )
    assert _printed_by(code) == ["True", "127.0.0.1", "127.0.0.1", "10.1.2.3"]


def test_pinning_twice_wraps_rays_own_function_once() -> None:
    """The service pins its driver, and a client in the same process pins again."""
    code = (
        "import ray._private.services as s\n"
        "from airflow_bigdata_ai.cluster.ray_loopback import pin_node_ip\n"
        "original = s.resolve_ip_for_localhost\n"
        "pin_node_ip('127.0.0.1'); pin_node_ip('127.0.0.1')\n"
        "print(s.resolve_ip_for_localhost.ray_original is original, s.resolve_ip_for_localhost('localhost'))\n"
    )
    assert _printed_by(code) == ["True", "127.0.0.1"]
