"""Benchmark 8's own logic, without a cluster: the memory sampler on a real process tree, the verdicts.

``make bench`` runs the benchmark itself (the suite's smoke run of the harness leaves it out: ~3 minutes).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import psutil

from benchmarks import bench_scale
from benchmarks.__main__ import Ctx, markdown, row


def test_sampler_finds_the_largest_descendant_and_names_it() -> None:
    """A child holding 300 MiB under a stand-in "service" is the largest worker; no Java child: no driver.

    The service is a process of its own: under pytest, this process may own the session's Spark JVM.
    """
    hog = "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(30)"
    service = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {hog!r}])"]
    )
    try:
        memory = bench_scale.ClusterMemory(service.pid, interval_s=0.1)
        memory.start()
        deadline = time.monotonic() + 20
        while memory.worker_mib < 300 and time.monotonic() < deadline:
            time.sleep(0.2)
        memory.stop()
    finally:
        for child in psutil.Process(service.pid).children(recursive=True):
            child.kill()
        service.kill()
        service.wait()
    assert memory.worker_mib >= 300, memory.worker_mib
    assert "python" in memory.worker_name and memory.driver_mib == 0.0


def _point(factor: int, per_s: float, task: float, driver: float, xcom: int) -> dict[str, Any]:
    return {
        "factor": factor,
        "images": 200 * factor,
        "images_per_s": dict.fromkeys(bench_scale.STAGES, per_s),
        "train_samples_per_s": per_s,
        "task_peak_rss_mib": task,
        "driver_peak_rss_mib": driver,
        "largest_worker_peak_rss_mib": 600.0,
        "largest_worker": "ray::RayTrainWorker",
        "xcom_bytes": {"features": xcom, "model": 2000, "predictions": 1200},
    }


def test_goals_compare_100x_with_10x(monkeypatch: Any, tmp_path: Any) -> None:
    """Throughput that drops 20%, a driver that doubles and XCom that grows are each reported as not met."""
    points = [_point(1, 10.0, 500, 500, 1200), _point(10, 100.0, 500, 500, 1200), _point(100, 80.0, 560, 1000, 2400)]
    monkeypatch.setattr(bench_scale, "measure", lambda *_: {"points": points, **bench_scale.verdicts(points)})
    result = bench_scale.report(Ctx(fast=True, state_dir="", workdir=str(tmp_path)), row)
    rows = {r["variant"]: r for r in result["rows"]}
    task = next(r for v, r in rows.items() if "task process" in v)
    driver = next(r for v, r in rows.items() if "Spark driver" in v)
    worker = next(r for v, r in rows.items() if "largest" in v)
    assert (task["ratio"], task["met"]) == (1.12, True)
    assert (driver["ratio"], driver["met"]) == (2.0, False)
    assert worker["met"] is None and "ray::RayTrainWorker" in worker["note"]
    for stage in bench_scale.STAGES:
        stage_row = next(r for v, r in rows.items() if v.startswith(f"{stage} throughput"))
        assert (stage_row["ratio"], stage_row["met"]) == (0.8, False)
    xcom = next(r for v, r in rows.items() if v.startswith("XCom"))
    assert xcom["met"] is False and xcom["ratio"] == 2.0
    table = markdown({"benchmarks": {"scale": result}, "machine": _machine(), "fast": True, "seconds": 1,
                      "finished": "now", "load_avg_1m_end": 0})  # fmt: skip
    assert "8. Scale" in table and "**no**" in table


def _machine() -> dict[str, Any]:
    return {"cpu": "test", "cores": 2, "memory_gib": 1, "versions": {}, "load_avg_1m_start": 0}
