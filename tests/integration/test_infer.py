"""OpenVINO inference on the real shared cluster: Ray Data actor pool, Spark mapInArrow, and the operator.

The model is a really trained digits CNN; the data the 1,797 real sklearn digits in 4 shards.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_bigdata_ai.infer import InferOptions, run_inference
from airflow_bigdata_ai.shards import decode_tensors, open_store, read_table
from tests.support.infer_models import save_model, torch_logits, write_digits

pytestmark = pytest.mark.integration

LOGICAL_DATE = datetime(2026, 11, 24, tzinfo=UTC)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer-it")
    store = open_store(f"file://{root}")
    ref = save_model(store, f"file://{root}/models/digits/model.pt")
    data = write_digits(store, f"file://{root}/data/digits", shards=4)
    source = read_table(store, data)
    eager = torch_logits(ref, store, decode_tensors(source.column("image"), (1, 8, 8), "float32")).argmax(axis=1)
    return store, root, ref, data, source, eager


def _check_predictions(env, result, min_agreement: float) -> None:
    store, _, _, data, source, eager = env
    table = read_table(store, result.shardset)
    assert table.num_rows == data.num_rows == 1797
    assert table.column("record_id").to_pylist() == source.column("record_id").to_pylist()
    agree = float((table.column("predicted").to_numpy() == eager).mean())
    assert agree >= min_agreement, agree


def test_ray_actor_pool_f32_matches_torch_and_int8_runs(attached, env):
    store, root, ref, data, *_ = env
    attached.ray()
    f32 = run_inference(
        ref,
        data,
        f"file://{root}/out/ray-f32",
        model_store=store,
        input_store=store,
        options=InferOptions(engine="ray", precision="f32", num_workers=2),
    )
    _check_predictions(env, f32, 0.999)
    assert f32.summary["engine"] == "ray" and f32.summary["runtime_precision"] == ["f32"]
    assert f32.summary["workers"] == 2
    int8 = run_inference(
        ref,
        data,
        f"file://{root}/out/ray-int8",
        model_store=store,
        input_store=store,
        options=InferOptions(engine="ray", precision="int8"),
    )
    _check_predictions(env, int8, 0.97)
    assert int8.summary["precision_used"] == "int8" and int8.summary["gate"]["passed"]


def test_spark_mapinarrow_bf16(attached, env):
    store, root, ref, data, *_ = env
    result = run_inference(
        ref,
        data,
        f"file://{root}/out/spark-bf16",
        model_store=store,
        input_store=store,
        options=InferOptions(engine="spark", precision="bf16", num_workers=2),
        spark=attached.spark(),
        tag="abai-infer-it",
    )
    _check_predictions(env, result, 0.99)
    assert result.summary["engine"] == "spark" and result.summary["runtime_precision"] == ["bf16"]


DAG_FILE = """# airflow DAG file (safe-mode parsing needs both words)
from tests.integration.test_infer import build_dag

dag = build_dag()
"""


def build_dag() -> Any:
    """Written as a DAG file too: dag.test() serialises DAGs from the dags folder."""
    from airflow.sdk import DAG, task

    from airflow_bigdata_ai.operators.infer import OpenVINOInferOperator

    with DAG("abai_infer_it", schedule=None, params={"model": "", "data": "", "report": ""}) as dag:
        infer = OpenVINOInferOperator(
            task_id="infer",
            model_ref="{{ params.model }}",
            input_data="{{ params.data }}",
            precision="int8",
            engine="ray",
        )

        @task
        def check(ref: dict[str, Any], **context: Any) -> None:
            summary = context["ti"].xcom_pull(task_ids="infer", key="inference_summary")
            with open(context["params"]["report"], "w") as handle:
                json.dump({"ref": ref, "summary": summary, "xcom_bytes": len(json.dumps(ref))}, handle)

        check(infer.output)
    return dag


def test_operator_dag_run_and_tampered_weights(airflow_db, shared_cluster, env, tmp_path, monkeypatch):
    store, root, ref, data, *_ = env
    conn = {
        "conn_type": "ray_on_spark",
        "host": "embedded",
        "extra": {"mode": "remote", "state_dir": shared_cluster.config.state_dir, "store_root": f"{root}"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_RAY_ON_SPARK_DEFAULT", json.dumps(conn))
    with open(os.path.join(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], "abai_infer_it.py"), "w") as handle:
        handle.write(DAG_FILE)
    dag = build_dag()
    report = tmp_path / "report.json"
    conf = {"model": ref.to_json(), "data": data.to_json(), "report": str(report)}
    run = dag.test(logical_date=LOGICAL_DATE, run_conf=conf)
    assert run.state == "success"
    got = json.loads(report.read_text())
    out = got["ref"]
    assert out["kind"] == "ShardSet" and out["num_rows"] == 1797 and got["xcom_bytes"] < 16384
    assert out["manifest_uri"].startswith(f"file://{root}/abai_infer_it/infer/ds=2026-11-24/_manifests/")
    summary = got["summary"]
    assert summary["precision_used"] == "int8" and summary["rows"] == 1797 and summary["accuracy"] > 0.9
    assert out["stats"]["precision_used"] == "int8"

    tampered = bytearray(store.read_bytes(ref.weights_uri))
    tampered[len(tampered) // 2] ^= 0x01  # one bit
    store.write_bytes(ref.weights_uri, bytes(tampered))
    try:
        report.unlink()
        run = dag.test(logical_date=datetime(2026, 11, 25, tzinfo=UTC), run_conf=conf)
        assert run.state == "failed" and not report.exists()
    finally:
        from tests.support.infer_models import trained_state_bytes

        store.write_bytes(ref.weights_uri, trained_state_bytes())


def test_user_factory_beside_the_dag_on_ray_and_spark(attached, tmp_path, monkeypatch):
    """A model factory in a module only this (task) process can import: the IR is built here, int8 included,
    and the Ray actors and Spark executors, which cannot import the module, only ever see the IR."""
    from tests.unit.test_infer_usercode import eager_predictions, make_project

    p = make_project(tmp_path, monkeypatch, rows=200)
    attached.ray()
    for engine, precision in (("ray", "int8"), ("spark", "f32")):
        result = run_inference(
            p.ref,
            p.data,
            f"file://{p.root}/store/out/{engine}",
            model_store=p.store,
            input_store=p.store,
            options=InferOptions(engine=engine, precision=precision, max_accuracy_drop=100.0, num_workers=2),
            spark=attached.spark() if engine == "spark" else None,
        )
        assert result.summary["engine"] == engine and result.summary["precision_used"] == precision
        assert p.name in result.summary["model_code"]
        predicted = read_table(p.store, result.shardset).column("predicted").to_numpy()
        assert len(predicted) == 200
        if precision == "f32":  # (int8 of an untrained model's near-tied logits may flip some)
            assert (predicted == eager_predictions(p, 1.0)).mean() >= 0.99
