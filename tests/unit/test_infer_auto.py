"""``precision="auto"`` on a really trained digits CNN (real OpenVINO and NNCF, in-process engine)."""

from __future__ import annotations

from airflow_bigdata_ai.infer import InferOptions, run_inference
from airflow_bigdata_ai.infer.precision import AUTO_ORDER
from airflow_bigdata_ai.shards import open_store
from tests.support.infer_models import save_model, write_digits
from tests.unit import test_infer
from tests.unit.test_infer import _dim_copy

env = test_infer.env  # the same fixture (trained model, digits), set up once for this module


def _auto(store, model_store, ref, data, out, **options):
    return run_inference(
        ref, data, out, model_store=model_store, input_store=store, options=InferOptions(engine="local", **options)
    ).summary


def _check_choice(gate: dict, summary: dict) -> None:
    """Each precision was measured once, in order; the one that ran is the fastest that passed."""
    tried = gate["tried"]
    assert [t["precision"] for t in tried] == list(AUTO_ORDER)
    assert all(t["images_per_s"] > 0 for t in tried)
    for entry in tried:
        assert entry["passed"] == (entry["drop_points"] <= gate["max_accuracy_drop"]), entry
    assert tried[-1]["passed"] and tried[-1]["drop_points"] == 0  # f32 is the reference
    fastest = max((t for t in tried if t["passed"]), key=lambda t: t["images_per_s"])
    assert gate["chosen"] == summary["precision_used"] == fastest["precision"]
    assert summary["precision_requested"] == "auto"
    assert summary["runtime_precision"] == [fastest["runtime"]]


def test_auto_measures_every_precision_and_runs_the_fastest_that_passes(env, capsys):
    store, root, ref, data = env
    summary = _auto(store, store, ref, data, f"file://{root}/out/auto", precision="auto")
    gate = summary["gate"]
    print("auto:", [(t["precision"], round(t["accuracy"], 4), round(t["images_per_s"])) for t in gate["tried"]])
    assert gate["checked"] and gate["basis"] == "labels" and gate["samples"] == 512
    _check_choice(gate, summary)
    assert all(t["passed"] for t in gate["tried"]), gate  # a well-calibrated digits CNN loses < 1 point
    assert summary["accuracy"] > 0.9 and summary["rows"] == data.num_rows
    assert summary["ir"] == next(t["ir"] for t in gate["tried"] if t["precision"] == gate["chosen"])


def test_auto_never_runs_a_precision_that_fails_the_gate(env, tmp_path):
    """An int8 IR calibrated on images 50x too dark (cached) loses accuracy: auto must skip it."""
    store, root, _, data = env
    isolated = open_store(f"file://{tmp_path}")
    own_ref = save_model(isolated, f"file://{tmp_path}/model.pt")  # its own IR cache
    dark = _dim_copy(env, "dark-auto", 0.02)
    _auto(store, isolated, own_ref, dark, f"file://{root}/out/dark-auto", precision="int8", holdout_samples=64)
    summary = _auto(store, isolated, own_ref, data, f"file://{root}/out/auto-gated", precision="auto")
    gate = summary["gate"]
    int8 = gate["tried"][0]
    assert int8["precision"] == "int8" and not int8["passed"] and int8["drop_points"] > 1, int8
    assert int8["ir"]["cache_hit"] is True
    _check_choice(gate, summary)
    assert summary["precision_used"] in ("bf16", "f32")


def test_auto_without_labels_gates_on_agreement_with_f32(env):
    store, root, ref, _ = env
    unlabelled = write_digits(store, f"file://{root}/data/unlabelled-auto", shards=2, with_label=False, limit=300)
    summary = _auto(store, store, ref, unlabelled, f"file://{root}/out/auto-unlabelled", precision="auto")
    gate = summary["gate"]
    assert gate["basis"].startswith("agreement with f32") and gate["samples"] == 300 - 128
    assert gate["f32_agreement"] == 1.0 and "f32_accuracy" not in gate
    _check_choice(gate, summary)
    assert summary["accuracy"] is None
