"""Training with the user's own code, without a cluster: what travels to the workers, and what fails early.

The end-to-end check (a real Airflow, the real cluster) is tests/integration/test_train_user_code.py.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_bigdata_ai.models.loading import build_model, factory_call_kwargs
from airflow_bigdata_ai.shards import ModelRef, open_store
from airflow_bigdata_ai.train import RunKey, checkpoint_uri, discard_run
from airflow_bigdata_ai.train.chaos import ExitOnceStep
from airflow_bigdata_ai.train.core import ship_callable, ship_model_factory
from airflow_bigdata_ai.usercode import UserCallable, UserCodeError

FACTORY = "airflow_bigdata_ai.examples.models.digits:make_digits_cnn"

USER_MODULE = textwrap.dedent(
    """
    from torch import nn

    def make_model(channels: int = 4) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.Flatten(), nn.Linear(channels * 64, 10))
    """
)

WORKER = textwrap.dedent(
    """
    import pickle, sys
    from airflow_bigdata_ai.models.loading import build_model
    factory, kwargs = pickle.loads(sys.stdin.buffer.read())
    model = build_model(factory, kwargs)
    print(type(model).__name__, model[0].out_channels)
    """
)


@pytest.fixture()
def user_module(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module in a folder that only this process has on sys.path (like a DAGs folder)."""
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "abai_user_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    yield "abai_user_models:make_model"
    sys.modules.pop("abai_user_models", None)


def test_factory_beside_the_dag_builds_in_a_process_that_cannot_import_it(user_module: str, tmp_path: Any) -> None:
    factory = ship_model_factory(user_module)
    assert factory.bundle.describe().keys() == {"abai_user_models"}
    payload = pickle.dumps((factory, {"channels": "5"}))  # what LoopSpec carries to a Ray worker
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", WORKER], input=payload, capture_output=True, cwd=str(tmp_path), env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().split() == ["Sequential", "5"]


def test_templated_factory_kwargs_are_converted_and_checked(user_module: str) -> None:
    factory = UserCallable.of(user_module).load()
    assert factory_call_kwargs(factory, {"channels": "16"}, user_module) == {"channels": 16}
    with pytest.raises(UserCodeError, match="channels"):
        factory_call_kwargs(factory, {"channels": "sixteen"}, user_module)
    with pytest.raises(UserCodeError, match="does not accept"):
        factory_call_kwargs(factory, {"chanels": 3}, user_module)
    assert build_model(user_module, {"channels": "3"})[0].out_channels == 3


def test_missing_module_names_the_module_and_where_it_looked() -> None:
    with pytest.raises(UserCodeError, match=r"no_such_user_module.*sys\.path"):
        ship_model_factory("no_such_user_module:make")


def test_configured_step_object_travels_with_its_state(tmp_path: Any) -> None:
    step = ExitOnceStep(str(tmp_path / "marker"), epoch=3)
    shipped = pickle.loads(pickle.dumps(ship_callable(step, "train_step")))
    loaded = shipped.load()
    assert isinstance(loaded, ExitOnceStep) and loaded.marker == step.marker and loaded.epoch == 3


def test_discard_run_removes_the_whole_checkpoint_folder(tmp_path: Any) -> None:
    store = open_store(str(tmp_path))
    run, other = RunKey("dag", "train", "r1"), RunKey("dag", "train", "r2")
    for key in (run, other):
        for name in ("run.json", "events/fit/1.json", "result.json", "ray/checkpoint_0/state.pt"):
            store.write_bytes(checkpoint_uri(store, key).join(name), b"{}")
    discard_run(store, run)
    assert store.list(checkpoint_uri(store, run)) == []
    assert len(store.list(checkpoint_uri(store, other))) == 4


# -- the operator ------------------------------------------------------------------------------------------------
class _Hook:
    def __init__(self, root: str) -> None:
        from airflow_bigdata_ai.connection import ConnectionSettings

        self.store_root = root
        self.settings = ConnectionSettings(store_root=root)  # no jobs_url: the embedded mode

    def store_for(self, uri: str | None = None) -> Any:
        return open_store(self.store_root)

    def attach(self) -> Any:
        raise AssertionError("the cluster must not be touched for an error a retry cannot fix")


def _operator(tmp_path: Any, **kwargs: Any) -> Any:
    from airflow_bigdata_ai.operators.train import RayTrainOperator

    op = RayTrainOperator(task_id="train", **{"train_data": {}, "model_factory": FACTORY, **kwargs})
    op.__dict__["hook"] = _Hook(str(tmp_path))
    return op


