"""OpenVINO inference core, in-process engine, on a really trained digits CNN (real OpenVINO and NNCF)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from airflow_bigdata_ai.infer import AccuracyGateFailed, InferOptions, InputShapeRejected, run_inference
from airflow_bigdata_ai.infer.ir import CACHE_DIR
from airflow_bigdata_ai.infer.model import check_input_shape
from airflow_bigdata_ai.shards import (
    ChecksumMismatch,
    ModelRef,
    ShardWriter,
    decode_tensors,
    encode_tensors,
    open_store,
    read_table,
    tensor_field,
)
from tests.support.infer_models import digits, save_model, schema, torch_logits, write_digits


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    store = open_store(f"file://{root}")
    ref = save_model(store, f"file://{root}/models/digits/model.pt")
    data = write_digits(store, f"file://{root}/data/digits", shards=4)
    return store, root, ref, data


def _run(env, name, data=None, log_fn=None, **options):
    store, root, ref, default_data = env
    data = data or default_data
    return run_inference(
        ref,
        data,
        f"file://{root}/out/{name}",
        model_store=store,
        input_store=store,
        options=InferOptions(engine="local", **options),
        log_fn=log_fn,
    )


@pytest.mark.parametrize(
    "shape",
    [[], [0, 8, 8], [1, 2, 3, 4, 5], [3, 20000, 8], [64, 4096, 4096], [1, -8, 8]],
)
def test_absurd_shapes_rejected(shape):
    with pytest.raises(InputShapeRejected):
        check_input_shape(shape)


def test_request_too_large_rejected():
    with pytest.raises(InputShapeRejected, match="MiB per request"):
        check_input_shape([3, 4096, 4096], request_batch=64)


def test_absurd_model_shape_rejected_before_compile(env):
    store, root, ref, data = env
    absurd = ModelRef.from_dict({**ref.to_dict(), "input_shape": [3, 65536, 65536]})
    with pytest.raises(InputShapeRejected):
        run_inference(
            absurd,
            data,
            f"file://{root}/out/absurd",
            model_store=store,
            input_store=store,
            options=InferOptions(engine="local"),
        )
    assert not store.exists(f"file://{root}/out/absurd/_CURRENT")


def test_shape_disagreeing_with_data_rejected(env):
    store, root, ref, data = env
    other = ModelRef.from_dict({**ref.to_dict(), "input_shape": [1, 16, 16]})
    with pytest.raises(InputShapeRejected, match=r"\[1, 16, 16\]"):
        run_inference(
            other,
            data,
            f"file://{root}/out/mismatch",
            model_store=store,
            input_store=store,
            options=InferOptions(engine="local"),
        )


def test_f32_matches_torch_eager_one_prediction_per_row(env):
    store, root, ref, data = env
    said: list[str] = []
    result = _run(env, "f32", precision="f32", log_fn=said.append)
    # workers post each written shard on the progress channel; the driver says so, and removes the posts
    assert "inference progress: 4/4 shards, 1797/1797 rows" in said[-1], said
    written = [str(path) for path in (root / "out" / "f32").rglob("*")]
    assert any(path.endswith(".parquet") for path in written)
    assert not [path for path in written if "progress" in path], written
    table = read_table(store, result.shardset)
    assert table.num_rows == data.num_rows == 1797
    source = read_table(store, data)
    assert table.column("record_id").to_pylist() == source.column("record_id").to_pylist()
    images = decode_tensors(source.column("image"), (1, 8, 8), "float32")
    eager = torch_logits(ref, store, images).argmax(axis=1)
    agree = float((table.column("predicted").to_numpy() == eager).mean())
    assert agree >= 0.999, agree
    scores = decode_tensors(table.column("scores"), (10,), "float32")
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    summary = result.summary
    assert summary["precision_used"] == "f32" and summary["runtime_precision"] == ["f32"]
    assert summary["rows"] == 1797 and summary["accuracy"] > 0.9 and summary["images_per_s"] > 0
    assert result.shardset.stats["precision_used"] == "f32"


def test_ir_is_cached_beside_the_model_and_reused(env):
    store, root, _ref, _data = env
    _run(env, "cache1", precision="f32")
    second = _run(env, "cache2", precision="bf16")  # bf16 compiles from the same float IR
    assert second.summary["ir"]["cache_hit"] is True
    cached = store.list(f"file://{root}/models/digits/{CACHE_DIR}")
    assert any(u.path.endswith("meta.json") for u in cached)


def test_bf16_and_int8_run_and_pass_the_gate(env):
    for precision in ("bf16", "int8"):
        result = _run(env, precision, precision=precision)
        summary = result.summary
        assert summary["precision_used"] == precision
        gate = summary["gate"]
        assert gate["checked"] and gate["passed"], gate
        assert gate["f32_accuracy"] - gate[f"{precision}_accuracy"] <= 0.01
    assert summary["ir"]["calibration_samples"] == 128


def _dim_copy(env, name, factor):
    """The same digits at ``factor`` brightness: a real, unrepresentative calibration source."""
    store, root, _, _ = env
    images, labels = digits()
    writer = ShardWriter(store, f"file://{root}/data/{name}")
    table = pa.table(
        {
            "record_id": [f"d{i:04d}" for i in range(len(images))],
            "image": encode_tensors(images * np.float32(factor)),
            "label": pa.array(labels),
        },
        schema=schema(),
    )
    return writer.commit([writer.write_table(0, table)], schema())


def test_gate_fails_with_both_figures_then_falls_back(env, tmp_path):
    """INT8 calibrated on images 50x too dark clips real activations; the gate catches it on real digits."""
    store, root, _ref, data = env
    isolated = open_store(f"file://{tmp_path}")
    own_ref = save_model(isolated, f"file://{tmp_path}/model.pt")  # its own IR cache
    dark = _dim_copy(env, "dark", 0.02)
    run_inference(
        own_ref,
        dark,
        f"file://{root}/out/dark",
        model_store=isolated,
        input_store=store,
        options=InferOptions(engine="local", precision="int8", holdout_samples=64),
    )
    with pytest.raises(AccuracyGateFailed) as caught:
        run_inference(
            own_ref,
            data,
            f"file://{root}/out/gated",
            model_store=isolated,
            input_store=store,
            options=InferOptions(engine="local", precision="int8"),
        )
    err = caught.value
    assert err.f32_accuracy - err.accuracy > 0.01
    assert f"{err.accuracy:.2%}" in str(err) and f"{err.f32_accuracy:.2%}" in str(err)
    assert not store.exists(f"file://{root}/out/gated/_CURRENT")
    fallback = run_inference(
        own_ref,
        data,
        f"file://{root}/out/fallback",
        model_store=isolated,
        input_store=store,
        options=InferOptions(engine="local", precision="int8", on_accuracy_drop="fallback"),
    )
    assert fallback.summary["precision_requested"] == "int8"
    assert fallback.summary["precision_used"] == "f32" and fallback.summary["runtime_precision"] == ["f32"]
    assert fallback.summary["gate"]["passed"] is False


def test_no_labels_no_gate(env):
    store, root, ref, _ = env
    unlabelled = write_digits(store, f"file://{root}/data/unlabelled", shards=2, with_label=False, limit=300)
    result = run_inference(
        ref,
        unlabelled,
        f"file://{root}/out/unlabelled",
        model_store=store,
        input_store=store,
        options=InferOptions(engine="local", precision="bf16"),
    )
    assert result.summary["gate"] == {"checked": False, "reason": "no labels in the input"}
    assert result.summary["accuracy"] is None
    assert read_table(store, result.shardset).schema.names == ["record_id", "predicted", "scores"]


def test_tampered_weights_refused_even_with_a_cached_ir(env, tmp_path):
    store, root, _, data = env
    isolated = open_store(f"file://{tmp_path}")
    ref = save_model(isolated, f"file://{tmp_path}/model.pt")
    run_inference(
        ref,
        data,
        f"file://{root}/out/before",
        model_store=isolated,
        input_store=store,
        options=InferOptions(engine="local"),
    )  # IR now cached
    raw = bytearray(isolated.read_bytes(ref.weights_uri))
    raw[-100] ^= 0xFF
    isolated.write_bytes(ref.weights_uri, bytes(raw))
    with pytest.raises(ChecksumMismatch, match="refusing to load"):
        run_inference(
            ref,
            data,
            f"file://{root}/out/tampered",
            model_store=isolated,
            input_store=store,
            options=InferOptions(engine="local"),
        )
    assert not store.exists(f"file://{root}/out/tampered/_CURRENT")


def test_options_validated():
    with pytest.raises(ValueError, match="precision"):
        InferOptions(precision="fp16").validate()
    with pytest.raises(ValueError, match="on_accuracy_drop"):
        InferOptions(on_accuracy_drop="ignore").validate()
    with pytest.raises(ValueError, match="engine"):
        InferOptions(engine="dask").validate()


def test_tiny_input_still_gated(env):
    store, root, ref, _ = env
    tiny = write_digits(store, f"file://{root}/data/tiny", shards=2, limit=60)
    for precision in ("bf16", "int8"):
        result = run_inference(
            ref,
            tiny,
            f"file://{root}/out/tiny-{precision}",
            model_store=store,
            input_store=store,
            options=InferOptions(engine="local", precision=precision),
        )
        assert result.summary["gate"]["checked"] and result.summary["gate"]["samples"] == 60
        assert result.shardset.num_rows == 60


def _digits_as(env, name, dtype):
    """The digits as uint8 pixels, or as the float32 [0, 1] those pixels stand for."""
    store, root, _, _ = env
    images, labels = digits()
    pixels = np.round(images * 255).astype(np.uint8)
    values = pixels if dtype == "uint8" else pixels.astype(np.float32) / np.float32(255)
    fields = [
        pa.field("record_id", pa.string()),
        tensor_field("image", (1, 8, 8), dtype),
        pa.field("label", pa.int64()),
    ]
    table = pa.table(
        {"record_id": [f"d{i:04d}" for i in range(len(values))], "image": encode_tensors(values), "label": labels},
        schema=pa.schema(fields),
    )
    writer = ShardWriter(store, f"file://{root}/data/{name}")
    return writer.commit([writer.write_table(0, table)], table.schema)


def test_uint8_shards_are_scaled_like_training_scales_them(env):
    """Training feeds uint8 pixels as /255; inference must too, or a model trained on uint8 shards mispredicts."""
    as_uint8, as_float = _digits_as(env, "pixels-uint8", "uint8"), _digits_as(env, "pixels-float", "float32")
    for precision in ("f32", "int8"):
        got = {}
        for name, data in (("uint8", as_uint8), ("float", as_float)):
            result = _run(env, f"{precision}-{name}", precision=precision, data=data)
            got[name] = (read_table(env[0], result.shardset), result.summary)
        (uint8_table, uint8_summary), (float_table, float_summary) = got["uint8"], got["float"]
        assert uint8_summary["accuracy"] > 0.9, uint8_summary
        if precision == "f32":
            assert uint8_table["predicted"].equals(float_table["predicted"])
        else:  # calibrated on each input's own sample rows: the same values, so the same accuracy
            assert abs(uint8_summary["accuracy"] - float_summary["accuracy"]) <= 0.01
