"""Signed references (issue 15, hostile input): a ShardSet or ModelRef rewritten in XCom is refused.

The core signs and verifies with a key given as bytes; the connection decides the key and whether an unsigned
reference passes; the operators sign what they return and check what they receive, binding a value read from
another operator's XCom to that task in the same DAG run.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_bigdata_ai.connection import ConnectionSettings, ReferencePolicy
from airflow_bigdata_ai.shards import InvalidReference, ModelRef, Producer, ShardSet
from airflow_bigdata_ai.shards.refs import (
    SignatureMismatch,
    UnsignedReference,
    canonical_bytes,
    derive_key,
    key_id,
    sign_reference,
    verify_reference,
)

KEY = derive_key("deployment-a")
OTHER_KEY = derive_key("deployment-b")
ROOT = "s3://bucket/prefix"


def shardset(date: str = "2026-11-24", dag: str = "digits_e2e", run: str | None = None) -> ShardSet:
    return ShardSet(
        manifest_uri=f"{ROOT}/{dag}/preprocess/ds={date}/_manifests/{'a' * 16}.json",
        manifest_sha256="1" * 64,
        schema={"image": "tensor<float32>[1,8,8]", "label": "int64"},
        num_rows=1797,
        num_shards=4,
        total_bytes=460_000,
        producer=Producer(dag, "preprocess", run or f"scheduled__{date}T00:00:00+00:00", f"{date}T00:00:00+00:00", 1),
        stats={"quarantined": 0, "by_reason": {}, "rows_per_s": 812.5},
    )


def modelref(data: ShardSet) -> ModelRef:
    return ModelRef(
        weights_uri=f"{ROOT}/digits_e2e/train/ds=2026-11-24/weights/model-{'b' * 16}.pt",
        weights_sha256="2" * 64,
        model_factory="airflow_bigdata_ai.examples.models.digits:make_digits_cnn",
        input_shape=[1, 8, 8],
        factory_kwargs={"channels": 8},
        metrics={"val_accuracy": 0.9722, "epochs": 3},
        trained_on=data.to_dict(),
        producer=replace(data.producer, task_id="train"),
        code={"user_models": "c" * 16},
    )


# -- core: sign / verify ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: shardset(), lambda: modelref(sign_reference(shardset(), KEY))])
def test_signed_reference_verifies_after_a_json_round_trip(make: Any) -> None:
    ref = sign_reference(make(), KEY)
    assert ref.signature.startswith(f"hmac-sha256:{key_id(KEY)}:")
    # XCom stores JSON: any key order / whitespace, parsed back, verifies
    text = json.dumps(json.loads(ref.to_json()), indent=3, sort_keys=False)
    again = type(ref).coerce(text)
    verify_reference(again, KEY)
    verify_reference(again, (OTHER_KEY, KEY))  # rotation: any of the keys
    assert ref.signature.encode() not in canonical_bytes(again)
    assert "signature" not in make().to_dict(), "an unsigned reference keeps the shape older readers know"


def test_a_diverged_training_with_nan_metrics_still_signs_and_verifies() -> None:
    model = replace(modelref(shardset()), metrics={"val_loss": float("nan"), "train_loss": float("inf")})
    signed = sign_reference(model, KEY)
    verify_reference(ModelRef.coerce(json.loads(json.dumps(signed.to_dict()))), KEY)  # as XCom stores it


def _tampered(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    data = json.loads(json.dumps(data))
    parent = data
    for name in path[:-1]:
        parent = parent[name]
    value = parent[path[-1]]
    if isinstance(value, bool):
        parent[path[-1]] = not value
    elif isinstance(value, int):
        parent[path[-1]] = value + 1
    elif isinstance(value, float):
        parent[path[-1]] = value + 0.25
    elif isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef"):
        parent[path[-1]] = ("f" if value[0] != "f" else "e") + value[1:]
    elif isinstance(value, str) and value.startswith("s3://"):
        parent[path[-1]] = value.replace("ds=2026-11-24", "ds=2026-11-23")
    elif isinstance(value, str):
        parent[path[-1]] = value + "x"
    elif isinstance(value, list):
        parent[path[-1]] = [*value, 1]
    elif isinstance(value, dict):
        parent[path[-1]] = {**value, "added": "x"}
    return data


def _leaf_paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for name, value in data.items():
        if name in ("kind", "signature", "version", "format"):
            continue
        if isinstance(value, dict) and value:
            paths += _leaf_paths(value, (*prefix, name))
        if name not in ("producer", "trained_on"):  # closed objects: their leaves are tampered instead
            paths.append((*prefix, name))
    return paths


@pytest.mark.parametrize("kind", ["ShardSet", "ModelRef"])
def test_tampering_any_field_breaks_the_signature(kind: str) -> None:
    data_ref = sign_reference(shardset(), KEY)
    ref = data_ref if kind == "ShardSet" else sign_reference(modelref(data_ref), KEY)
    paths = _leaf_paths(ref.to_dict())
    assert len(paths) >= 12, paths
    for path in paths:
        tampered = type(ref).from_dict(_tampered(ref.to_dict(), path))
        assert tampered.signature == ref.signature
        with pytest.raises(SignatureMismatch, match=r"the signature of the .* does not match: it was changed"):
            verify_reference(tampered, KEY, "train_data")


def test_another_dates_or_dags_reference_signed_with_another_key_is_refused() -> None:
    for foreign in (shardset(date="2026-11-23"), shardset(dag="other_team_dag")):
        signed = sign_reference(foreign, OTHER_KEY)
        with pytest.raises(SignatureMismatch, match=f"train_data: .*another key \\({key_id(OTHER_KEY)}"):
            verify_reference(signed, KEY, "train_data")


def test_a_reference_moved_outside_the_store_root_is_refused() -> None:
    signed = sign_reference(shardset(), KEY).to_dict()
    for uri in ("file:///etc/airflow/_manifests/a.json", "s3://other-bucket/x/_manifests/a.json"):
        moved = ShardSet.from_dict({**signed, "manifest_uri": uri})
        with pytest.raises(SignatureMismatch):
            verify_reference(moved, KEY)
        stripped = ShardSet.from_dict({k: v for k, v in moved.to_dict().items() if k != "signature"})
        with pytest.raises(UnsignedReference, match="not signed"):
            verify_reference(stripped, KEY)
        with pytest.raises(UnsignedReference, match=r"input_data: .*refuses unsigned"):
            ReferencePolicy(KEY, accept_unsigned=False, key_source="test").check(stripped, "input_data")


def test_malformed_signatures_are_invalid_references() -> None:
    data = shardset().to_dict()
    for bad in ("x", "hmac-sha256:zz:00", 7, "hmac-sha1:" + "0" * 16 + ":" + "0" * 64):
        with pytest.raises(InvalidReference, match="signature"):
            ShardSet.from_dict({**data, "signature": bad})
    with pytest.raises(ValueError, match="16 bytes"):
        sign_reference(shardset(), b"short")


def test_derive_key_is_rfc5869_hkdf_sha256() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    expected = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"airflow-bigdata-ai",
        info=b"airflow-bigdata-ai reference signing v1",
    ).derive(b"deployment-a")
    assert KEY == expected and KEY != OTHER_KEY
    with pytest.raises(ValueError):
        derive_key("")


# -- the connection decides the key and the unsigned rule -------------------------------------------------------
def _settings(tmp_path: Any, password: str | None = None, **extra: Any) -> ConnectionSettings:
    return ConnectionSettings.from_parts("abai", "embedded", password, {"state_dir": str(tmp_path), **extra})


@pytest.fixture
def home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The deployment's home, where the generated key lives (not a cluster's state dir)."""
    monkeypatch.setenv("AIRFLOW_BIGDATA_AI_HOME", str(tmp_path / "home"))
    os.makedirs(tmp_path / "home")
    return tmp_path / "home"


