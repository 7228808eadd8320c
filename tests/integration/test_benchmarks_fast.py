"""The benchmark harness in fast mode, on the session's shared cluster, so that ``make bench`` cannot rot.

All six benchmarks really run here (tiny sizes, fewer repetitions; the cold start, the engines and the
example DAG under ``airflow dags test``, on the shared cluster and with a cluster per task, are real).
Results go to a temporary directory, never over the committed ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.conftest import SharedCluster, subprocess_env

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ("cluster", "handoff", "preprocess", "train", "infer", "e2e", "remote")


@pytest.mark.timeout(2400)
def test_benchmarks_fast(shared_cluster: SharedCluster, tmp_path) -> None:
    out, plot = tmp_path / "results", tmp_path / "benchmarks.png"
    env = subprocess_env(PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--fast",
            "--only",
            ",".join(NAMES),
            "--state-dir",
            shared_cluster.config.state_dir,
            "--out-dir",
            str(out),
            "--plot",
            str(plot),
            "--workdir",
            str(tmp_path / "work"),
            # the per-task-cluster run of e2e is 3 cold starts (~220 s of the suite's 40 minutes); `make bench`
            # runs it; its policy (benchmarks/per_task_cluster) is checked in tests/unit/test_bench_per_task_policy.py
            "--e2e-variants",
            "shared",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=2300,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads((out / "latest.json").read_text())
    assert report["fast"] is True
    assert set(report["benchmarks"]) == set(NAMES)
    for name in NAMES:
        entry = report["benchmarks"][name]
        assert "error" not in entry, entry.get("error")
        assert entry["rows"], name
        for row in entry["rows"]:
            assert row["median"] > 0, (name, row)
        assert name == "e2e" or any(row["ratio"] for row in entry["rows"]), name
    assert report["benchmarks"]["e2e"]["detail"]["per_task"] == "skipped"
    # where rank 0's steady training epoch went, measured by the training loop itself
    split = report["benchmarks"]["train"]["detail"]["layouts"]["1x2cpu"]["time_split"]
    assert set(split) == {"data_wait_s", "decode_s", "step_s", "validate_s", "all_reduce_s"}, split
    assert split["step_s"] > 0, split
    # XCom carries the same few hundred bytes whatever the number of shards
    xcom = report["benchmarks"]["handoff"]["detail"]["xcom_bytes"]
    assert list(xcom) == ["1", "10", "100", "1000", "10000"] and max(xcom.values()) - min(xcom.values()) < 64
    table = (out / "latest.md").read_text()
    assert table.startswith("| benchmark | variant | median | ratio | goal | met? |")
    for title in ("Cluster", "Handoff", "Preprocessing", "Training", "Inference"):
        assert title in table
    assert plot.stat().st_size > 10_000
