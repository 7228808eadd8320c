"""SparkPreprocessOperator without a cluster: templating, XCom value, failure mapping, on_kill, tag."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_bigdata_ai.examples.datasets.corrupt import corrupt_folder
from airflow_bigdata_ai.examples.datasets.digits import CLASSES, write_digits
from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator
from airflow_bigdata_ai.shards import ShardSet, open_store, read_table


class _NoSparkAttached:
    """AttachedCluster stand-in: ``spark()`` returns None, so the core runs in-process (same bytes)."""

    endpoint = SimpleNamespace(cluster_id="fake", spark_ui_url="http://127.0.0.1:4040", ray_dashboard_url="")

    def __init__(self) -> None:
        self.closed = False

    def spark(self) -> Any:
        return None

    def guard(self, what: str) -> contextlib.AbstractContextManager[None]:  # no cluster to lose
        return contextlib.nullcontext()

    def close(self) -> None:
        self.closed = True


def _context(pushed: dict[str, Any]) -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id="dag",
        task_id="prep",
        run_id="manual__2026-11-24T00:00:00+00:00",
        map_index=-1,
        try_number=1,
        xcom_push=lambda key, value: pushed.__setitem__(key, value),
    )
    return {"ti": ti, "logical_date": None}


def _operator(tmp_path: Any, source: Any, **kwargs: Any) -> tuple[SparkPreprocessOperator, _NoSparkAttached]:
    op = SparkPreprocessOperator(
        task_id="prep", source=source, output_uri=str(tmp_path / "out"), progress_interval_s=0, **kwargs
    )
    attached = _NoSparkAttached()
    op.hook.attach = lambda: attached  # type: ignore[method-assign]
    op.hook.store_for = lambda uri=None: open_store(uri)  # type: ignore[assignment,method-assign,misc]
    return op, attached


def test_template_fields_render_source_output_and_params():
    op = SparkPreprocessOperator(
        task_id="prep",
        source={"uri": "/data/{{ ds }}/images", "classes": ["a", "b"]},
        output_uri="/out/{{ ds_nodash }}",
        transform=[{"op": "resize", "size": "{{ params.size }}"}],
        transform_kwargs={"size": "{{ params.size }}"},
        max_bad_fraction="{{ params.bad }}",
    )
    op.render_template_fields({"ds": "2026-11-24", "ds_nodash": "20261124", "params": {"size": 8, "bad": 0.02}})
    assert op.source == {"uri": "/data/2026-11-24/images", "classes": ["a", "b"]}
    assert op.output_uri == "/out/20261124"
    assert op.transform == [{"op": "resize", "size": "8"}]
    assert op.transform_kwargs == {"size": "8"}
    assert float(op.max_bad_fraction) == 0.02


def test_execute_returns_shardset_dict_and_pushes_links(tmp_path):
    root = str(tmp_path / "png")
    write_digits(root, "png", limit=50)
    op, attached = _operator(tmp_path, root, transform="airflow_bigdata_ai.examples.transforms:digits_float")
    pushed: dict[str, Any] = {}
    value = op.execute(_context(pushed))  # type: ignore[arg-type]
    shardset = ShardSet.from_dict(value)
    assert shardset.num_rows == 50 and shardset.producer.task_id == "prep"
    assert read_table(open_store(str(tmp_path / "out")), shardset).num_rows == 50
    assert pushed["spark_ui_url"] == "http://127.0.0.1:4040" and attached.closed


def test_too_many_bad_records_fails_without_retry(tmp_path):
    root = str(tmp_path / "png")
    write_digits(root, "png", limit=60)
    corrupt_folder(root, fraction=0.1)
    op, attached = _operator(tmp_path, {"uri": root, "classes": list(CLASSES)}, guards={"channels": [1]})
    with pytest.raises(AirflowFailException, match=r"6 of 60 inputs \(10.00%\) were quarantined"):
        op.execute(_context({}))  # type: ignore[arg-type]
    assert attached.closed


def test_on_kill_interrupts_only_its_tag():
    op = SparkPreprocessOperator(task_id="prep", source="/x")
    tag = op.job_tag(_context({}))  # type: ignore[arg-type]
    assert tag == "abai-dag-prep-manual__2026-11-24T00:00:00+00:00--1-1"
    calls: list[str] = []
    op._spark = SimpleNamespace(interruptTag=calls.append)
    op._tag = tag
    op.on_kill()
    assert calls == [tag]
    op._spark = None
    op.on_kill()  # nothing running: nothing to interrupt
    assert calls == [tag]


def sized(image: Any, size: int = 4) -> Any:
    """A user function passed as an object; uses ``size`` as a number."""
    import numpy as np

    return np.asarray(image.convert("L").resize((size, size)), dtype=np.float32)[None]


def test_callable_transform_is_not_called_by_templating_and_kwargs_are_coerced(tmp_path):
    root = str(tmp_path / "png")
    write_digits(root, "png", limit=20)
    op, _ = _operator(
        tmp_path, root, transform=sized, transform_kwargs={"size": "{{ params.size }}"},
        output_spec={"image": ["tensor", [1, "{{ params.size }}", 6], "float32"]},
    )  # fmt: skip
    assert op.transform is None and op.transform_callable is sized
    op.render_template_fields({"params": {"size": 6}})  # Airflow calls callables in template fields
    assert op.transform_callable is sized and op.transform_kwargs == {"size": "6"}
    shardset = ShardSet.from_dict(op.execute(_context({})))  # type: ignore[arg-type]
    assert shardset.num_rows == 20 and shardset.schema["image"] == "tensor<float32>[1,6,6]"
    assert shardset.stats["transform_kwargs"] == {"size": 6} and shardset.stats["quarantined"] == 0


def test_builtin_pipeline_object_is_templated_as_steps():
    from airflow_bigdata_ai.preprocess import ImagePipeline

    pipeline = ImagePipeline.from_spec([{"op": "resize", "size": [4, 4]}])
    op = SparkPreprocessOperator(task_id="prep", source="/x", transform=pipeline)
    op.render_template_fields({})
    assert op.transform == [{"op": "resize", "size": [4, 4]}] and op.transform_callable is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"transform": "abai_no_such_module:prepare"}, "UserCodeError: cannot import module 'abai_no_such_module'"),
        ({"rows_per_shard": "{{ params.missing }}"}, "SettingsError: rows_per_shard"),
        ({"output_spec": {"image": ["tensor", [1, 8], "text"]}}, "SettingsError: output_spec"),
        ({"transform": [{"op": "blur"}]}, "SettingsError: transform steps"),
        ({"source_labels": "missing.csv"}, "SourceLayoutError: labels file .*missing.csv does not exist"),
        ({"source_labels": "bad.csv"}, "SourceLayoutError: labels file"),
    ],
)
def test_errors_a_retry_cannot_fix_fail_without_retry_before_attaching(tmp_path, kwargs, message):
    root = tmp_path / "png"
    write_digits(str(root), "png", limit=4)
    (tmp_path / "bad.csv").write_text("file,label\n")
    source: Any = str(root)
    if "source_labels" in kwargs:
        source = {"uri": str(root), "labels": str(tmp_path / kwargs.pop("source_labels"))}
    op, _ = _operator(tmp_path, source, **kwargs)
    op.hook.attach = lambda: pytest.fail("attached before the settings were checked")  # type: ignore[method-assign]
    op.render_template_fields({"params": {}})
    with pytest.raises(AirflowFailException, match=message):
        op.execute(_context({}))  # type: ignore[arg-type]


def test_a_source_without_images_fails_without_retry(tmp_path):
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "notes.txt").write_text("no images here")
    op, attached = _operator(tmp_path, str(tmp_path / "txt"))
    with pytest.raises(AirflowFailException, match=r"SourceLayoutError: source .* has no files ending in"):
        op.execute(_context({}))  # type: ignore[arg-type]
    assert attached.closed
