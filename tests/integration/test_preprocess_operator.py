"""SparkPreprocessOperator end to end under ``dag.test()``: real connection, hook, shared cluster, XCom.

Covers templating (``{{ params }}``), the logical-date partitioned output, a rerun of the same date
(identical checksums, one manifest) and the no-retry failure above ``max_bad_fraction``.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_bigdata_ai.examples.datasets.corrupt import corrupt_folder
from airflow_bigdata_ai.examples.datasets.digits import CLASSES, write_digits
from airflow_bigdata_ai.preprocess.sources import shard_count

pytestmark = pytest.mark.integration

LOGICAL_DATE = datetime(2026, 11, 24, tzinfo=UTC)


DAG_FILE = """# airflow DAG file (safe-mode discovery needs both words)
from tests.integration.test_preprocess_operator import build_dag

dag = build_dag()
"""


def build_dag() -> Any:
    """The test DAG; also written as a DAG file, because dag.test() serialises DAGs from the dags folder."""
    from airflow.sdk import DAG, task

    from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator

    with DAG("abai_preprocess_it", schedule=None, params={"src": "", "bad": 0.01, "report": ""}) as dag:
        prep = SparkPreprocessOperator(
            task_id="prep",
            source={"uri": "{{ params.src }}", "classes": list(CLASSES)},
            transform="airflow_bigdata_ai.examples.transforms:digits_float",
            guards={"channels": [1]},
            rows_per_shard=400,
            max_bad_fraction="{{ params.bad }}",
            progress_interval_s=1.0,
        )

        @task
        def check(ref: dict[str, Any], **context: Any) -> None:
            from airflow_bigdata_ai.shards import ShardSet, load_manifest, open_store

            report = context["params"]["report"]
            shardset = ShardSet.coerce(ref)
            store = open_store(shardset.dataset_uri.rsplit("/ds=", 1)[0])
            sums = [s.sha256 for s in load_manifest(store, shardset).shards]
            with open(report, "w") as handle:
                json.dump({"ref": shardset.to_dict(), "sums": sums, "xcom_bytes": len(json.dumps(ref))}, handle)

        check(prep.output)
    return dag


@pytest.fixture
def connection(shared_cluster: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    store_root = str(tmp_path / "store")
    conn = {
        "conn_type": "ray_on_spark",
        "host": "embedded",
        "extra": {"mode": "remote", "state_dir": shared_cluster.config.state_dir, "store_root": store_root},
    }
    monkeypatch.setenv("AIRFLOW_CONN_RAY_ON_SPARK_DEFAULT", json.dumps(conn))
    return store_root


def test_operator_dag_run_rerun_and_failure(airflow_db, connection, tmp_path):
    from airflow_bigdata_ai.shards import open_store

    src = str(tmp_path / "digits")
    write_digits(src, "png")
    report = tmp_path / "report.json"
    with open(os.path.join(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], "abai_preprocess_it.py"), "w") as handle:
        handle.write(DAG_FILE)
    dag = build_dag()

    run = dag.test(logical_date=LOGICAL_DATE, run_conf={"src": src, "report": str(report)})
    assert run.state == "success"
    first = json.loads(report.read_text())
    ref = first["ref"]
    cores = os.cpu_count() or 1  # the embedded cluster publishes this machine's cores: one task per core
    assert ref["num_rows"] == 1797 and ref["num_shards"] == shard_count(1797, 400, cores)
    assert ref["stats"]["parallelism"] == cores and first["xcom_bytes"] < 8192
    assert ref["manifest_uri"].startswith(f"file://{connection}/abai_preprocess_it/prep/ds=2026-11-24/_manifests/")
    assert ref["producer"]["task_id"] == "prep" and ref["stats"]["quarantined"] == 0

    report.unlink()
    run = dag.test(logical_date=LOGICAL_DATE, run_conf={"src": src, "report": str(report)})
    assert run.state == "success"
    second = json.loads(report.read_text())
    assert second["sums"] == first["sums"]
    dataset = f"{connection}/abai_preprocess_it/prep/ds=2026-11-24"
    assert len([u for u in open_store(connection).list(dataset) if "/_manifests/" in u.path]) == 1

    bad = str(tmp_path / "bad")
    shutil.copytree(src, bad)
    corrupt_folder(bad, fraction=0.05)
    report.unlink()
    run = dag.test(logical_date=datetime(2026, 11, 25, tzinfo=UTC), run_conf={"src": bad, "report": str(report)})
    assert run.state == "failed" and not report.exists()


USER_DAG_FILE = '''"""A user's DAG file (airflow DAG): the transform is a function defined here, passed as an object."""
import json

import numpy as np
from airflow.sdk import DAG, task

from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator


def prepare(image, size: int = 4):
    rgb = image.convert("RGB").resize((size, size))
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)


with DAG("abai_preprocess_user_it", schedule=None, params={"src": "", "labels": "", "size": 8, "report": ""}) as dag:
    prep = SparkPreprocessOperator(
        task_id="prep",
        source={"uri": "{{ params.src }}", "labels": "{{ params.labels }}", "classes": [str(d) for d in range(10)]},
        transform=prepare,
        transform_kwargs={"size": "{{ params.size }}"},
        output_spec={"image": ["tensor", [3, 8, 8], "float32"]},
        max_bad_fraction=0.0,
    )

    @task
    def check(ref, **context):
        with open(context["params"]["report"], "w") as handle:
            json.dump(ref, handle)

    check(prep.output)
'''


def test_user_dag_callable_templated_kwargs_output_spec_and_labels_outside(airflow_db, connection, tmp_path):
    """The first-try path of a user's DAG: a function object from the DAG file (Airflow loads it under a
    generated module name, so it travels by value), ``"{{ params.size }}"`` for an ``int`` parameter, the
    documented ``output_spec`` form, and a labels CSV in another folder than the images (nested, no classes
    folders)."""
    from airflow.dag_processing.dagbag import DagBag

    digits = tmp_path / "digits"
    write_digits(str(digits), "png", limit=24)
    images, rows = tmp_path / "incoming" / "images", ["path,label"]
    for index, path in enumerate(sorted(digits.rglob("*.png"))):
        rel = f"cam{index % 2}/{index:03d}.png"
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, images / rel)
        rows.append(f"{rel},{path.parent.name}")
    labels = tmp_path / "metadata" / "labels.csv"
    labels.parent.mkdir()
    labels.write_text("\n".join(rows) + "\n")

    dag_file = os.path.join(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], "abai_preprocess_user_it.py")
    with open(dag_file, "w") as handle:
        handle.write(USER_DAG_FILE)
    bag = DagBag(dag_folder=dag_file)
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["abai_preprocess_user_it"]
    report = tmp_path / "ref.json"
    conf = {"src": str(images), "labels": str(labels), "size": 8, "report": str(report)}
    run = dag.test(logical_date=LOGICAL_DATE, run_conf=conf)
    assert run.state == "success"
    ref = json.loads(report.read_text())
    assert ref["num_rows"] == 24 and ref["stats"]["quarantined"] == 0
    assert ref["schema"]["image"] == "tensor<float32>[3,8,8]"
    assert ref["stats"]["transform_kwargs"] == {"size": 8}
    assert ref["stats"]["transform"].endswith(":prepare")
    assert ref["stats"]["labels_file"]["uri"] == f"file://{labels}"