def test_key_source_and_unsigned_default(tmp_path: Any, home: Any) -> None:
    secret = _settings(tmp_path, "tok", reference_secret="s3cr3t").reference_policy()
    assert secret.key == derive_key("s3cr3t") and not secret.accept_unsigned
    token = _settings(tmp_path, "tok").reference_policy()
    assert token.key == derive_key("tok") and token.key != b"tok" and not token.accept_unsigned
    generated = _settings(tmp_path).reference_policy()  # embedded default: nothing configured
    assert generated.accept_unsigned and generated.key_source == str(home / "reference.key")
    # a cluster per task (another state dir per connection) still shares the deployment's key
    assert _settings(tmp_path / "other-cluster").reference_policy().key == generated.key
    assert _settings(tmp_path, unsigned_references="refuse").reference_policy().accept_unsigned is False
    assert _settings(tmp_path, "tok", unsigned_references="accept").reference_policy().accept_unsigned is True
    with pytest.raises(ValueError, match="unsigned_references"):
        _settings(tmp_path, unsigned_references="maybe")
    shown = repr(_settings(tmp_path, "tok", reference_secret="s3cr3t")) + repr(secret)
    assert "s3cr3t" not in shown and "tok" not in shown and secret.key.hex() not in shown


def test_generated_key_is_created_once_private_and_shared_by_concurrent_tasks(tmp_path: Any, home: Any) -> None:
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: keys.append(_settings(tmp_path).reference_policy().key)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1
    path = home / "reference.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert _settings(tmp_path).reference_policy().key == keys[0], "the key outlives the process (and cluster)"