def _context() -> Any:
    ti = SimpleNamespace(dag_id="dag", task_id="train", run_id="r1", try_number=1, map_index=-1, stats_tags={})
    return {"ti": ti, "logical_date": None}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"training": {"epochz": 3}}, "unknown training settings"),
        ({"model_factory": "no_such_user_module:make"}, "no_such_user_module"),
        ({"train_step": "no_such_step_module:step"}, "no_such_step_module"),
    ],
)
def test_errors_a_retry_cannot_fix_fail_the_task_without_retries(tmp_path: Any, kwargs: Any, message: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    op = _operator(tmp_path, **kwargs)
    with pytest.raises(AirflowFailException, match=message):
        op.execute(_context())


@pytest.mark.parametrize("keep", [False, True])
def test_checkpoints_are_removed_after_success_unless_kept(tmp_path: Any, keep: bool) -> None:
    op = _operator(tmp_path, keep_checkpoints=keep)
    store, run = open_store(str(tmp_path)), op.run_key(_context())
    store.write_bytes(checkpoint_uri(store, run).join("result.json"), b"{}")
    op.__dict__["execute_resumable"] = lambda context: {"kind": "ModelRef"}
    assert op.execute(_context()) == {"kind": "ModelRef"}
    assert store.exists(checkpoint_uri(store, run).join("result.json")) is keep


def test_a_reconnected_retry_still_returns_the_model_ref(tmp_path: Any) -> None:
    """ResumableJobMixin returns poll_until_complete's value when it reconnects: it must be the ModelRef."""
    import hashlib

    op = _operator(tmp_path)
    metrics = {"val_accuracy": 0.9, "epochs": 2, "restarts": 0, "resumed_from_epoch": 1}
    ref = ModelRef(f"file://{tmp_path}/w.pt", hashlib.sha256(b"w").hexdigest(), FACTORY, [1, 8, 8], metrics=metrics)
    op.__dict__["_store"] = lambda: open_store(str(tmp_path))
    op.__dict__["attach_cluster"] = lambda context: SimpleNamespace(close=lambda: None)
    requests: list[Any] = []
    op.__dict__["run_driver"] = lambda context, request, attached: (
        requests.append(request) or {"reference": ref.to_dict()}
    )
    assert op.poll_until_complete({"run_id": "r1"}, _context()) == ref.to_dict()
    assert [r.stage for r in requests] == ["train"] and requests[0].params["run"]["run_id"] == "r1"


def test_a_callable_factory_is_kept_out_of_templating(tmp_path: Any) -> None:
    from airflow_bigdata_ai.examples.models.digits import make_digits_cnn

    op = _operator(tmp_path, model_factory=make_digits_cnn, factory_kwargs={"channels": "{{ params.c }}"})
    op.render_template_fields({"params": {"c": "8"}})  # type: ignore[arg-type]
    assert op.model_factory_callable is make_digits_cnn and op.model_factory == FACTORY
    assert op.factory_kwargs == {"channels": "8"}


def test_a_recorded_result_of_edited_code_is_not_reused(user_module: str, tmp_path: Any) -> None:
    """With kept checkpoints, a cleared task whose model module changed trains again instead of reusing."""
    import hashlib

    from tests.unit.shard_helpers import write_shardset

    store = open_store(str(tmp_path))
    data = write_shardset(store, f"file://{tmp_path}/data")
    op = _operator(tmp_path, model_factory=user_module, keep_checkpoints=True, train_data=data.to_dict())
    run = op.run_key(_context())
    weights = f"file://{tmp_path}/w.pt"
    store.write_bytes(weights, b"w")
    seen: list[str] = []
    op.__dict__["execute_resumable"] = lambda context: seen.append(op.get_job_status({}, context)) or {}
    op.execute(_context())  # records the code identity this attempt ships
    current = dict(op._code or {})
    assert current, "the user module must be part of the code identity"
    for recorded, expected in (({k: "0" * 16 for k in current}, "NO_CHECKPOINT"), (current, "SUCCEEDED")):
        ref = ModelRef(weights, hashlib.sha256(b"w").hexdigest(), user_module, [1, 8, 8], code=recorded,
                       trained_on=data.to_dict())  # fmt: skip
        store.write_bytes(checkpoint_uri(store, run).join("result.json"), ref.to_json().encode())
        seen.clear()
        op.execute(_context())
        assert seen == [expected]
