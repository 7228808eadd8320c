"""Unit tests of the training core and RayTrainOperator that need no Ray cluster."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from airflow_bigdata_ai.examples.models.digits import make_digits_cnn
from airflow_bigdata_ai.examples.sample_data import write_digits_shardset
from airflow_bigdata_ai.models.loading import import_factory, load_model
from airflow_bigdata_ai.shards import ChecksumMismatch, ModelRef, encode_tensors, open_store
from airflow_bigdata_ai.train import RunKey, TrainConfig, checkpoint_uri, has_checkpoint
from airflow_bigdata_ai.train.chaos import ExitOnceStep
from airflow_bigdata_ai.train.core import _prepare_checkpoint_dir
from airflow_bigdata_ai.train.loop import (
    LoopSpec,
    StepContext,
    batch_to_tensors,
    default_train_step,
    split_batch,
    worker_threads,
)
from airflow_bigdata_ai.usercode import UserCodeError

FACTORY = "airflow_bigdata_ai.examples.models.digits:make_digits_cnn"


def test_config_validates_eagerly() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_dict({"epochz": 3})


def test_fingerprint_ignores_epochs_but_not_lr() -> None:
    base = TrainConfig(epochs=3)
    assert base.fingerprint() == TrainConfig(epochs=9, max_failures=0).fingerprint()
    assert base.fingerprint() != TrainConfig(epochs=3, lr=0.1).fingerprint()
    hook = ExitOnceStep("/tmp/x")
    assert TrainConfig(train_step=hook).fingerprint() == TrainConfig(train_step=ExitOnceStep("/tmp/y")).fingerprint()


def test_checkpoint_path_is_per_run_and_safe(tmp_path: Any) -> None:
    store = open_store(str(tmp_path))
    a = checkpoint_uri(store, RunKey("dag", "train", "scheduled__2026-01-01T00:00:00+00:00"))
    b = checkpoint_uri(store, RunKey("dag", "train", "scheduled__2026-01-02T00:00:00+00:00"))
    assert a != b
    assert a.path.startswith(str(tmp_path)) and ":" not in a.path.rsplit("/", 1)[-1]


def test_settings_change_discards_old_checkpoints(tmp_path: Any) -> None:
    store = open_store(str(tmp_path))
    run = RunKey("dag", "train", "r1")
    base = checkpoint_uri(store, run)
    assert _prepare_checkpoint_dir(store, run, "fp-1") is False
    store.write_bytes(base.join("ray/checkpoint_2026/state.pt"), b"x")
    assert has_checkpoint(store, run)
    assert _prepare_checkpoint_dir(store, run, "fp-1") is True  # same settings: resume
    assert _prepare_checkpoint_dir(store, run, "fp-2") is False  # other settings: start over
    assert not has_checkpoint(store, run)


def _table(n: int, dtype: str = "float32", shape: tuple[int, ...] = (1, 2, 2)) -> pa.Table:
    images = (np.arange(n * int(np.prod(shape))).reshape(n, *shape) % 256).astype(dtype)
    return pa.table(
        {"record_id": [f"id{i}" for i in range(n)], "image": encode_tensors(images), "label": np.arange(n) % 3}
    )


def test_split_is_deterministic_disjoint_and_complete() -> None:
    table = _table(2000)
    val = split_batch(table, id_column="record_id", fraction=0.2, want_val=True)
    train = split_batch(table, id_column="record_id", fraction=0.2, want_val=False)
    assert val.num_rows + train.num_rows == 2000
    assert not set(val["record_id"].to_pylist()) & set(train["record_id"].to_pylist())
    assert 300 < val.num_rows < 500
    # the same record lands on the same side whatever batch it comes in
    again = split_batch(table.slice(100, 50), id_column="record_id", fraction=0.2, want_val=True)
    assert set(again["record_id"].to_pylist()) <= set(val["record_id"].to_pylist())


def _spec(dtype: str, shape: tuple[int, ...] = (1, 2, 2), **settings: Any) -> LoopSpec:
    config = TrainConfig(**settings)
    return LoopSpec(config, FACTORY, {}, shape, dtype, None, "", "", "", False)  # type: ignore[arg-type]


def test_batch_to_tensors_scales_uint8_only() -> None:
    x, y = batch_to_tensors(_table(4, "uint8"), _spec("uint8"))
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0 and y.dtype == torch.int64
    x, _ = batch_to_tensors(_table(4), _spec("float32"))
    assert float(x.max()) == 15.0


def test_default_step_learns() -> None:
    torch.manual_seed(0)
    model = make_digits_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    losses = [
        float(default_train_step(StepContext(model, opt, torch.nn.functional.cross_entropy, x, y, 0, i, 0, 1)))
        for i in range(20)
    ]
    assert losses[-1] < losses[0] / 2


def test_exit_once_step_fires_once(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    step = ExitOnceStep(str(tmp_path / "marker"), epoch=1, batch=0, rank=1)
    model = make_digits_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    for rank in (0, 1, 1):
        step(StepContext(model, opt, torch.nn.functional.cross_entropy, x, y, 1, 0, rank, 2))
    assert exits == [1]


def _save_ref(tmp_path: Any) -> tuple[ModelRef, Any]:
    store = open_store(str(tmp_path))
    model = make_digits_cnn()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    uri = store.root.join("weights/model.pt")
    store.write_bytes(uri, buffer.getvalue())
    ref = ModelRef(str(uri), hashlib.sha256(buffer.getvalue()).hexdigest(), FACTORY, [1, 1, 8, 8])
    return ref, store


def test_load_model_roundtrip_and_checksum(tmp_path: Any) -> None:
    ref, store = _save_ref(tmp_path)
    loaded = load_model(ModelRef.from_json(ref.to_json()), store)
    assert not loaded.training and loaded(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    store.write_bytes(ref.weights_uri, store.read_bytes(ref.weights_uri) + b"tampered")
    with pytest.raises(ChecksumMismatch, match="refusing"):
        load_model(ref.to_dict(), store)


def test_import_factory_errors() -> None:
    assert import_factory(FACTORY) is make_digits_cnn
    with pytest.raises(UserCodeError):
        import_factory("no_colon")
    with pytest.raises(UserCodeError, match="no attribute"):
        import_factory("airflow_bigdata_ai.examples.models.digits:missing")
    with pytest.raises(UserCodeError, match="no_such_module"):
        import_factory("no_such_module:make")


def test_operator_parse_time_is_cheap() -> None:
    code = (
        "import sys\n"
        "from airflow_bigdata_ai.operators.train import RayTrainOperator\n"
        "RayTrainOperator(task_id='t', train_data={}, model_factory='a.b:c', epochs=2)\n"
        "heavy = [m for m in ('torch', 'ray', 'pyspark') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class _FakeHook:
    def __init__(self, root: str) -> None:
        self.store_root = root

    def store_for(self, uri: str | None = None) -> Any:
        return open_store(self.store_root)


def test_operator_resume_decision(tmp_path: Any) -> None:
    from airflow_bigdata_ai.operators.train import RayTrainOperator

    store = open_store(str(tmp_path))
    shardset = write_digits_shardset(store, str(tmp_path / "digits"))
    op = RayTrainOperator(task_id="train", train_data=shardset.to_dict(), model_factory=FACTORY, epochs=2)
    op.__dict__["hook"] = _FakeHook(str(tmp_path))
    ti = SimpleNamespace(dag_id="dag", task_id="train", run_id="r1", try_number=2, map_index=-1)
    context: Any = {"ti": ti, "logical_date": None}
    handle = op.submit_job(context)
    assert handle["checkpoint_uri"].endswith("_checkpoints/dag/train/r1")
    assert op.get_job_status(handle, context) == "NO_CHECKPOINT"
    run = op.run_key(context)
    store.write_bytes(checkpoint_uri(store, run).join("ray/checkpoint_1/state.pt"), b"x")
    assert op.is_job_active(op.get_job_status(handle, context))
    ref, _ = _save_ref(tmp_path)
    ref = ModelRef.from_dict({**ref.to_dict(), "trained_on": shardset.to_dict(), "model_factory": FACTORY})
    store.write_bytes(checkpoint_uri(store, run).join("result.json"), ref.to_json().encode())
    assert op.is_job_succeeded(op.get_job_status(handle, context))
    assert op.get_job_result(handle, context) == ref.to_dict()
    assert op.train_config().epochs == 2


def test_each_worker_uses_as_many_threads_as_the_cpus_ray_reserved_for_it():
    assert worker_threads(TrainConfig()) == 1
    assert worker_threads(TrainConfig(num_workers=1, resources_per_worker={"CPU": 2.0})) == 2
    assert worker_threads(TrainConfig(resources_per_worker={"CPU": 0.5})) == 1


def test_progress_watcher_reports_each_epoch_once_even_while_its_file_is_being_written(tmp_path: Any) -> None:
    """A local store writes ``.tmp-*`` then renames: a listing in between showed the epoch twice in the log."""
    import json
    import time

    from airflow_bigdata_ai.train.events import EventWatcher

    store = open_store(str(tmp_path))
    events = store.resolve(f"{tmp_path}/events")
    body = {"type": "epoch", "time": time.time(), "epoch": 0, "train_loss": 1.0, "val_loss": 1.0}
    body |= {"val_accuracy": 0.5, "samples_per_s": 10.0, "epoch_seconds": 1.0}
    os.makedirs(events.path)
    with open(os.path.join(events.path, ".tmp-abc123"), "w") as handle:  # written, not yet renamed
        json.dump(body, handle)
    seen: list[Any] = []
    watcher = EventWatcher(store, events, 2, seen.append)
    watcher.poll()
    os.rename(os.path.join(events.path, ".tmp-abc123"), os.path.join(events.path, "0001-abcdef.json"))
    watcher.poll()
    assert [line.epoch for line in seen] == [0]


def test_finished_epochs_skips_an_event_still_being_written(tmp_path: Any) -> None:
    """Tests and tools poll the events during training: an empty ``.tmp-*`` object made CI fail with JSONDecodeError."""
    import json

    from airflow_bigdata_ai.train.events import finished_epochs, read_events

    store = open_store(str(tmp_path))
    events = store.resolve(f"{tmp_path}/events")
    store.write_bytes(events.join("0001-aaaaaa.json"), json.dumps({"type": "start", "start_epoch": 0}).encode())
    store.write_bytes(events.join("0002-bbbbbb.json"), json.dumps({"type": "epoch", "epoch": 0}).encode())
    open(os.path.join(events.path, ".tmp-0003"), "wb").close()  # the writer created its temp file, no bytes yet
    assert finished_epochs(store, events) == [0]
    assert [uri.name for uri, _ in read_events(store, events, skip={"0001-aaaaaa.json"})] == ["0002-bbbbbb.json"]


def test_ray_train_timeouts_are_settings_handed_to_ray_and_not_part_of_the_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_bigdata_ai.train.restarts import (
        HEALTH_CHECK_INTERVAL_ENV,
        WORKER_GROUP_START_TIMEOUT_ENV,
        WORKER_HEALTH_CHECK_TIMEOUT_ENV,
        apply_timeouts,
    )

    monkeypatch.delenv(WORKER_GROUP_START_TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(WORKER_HEALTH_CHECK_TIMEOUT_ENV, raising=False)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_STATE_TRACKING", raising=False)
    monkeypatch.delenv(HEALTH_CHECK_INTERVAL_ENV, raising=False)
    default = TrainConfig()
    assert (default.worker_group_start_timeout_s, default.worker_health_check_timeout_s) == (300.0, 600.0)
    slow = TrainConfig(worker_group_start_timeout_s=900, worker_health_check_timeout_s=1200)
    assert slow.fingerprint() == default.fingerprint()  # a retry with longer timeouts still resumes
    apply_timeouts(slow)
    assert os.environ[WORKER_GROUP_START_TIMEOUT_ENV] == "900"
    assert os.environ[WORKER_HEALTH_CHECK_TIMEOUT_ENV] == "1200"
    assert os.environ["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"  # else Ray records no restart cause
    assert os.environ[HEALTH_CHECK_INTERVAL_ENV] == "0.5"  # Ray's 2 s ended each training ~3 s late
    monkeypatch.setenv(HEALTH_CHECK_INTERVAL_ENV, "5")
    apply_timeouts(slow)
    assert os.environ[HEALTH_CHECK_INTERVAL_ENV] == "5"  # an operator's own setting wins
    with pytest.raises(ValueError, match="worker_group_start_timeout_s"):
        TrainConfig(worker_group_start_timeout_s=0)


def test_bf16_step_runs_the_forward_pass_in_bfloat16_and_keeps_float32_weights() -> None:
    """precision="bf16": autocast around forward and loss, never around backward; the weights stay float32."""
    seen: list[torch.dtype] = []
    for precision in ("f32", "bf16"):
        torch.manual_seed(0)
        model = make_digits_cnn()
        handle = model[-1].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        ctx = StepContext(model, opt, torch.nn.functional.cross_entropy, x, y, 0, 0, 0, 1, precision)
        losses = [float(default_train_step(ctx)) for _ in range(20)]
        handle.remove()
        assert losses[-1] < losses[0] / 2, (precision, losses)
        assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16


def test_bf16_is_a_checked_setting_that_changes_the_fingerprint_and_lays_images_out_channels_last() -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    assert TrainConfig(precision="bf16").fingerprint() != TrainConfig().fingerprint()  # no cross-precision resume
    for precision, channels_last in (("f32", False), ("bf16", True)):
        x, _ = batch_to_tensors(_table(4, shape=(3, 4, 4)), _spec("float32", (3, 4, 4), precision=precision))
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last and x.dtype == torch.float32