def test_the_hook_supplies_the_connections_key(monkeypatch: Any, tmp_path: Any) -> None:
    from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook

    extra = {"state_dir": str(tmp_path), "reference_secret": "from-the-connection"}
    monkeypatch.setenv("AIRFLOW_CONN_ABAI_SIGNED", json.dumps({"conn_type": "ray_on_spark", "extra": extra}))
    policy = RayOnSparkHook("abai_signed").reference_policy()
    assert policy.key == derive_key("from-the-connection") and not policy.accept_unsigned


# -- operators: sign what they return, check what they receive -------------------------------------------------
@pytest.fixture()
def dag_ops() -> Any:
    from airflow.sdk import DAG

    from airflow_bigdata_ai.operators.infer import OpenVINOInferOperator
    from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator
    from airflow_bigdata_ai.operators.train import RayTrainOperator

    with DAG("digits_e2e", schedule=None):
        prep = SparkPreprocessOperator(task_id="preprocess", source="file:///data")
        train = RayTrainOperator(task_id="train", train_data=prep.output, model_factory="a.b:c")
        infer = OpenVINOInferOperator(task_id="infer", model_ref=train.output, input_data=prep.output)
        literal = RayTrainOperator(task_id="literal", train_data={"kind": "ShardSet"}, model_factory="a.b:c")
    policy = ReferencePolicy(KEY, accept_unsigned=True, key_source="test")  # the most lenient setting
    for op in (prep, train, infer, literal):
        op.__dict__["references"] = policy
    return SimpleNamespace(prep=prep, train=train, infer=infer, literal=literal)


def _context(run_id: str = "scheduled__2026-11-24T00:00:00+00:00") -> Any:
    return {"ti": SimpleNamespace(dag_id="digits_e2e", task_id="x", run_id=run_id), "outlet_events": {}}


def test_operators_record_which_fields_read_another_operators_xcom(dag_ops: Any) -> None:
    assert dag_ops.train._reference_sources == {"train_data": "preprocess"}
    assert dag_ops.infer._reference_sources == {"model_ref": "train", "input_data": "preprocess"}
    assert dag_ops.literal._reference_sources == {}


def test_xcom_of_an_operator_must_be_signed_and_from_that_task_in_this_run(dag_ops: Any) -> None:
    train = dag_ops.train
    genuine = sign_reference(shardset(), KEY)
    train.train_data = genuine.to_dict()  # what rendering leaves in the field
    assert train.check_reference(_context(), "train_data", ShardSet) == genuine
    cases = {
        "another date": (sign_reference(shardset(date="2026-11-23"), KEY), "run 'scheduled__2026-11-23"),
        "another DAG": (sign_reference(shardset(dag="other_dag"), KEY), "dag 'other_dag'"),
        "another task": (
            sign_reference(replace(shardset(), producer=replace(genuine.producer, task_id="infer")), KEY),
            "task 'infer'",
        ),
        "tampered": (ShardSet.from_dict({**genuine.to_dict(), "num_rows": 1}), "signature .* does not match"),
        "other key": (sign_reference(shardset(), OTHER_KEY), "signature .* does not match: it was signed with another"),
        "unsigned": (replace(genuine, signature=""), "not signed, so the signature does not match: .*rewritten"),
    }
    for name, (ref, message) in cases.items():
        train.train_data = ref.to_dict()
        with pytest.raises(AirflowFailException, match=f"train_data: .*{message}"):
            train.check_reference(_context(), "train_data", ShardSet)
        print(f"{name}: refused")


def test_mapped_producer_and_literal_values(dag_ops: Any) -> None:
    infer = dag_ops.infer
    data = sign_reference(shardset(), KEY)
    model = sign_reference(replace(modelref(data), producer=replace(data.producer, task_id="train__map_index=2")), KEY)
    infer.model_ref, infer.input_data = model.to_json(), data.to_dict()
    assert infer.check_reference(_context(), "model_ref", ModelRef) == model
    literal = dag_ops.literal  # written in the DAG file: a lenient deployment accepts it unsigned, with a warning
    literal.train_data = shardset(date="2026-01-01").to_dict()
    assert literal.check_reference(_context(), "train_data", ShardSet).signature == ""
    literal.__dict__["references"] = ReferencePolicy(KEY, accept_unsigned=False, key_source="test")
    with pytest.raises(AirflowFailException, match=r"train_data: .*refuses unsigned"):
        literal.check_reference(_context(), "train_data", ShardSet)


def test_publish_signs_and_puts_the_same_reference_in_every_asset_event(dag_ops: Any) -> None:
    from airflow.sdk import Asset

    prep = dag_ops.prep
    assets = [Asset("digits_features"), Asset("digits_features_copy")]
    prep.outlets = assets
    context = _context()
    context["outlet_events"] = {a: SimpleNamespace(extra={}) for a in assets}
    returned = prep.publish(context, shardset())
    verify_reference(ShardSet.from_dict(returned), KEY)
    for asset in assets:
        extra = context["outlet_events"][asset].extra
        assert extra == {"kind": "ShardSet", "uri": returned["manifest_uri"], "reference": returned}
