"""Inference with the user's own code and the provenance of a reused int8 IR (issue 13, defects 1, 2, 10, 12).

A model factory in a module of the user's (a folder on ``sys.path``, as the DAGs folder is in a task), its
kwargs templated as strings; the module edited between runs; a calibration manifest deleted or replaced by a
rerun; a missing module and kwargs the factory refuses. Real torch, OpenVINO and NNCF, in-process engine.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_bigdata_ai.infer import InferOptions, ModelLoadFailed, run_inference
from airflow_bigdata_ai.operators.infer import OpenVINOInferOperator
from airflow_bigdata_ai.shards import ModelRef, decode_tensors, open_store, read_table
from airflow_bigdata_ai.usercode import UserCodeError
from tests.support.infer_models import write_digits

MODULE = textwrap.dedent(
    """
    import torch

    SIGN = {sign}


    class Net(torch.nn.Module):
        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
            )

        def forward(self, x):
            return self.body(x) * SIGN


    def make(hidden: int = 8) -> torch.nn.Module:
        return Net(hidden)
    """
)


def make_project(tmp_path: Any, monkeypatch: Any, rows: int = 400) -> SimpleNamespace:
    """A user module beside the DAG (on this process' ``sys.path`` only), weights of its model, digit shards."""
    name = f"abai_user_model_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "dags"
    folder.mkdir()
    module = folder / f"{name}.py"
    module.write_text(MODULE.format(sign="1.0"))
    monkeypatch.syspath_prepend(str(folder))
    import torch

    namespace: dict[str, Any] = {}
    exec(compile(module.read_text(), str(module), "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["make"](16)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    store = open_store(f"file://{tmp_path}/store")
    weights_uri = f"file://{tmp_path}/store/models/user/model.pt"
    store.write_bytes(weights_uri, buffer.getvalue())
    ref = ModelRef(
        weights_uri=weights_uri,
        weights_sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
        model_factory=f"{name}:make",
        input_shape=[1, 8, 8],
        factory_kwargs={"hidden": "16"},  # what a templated "{{ params.hidden }}" renders to
    )
    data = write_digits(store, f"file://{tmp_path}/store/data/digits", shards=2, limit=rows)
    return SimpleNamespace(store=store, root=tmp_path, ref=ref, data=data, module=module, model=model, name=name)


@pytest.fixture
def project(tmp_path, monkeypatch):
    return make_project(tmp_path, monkeypatch)


def _infer(p: SimpleNamespace, out: str, ref: ModelRef | None = None, data: Any = None, **options: Any) -> Any:
    return run_inference(
        ref or p.ref,
        data or p.data,
        f"file://{p.root}/store/out/{out}",
        model_store=p.store,
        input_store=p.store,
        options=InferOptions(engine="local", **options),
    )


def eager_predictions(p: SimpleNamespace, sign: float) -> np.ndarray:
    import torch

    images = decode_tensors(read_table(p.store, p.data).column("image"), (1, 8, 8), "float32")
    with torch.no_grad():
        return (p.model(torch.from_numpy(images.copy())).numpy() * sign).argmax(axis=1)  # type: ignore[no-any-return]


def test_user_factory_with_templated_kwargs_and_an_edit_takes_effect(project):
    p = project
    first = _infer(p, "first")
    predicted = read_table(p.store, first.shardset).column("predicted").to_numpy()
    assert (predicted == eager_predictions(p, 1.0)).mean() >= 0.99
    assert first.summary["model_factory"] == f"{p.name}:make" and p.name in first.summary["model_code"]

    p.module.write_text(MODULE.format(sign="-1.0"))  # the user edits the module; same weights
    second = _infer(p, "second")
    assert second.summary["ir"]["cache_hit"] is False, "the IR of the old code was reused"
    assert second.summary["model_code"] != first.summary["model_code"]
    predicted = read_table(p.store, second.shardset).column("predicted").to_numpy()
    assert (predicted == eager_predictions(p, -1.0)).mean() >= 0.99
    again = _infer(p, "again")  # unchanged code: the cache hits
    assert again.summary["ir"]["cache_hit"] is True

    int8 = _infer(p, "int8", precision="int8", max_accuracy_drop=100.0)  # NNCF in this process, user factory
    assert int8.summary["precision_used"] == "int8" and int8.shardset.num_rows == 400


def test_reused_int8_provenance_resolves_after_the_manifest_is_deleted_or_replaced(project):
    p = project
    options = {"precision": "int8", "max_accuracy_drop": 100.0, "calibration_samples": 64}
    built = _infer(p, "calibrate", **options).summary["ir"]
    assert built["cache_hit"] is False and built["calibrated_on"] == p.data.manifest_uri
    assert built["calibrated_on_sha256"] == p.data.manifest_sha256 and built["calibrated_on_manifest"] == "present"

    p.store.delete([p.store.resolve(p.data.manifest_uri)])  # a rerun of the input's producer removed it
    other = write_digits(p.store, f"file://{p.root}/store/data/other", shards=1, limit=100)
    reused = _infer(p, "reuse", data=other, **options).summary["ir"]
    assert reused["cache_hit"] is True
    assert reused["calibrated_on"] == p.data.manifest_uri and reused["calibrated_on_manifest"] == "deleted"
    sample = reused["calibration_sample"]
    assert sample["present"] is True and sample["rows"] == 64 and sample["shape"] == [1, 8, 8]
    raw = p.store.read_bytes(p.store.resolve(sample["uri"]))  # the calibration rows themselves, verifiable
    assert hashlib.sha256(raw).hexdigest() == sample["sha256"]
    assert np.load(io.BytesIO(raw)).shape == (64, 1, 8, 8)

    p.store.write_bytes(p.store.resolve(p.data.manifest_uri), b"{}")  # same name, other bytes
    assert _infer(p, "reuse2", data=other, **options).summary["ir"]["calibrated_on_manifest"] == "replaced"


def test_missing_module_and_refused_kwargs_fail_before_any_work(project):
    p = project
    missing = ModelRef.from_dict({**p.ref.to_dict(), "model_factory": "abai_no_such_module_here:make"})
    with pytest.raises(UserCodeError, match="abai_no_such_module_here"):
        _infer(p, "missing", ref=missing)
    refused = ModelRef.from_dict({**p.ref.to_dict(), "factory_kwargs": {"hiden": 16}})
    with pytest.raises(UserCodeError, match="hiden"):
        _infer(p, "refused", ref=refused)
    unfit = ModelRef.from_dict({**p.ref.to_dict(), "factory_kwargs": {"hidden": 32}})
    with pytest.raises(ModelLoadFailed, match="do not load into"):
        _infer(p, "unfit", ref=unfit)
    assert not p.store.exists(f"file://{p.root}/store/out/missing/_CURRENT")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_factory": "abai_no_such_module_here:make"}, "UserCodeError: cannot import module"),
        ({"factory_kwargs": {"hidden": "many"}}, "UserCodeError: .*hidden"),
        ({"factory_kwargs": {"hidden": 32}}, "ModelLoadFailed"),
    ],
)
def test_operator_fails_without_retry_on_user_code_errors(project, change, message):
    p = project
    op = OpenVINOInferOperator(
        task_id="infer",
        model_ref={**p.ref.to_dict(), **change},
        input_data=p.data.to_dict(),
        engine="local",
        output_uri=f"file://{p.root}/store/out/op",
    )
    op.hook.store_for = lambda uri=None: p.store  # type: ignore[assignment,method-assign,misc]
    ti = SimpleNamespace(dag_id="d", task_id="infer", run_id="r", map_index=-1, try_number=1)
    with pytest.raises(AirflowFailException, match=message):
        op.execute({"ti": ti, "logical_date": None})  # type: ignore[arg-type]
