"""The pipeline summary is computed from the three references alone."""

from __future__ import annotations

from airflow_bigdata_ai.examples.report import format_summary, pipeline_summary
from airflow_bigdata_ai.shards import ModelRef, ShardSet

SHA = "a" * 64


def _shardset(uri: str, rows: int, stats: dict) -> ShardSet:
    return ShardSet(
        manifest_uri=uri, manifest_sha256=SHA, schema={}, num_rows=rows, num_shards=1, total_bytes=10, stats=stats
    )


def test_summary_and_table():
    features = _shardset(
        "file:///s/d/p/ds=x/_manifests/a.json",
        95,
        {
            "inputs": 100,
            "quarantined": 5,
            "by_reason": {"truncated": 5},
            "rows_per_s": 50.0,
            "elapsed_s": 2.0,
            "quarantine_report": {"uri": "file:///s/q.json"},
        },
    )
    model = ModelRef(
        weights_uri="file:///s/w.pt",
        weights_sha256=SHA,
        model_factory="m.x:f",
        input_shape=[1, 8, 8],
        metrics={"val_accuracy": 0.97, "samples_per_s": 300.0, "wall_seconds": 30.0, "epoch_seconds": [5.0]},
    )
    predictions = _shardset(
        "file:///s/d/i/ds=x/_manifests/b.json",
        95,
        {
            "precision_used": "int8",
            "accuracy": 0.96,
            "images_per_s": 800.0,
            "wall_s": 1.0,
            "gate": {"f32_accuracy": 0.97, "int8_accuracy": 0.965},
        },
    )
    summary = pipeline_summary(features.to_dict(), model.to_json(), predictions)
    assert summary["quarantined"] == 5 and summary["inputs"] == 100 and summary["rows"] == 95
    assert summary["accuracy_f32"] == 0.97 and summary["accuracy_int8"] == 0.965
    assert summary["images_per_s"] == {"preprocess": 50.0, "train": 300.0, "infer": 800.0}
    table = format_summary(summary, {"train": 31.0})
    assert any(line.startswith("accuracy INT8") and line.endswith("96.50%") for line in table.splitlines())
    assert "task seconds train" in table and "file:///s/q.json" in table
