"""Issue 13 acceptance: a new user's own project works on the first try, and again after an edit.

The project (``tests/system/user_project``) is written like a user's, apart from the package: its own code
in the DAGs folder (``my_vision``: a transform by import path and a model factory with constructor
kwargs), its own generated images (RGBA, RGB, L and CMYK in nested folders, a labels CSV outside the image
folder, broken files), templated kwargs and int8 inference, on the default ``ray_on_spark`` connection.

It runs the way ``docs/getting-started.rst`` tells a user to (its ``run.sh``: ``airflow dags test`` in a
fresh ``AIRFLOW_HOME``), against the session's shared cluster, which was started before the project
existed (``AIRFLOW_BIGDATA_AI_STATE_DIR`` makes the default connection find it, as it finds the cluster an
earlier run left warm). Nothing of ``my_vision`` is on the cluster's ``sys.path``: only the operators'
shipping can bring it there. Then the module is edited (transform and model) and the same command runs
again without a cluster restart: the output shows the new code.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from airflow_bigdata_ai.cluster.config import StatePaths, read_json
from airflow_bigdata_ai.shards import ModelRef, ShardSet, current_shardset, open_store, read_table, tensor_spec

pytestmark = [pytest.mark.system, pytest.mark.integration, pytest.mark.timeout(1800)]

PROJECT = Path(__file__).resolve().parent / "user_project"
DAG_ID = "my_vision_pipeline"
DATE = "2026-11-20"
IMAGES = 300
RUN_TIMEOUT_S = 900


def _load_make_data() -> Any:
    """The project's data generator, imported by path (it is the user's script, not a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_make_data", PROJECT / "make_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def user_env(base: Path, state_dir: str) -> dict[str, str]:
    """A user's shell: the venv on PATH, a fresh AIRFLOW_HOME, nothing of the test session's Airflow set-up."""
    drop = ("RAY_AUTH", "RAY_ADDRESS", "SPARK_REMOTE", "AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_BIGDATA_AI")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k != "AIRFLOW_HOME"}
    env.update(
        {
            "AIRFLOW_HOME": str(base / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_BIGDATA_AI_HOME": str(base / "abai"),
            # the default connection's cluster lives here: the session's, started before the project existed
            "AIRFLOW_BIGDATA_AI_STATE_DIR": state_dir,
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "NO_PROXY": "localhost,127.0.0.1",
            "no_proxy": "localhost,127.0.0.1",
            "SPARK_LOCAL_IP": "127.0.0.1",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    return env


def end_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, to every process of ``proc``'s group (ours: started with start_new_session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 20.0
        try:
            os.killpg(proc.pid, sig)
            while time.monotonic() < deadline:
                proc.poll()  # reap bash, or its zombie keeps the group alive
                os.killpg(proc.pid, 0)
                time.sleep(0.5)
        except ProcessLookupError:
            return


def run_like_a_user(base: Path, env: dict[str, str], label: str) -> str:
    """``run.sh`` from the docs, in ``base`` (which holds ``my_project/``); its output goes to a log file."""
    log_path = base / f"{label}.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        # its own session, so that a timeout ends airflow and everything it started, not only bash
        proc = subprocess.Popen(
            ["bash", str(PROJECT / "run.sh")],
            cwd=base,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            end_session(proc)
            raise AssertionError(f"{label}: run.sh still running after {RUN_TIMEOUT_S} s; log {log_path}") from None
        finally:
            if proc.poll() is None:
                end_session(proc)
    time.sleep(2.0)
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        pass  # nothing of the run is left
    else:
        end_session(proc)
        raise AssertionError(f"{label}: processes of the run were left behind (ended now)")
    output = log_path.read_text(errors="replace")
    sys.stderr.write(f"\n[user pipeline] {label}: exit {proc.returncode} in {time.monotonic() - started:.1f} s\n")
    assert proc.returncode == 0, f"{label}: run.sh failed ({proc.returncode}); log {log_path}:\n{output[-12000:]}"
    return output


def task_states(airflow_home: Path) -> dict[str, str]:
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? ORDER BY start_date", (DAG_ID,)
        ).fetchall()
    return {task: state for task, state in rows}


def xcoms(airflow_home: Path) -> dict[tuple[str, str], Any]:
    """(task_id, key) -> value of the latest run, read from Airflow's own database."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        run_id = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()[0]
        rows = db.execute(
            "SELECT task_id, key, value FROM xcom WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id)
        ).fetchall()
    found = {}
    for task, key, value in rows:
        text = value.decode() if isinstance(value, bytes) else value
        found[(task, key)] = json.loads(text) if isinstance(text, str) else text
    return found


def hidden_width(store_root: str, ref: ModelRef) -> int:
    """The out-features of the model's hidden layer, from the trained state dict itself."""
    import torch

    state = torch.load(io.BytesIO(open_store(store_root).read_bytes(ref.weights_uri)), weights_only=True)
    linears = [tensor.shape for name, tensor in state.items() if name.endswith("weight") and tensor.ndim == 2]
    return int(linears[0][0])


def check_run(base: Path, expected_version: int, expected_hidden: int, broken: dict[str, str]) -> dict[str, Any]:
    """Everything a user looks at after a run: task states, XCom, committed outputs, quarantine, predictions."""
    airflow_home = base / "airflow"
    store_root = f"file://{base / 'abai' / 'store'}"  # the default store: $AIRFLOW_BIGDATA_AI_HOME/store
    store = open_store(store_root)
    assert task_states(airflow_home) == {"preprocess": "success", "train": "success", "infer": "success"}
    values = xcoms(airflow_home)

    # preprocessing: a committed ShardSet at the default location, broken files quarantined with reasons
    features = ShardSet.from_dict(values[("preprocess", "return_value")])
    assert features.signature.startswith("hmac-sha256:")  # signed with the deployment's key, checked by train
    assert replace(features, signature="") == current_shardset(store, f"{store_root}/{DAG_ID}/preprocess/ds={DATE}")
    assert len(json.dumps(features.to_dict())) < 4096
    assert features.num_rows == IMAGES, features.stats  # every generated image, none of the broken files
    assert features.stats["quarantined"] == len(broken)
    report = json.loads(store.read_bytes(features.stats["quarantine_report"]["uri"]))
    reasons = {r["record_id"]: r["reason"] for r in report["records"]}
    assert reasons == broken, report["records"]
    assert all(r["detail"] for r in report["records"] if r["reason"] != "bad_label")
    table = read_table(store, features)
    assert set(table.column_names) >= {"record_id", "label", "image", "code_version"}
    assert set(table.column("code_version").to_pylist()) == {expected_version}  # which transform ran
    shape, dtype = tensor_spec(table.schema.field("image"))
    assert tuple(shape) == (3, 32, 32) and str(dtype) == "float32"  # the templated size reached my transform
    record_ids = table.column("record_id").to_pylist()
    assert any(r.startswith("site_a/2026/") for r in record_ids)  # nested folders kept as record ids
    assert any(r.endswith(".jpg") for r in record_ids)  # the CMYK JPEGs made it

    # training: a ModelRef built by my factory with my kwargs
    ref = ModelRef.from_dict(values[("train", "return_value")])
    assert ref.model_factory == "my_vision.model:make_model"
    assert {k: int(v) for k, v in ref.factory_kwargs.items()} == {"num_classes": 3, "width": 16}
    assert ref.input_shape == [3, 32, 32]
    assert ref.trained_on is not None and ref.trained_on["manifest_sha256"] == features.manifest_sha256
    assert hidden_width(store_root, ref) == expected_hidden  # which model factory ran

    # inference: int8 really ran, with a meaningful accuracy on the labelled rows
    predictions = ShardSet.from_dict(values[("infer", "return_value")])
    summary = values[("infer", "inference_summary")]
    assert predictions.signature.startswith("hmac-sha256:")
    assert replace(predictions, signature="") == current_shardset(store, f"{store_root}/{DAG_ID}/infer/ds={DATE}")
    assert summary["precision_requested"] == summary["precision_used"] == "int8"
    assert predictions.stats["precision_used"] == "int8" and summary["gate"]["passed"]  # int8 vs f32 checked
    assert summary["model_weights_sha256"] == ref.weights_sha256
    assert predictions.num_rows == features.num_rows
    assert summary["accuracy"] >= 0.8, summary
    preds = read_table(store, predictions)
    assert preds.column("record_id").to_pylist() == record_ids
    return {"features": features, "model": ref, "predictions": predictions, "summary": summary}


def run_inspect(base: Path, env: dict[str, str]) -> dict[str, Any]:
    """The docs' notebook snippet, run as the user would run it."""
    out = subprocess.run(
        [sys.executable, str(PROJECT / "inspect_outputs.py"), DATE],
        cwd=base / "my_project",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_new_users_own_pipeline_first_run_and_after_an_edit(shared_cluster, tmp_path):
    state_dir = shared_cluster.config.state_dir
    endpoint_before = read_json(StatePaths(state_dir).endpoint)
    assert endpoint_before, "the shared cluster must run before the user's project exists"

    # the user's project, written now: the cluster has never seen this code
    base = tmp_path
    project = base / "my_project"
    shutil.copytree(PROJECT / "dags", project / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    broken = _load_make_data().make_data(str(project / "data"), IMAGES)
    assert (project / "data" / "labels.csv").exists() and not (project / "data" / "images" / "labels.csv").exists()
    env = user_env(base, state_dir)

    first_log = run_like_a_user(base, env, "first-run")
    first = check_run(base, expected_version=1, expected_hidden=16, broken=broken)
    seen = run_inspect(base, env)
    assert seen["precision_used"] == "int8" and seen["code_version"] == [1]
    assert seen["quarantined"] == broken and seen["predictions"] == seen["rows"] == IMAGES
    assert "ModuleNotFoundError" not in first_log

    # the user edits their module (transform and model) and runs the same command again, no restart
    edit(project / "dags" / "my_vision" / "transforms.py", "CODE_VERSION = 1", "CODE_VERSION = 2")
    edit(project / "dags" / "my_vision" / "model.py", "HIDDEN = 16", "HIDDEN = 24")
    run_like_a_user(base, env, "after-edit")
    second = check_run(base, expected_version=2, expected_hidden=24, broken=broken)
    assert second["features"].manifest_sha256 != first["features"].manifest_sha256
    assert second["model"].weights_sha256 != first["model"].weights_sha256
    assert run_inspect(base, env)["code_version"] == [2]

    endpoint_after = read_json(StatePaths(state_dir).endpoint)
    assert endpoint_after["cluster_id"] == endpoint_before["cluster_id"], "the cluster was restarted"
    assert endpoint_after["pid"] == endpoint_before["pid"]
