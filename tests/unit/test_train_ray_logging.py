"""Ray's driver-side log lines reach the caller's logging once, at their real level, never as raw stderr.

An Airflow 3 task supervisor logs everything the task process writes to stderr at ERROR level, so a Ray
INFO line on stderr became an error in the task log (issue 13, defect 7). The end-to-end check against a
real Airflow task log is in tests/integration/test_train_user_code.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys

CHILD = r"""
import json, logging, sys
import ray
import ray.data  # installs Ray Data's own console handler, as in a task process
from airflow_bigdata_ai.cluster.ray_driver import MAX_MESSAGE, route_ray_logging

records = []

class Capture(logging.Handler):
    def emit(self, record):
        records.append((record.name, record.levelname, record.getMessage()))

logging.getLogger().addHandler(Capture())
logging.getLogger().setLevel(logging.DEBUG if sys.argv[1] == "debug" else logging.INFO)
route_ray_logging()
route_ray_logging()  # idempotent: still one router
ray_data = logging.getLogger("ray.data._internal.execution.streaming_executor")
ray_data.info("Execution config: " + "x" * 5000)
ray_data.warning("a real Ray Data warning")
logging.getLogger("ray.train.v2").info("an ordinary Ray Train line")
logging.getLogger("ray._private.worker").error("a real Ray error")
import ray._private.worker as ray_worker
dump = "Raylet is terminated. Termination is unexpected.\n" + "\n".join(f"    [state-dump] {i}" for i in range(20))
ray_worker.print_to_stdstream({"lines": [dump], "pid": "raylet", "is_err": False}, ignore_prefix=False)
print(json.dumps({"records": records, "max": MAX_MESSAGE}))
"""


def _run(level: str) -> tuple[list[list[str]], int, str]:
    import json

    proc = subprocess.run([sys.executable, "-c", CHILD, level], capture_output=True, text=True, timeout=120, check=True)
    out_lines = proc.stdout.strip().splitlines()
    assert len(out_lines) == 1, out_lines[:5]  # nothing printed to stdout but the result
    out = json.loads(out_lines[-1])
    return out["records"], out["max"], proc.stderr


def test_ray_lines_are_routed_once_at_their_level_and_nothing_goes_to_stderr() -> None:
    records, _, stderr = _run("info")
    assert "a real Ray Data warning" not in stderr and "Execution config" not in stderr, stderr
    assert "ordinary Ray Train line" not in stderr, stderr
    levels = {message[:23]: level for _name, level, message in records}
    assert levels == {
        "a real Ray Data warning": "WARNING",
        "a real Ray error": "ERROR",
        "Raylet is terminated. T": "WARNING",  # a driver-side dump: one line, not 21 lines of stdout
    }, records
    assert [m for _n, _l, m in records].count("a real Ray Data warning") == 1


def test_ray_info_is_kept_at_debug_and_long_lines_are_cut() -> None:
    records, limit, _ = _run("debug")
    by_text = {message[:20]: (name, level, message) for name, level, message in records}
    name, level, message = by_text["Execution config: xx"]
    assert level == "DEBUG" and name.startswith("ray.data")
    assert len(message) < limit + 100 and "more characters" in message
    assert by_text["an ordinary Ray Trai"][1] == "DEBUG"
    assert all(len(m) <= limit + 100 for _n, _l, m in records)


def test_router_is_a_logging_handler() -> None:
    from airflow_bigdata_ai.cluster.ray_driver import RayLogRouter

    assert isinstance(RayLogRouter(), logging.Handler)


def test_warnings_that_are_the_normal_path_of_an_autoscaling_cluster_are_not_warnings() -> None:
    from airflow_bigdata_ai.cluster.ray_driver import routed_level

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.makeLogRecord({"name": "ray.data.dataset", "levelno": level, "msg": message})

    scaling = "Warning: The Ray cluster currently does not have any available CPUs. The Dataset job will hang unless"
    assert routed_level(record(logging.WARNING, scaling), scaling) == logging.INFO
    bars = "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`."
    assert routed_level(record(logging.WARNING, bars), bars) == logging.DEBUG
    assert routed_level(record(logging.WARNING, "a real warning"), "a real warning") == logging.WARNING
    assert routed_level(record(logging.ERROR, scaling), scaling) == logging.ERROR  # an error stays an error
