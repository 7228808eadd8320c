"""One summary of a preprocess -> train -> infer pipeline, built from the three references alone.

Used by the example DAGs' report task and by ``make demo``; no Airflow import, no data read.
"""

from __future__ import annotations

from typing import Any

from airflow_bigdata_ai.shards import ModelRef, ShardSet


def pipeline_summary(features: Any, model: Any, predictions: Any) -> dict[str, Any]:
    """Rows, quarantine, accuracies (FP32 and the precision that ran), throughput per stage, output URIs."""
    feats, ref, preds = ShardSet.coerce(features), ModelRef.coerce(model), ShardSet.coerce(predictions)
    pre, met, inf = feats.stats, ref.metrics, preds.stats
    gate = inf.get("gate") or {}
    precision = inf.get("precision_used", "f32")
    epoch_seconds = met.get("epoch_seconds")
    train_rows = feats.num_rows
    return {
        "rows": feats.num_rows,
        "inputs": pre.get("inputs"),
        "quarantined": pre.get("quarantined", 0),
        "quarantined_by_reason": pre.get("by_reason", {}),
        "val_accuracy_torch": met.get("val_accuracy"),
        "accuracy_f32": gate.get("f32_accuracy", inf.get("accuracy") if precision == "f32" else None),
        f"accuracy_{precision}": gate.get(f"{precision}_accuracy", inf.get("accuracy")),
        "accuracy_all_rows": inf.get("accuracy"),
        "precision_used": precision,
        "images_per_s": {
            "preprocess": pre.get("rows_per_s"),
            "train": met.get("samples_per_s"),
            "infer": inf.get("images_per_s"),
        },
        "seconds": {
            "preprocess": pre.get("elapsed_s"),
            "train": met.get("wall_seconds"),
            "train_per_epoch": epoch_seconds,
            "infer": inf.get("wall_s"),
        },
        "train_rows": train_rows,
        "outputs": {
            "features": feats.manifest_uri,
            "model": ref.weights_uri,
            "predictions": preds.manifest_uri,
            "quarantine_report": (pre.get("quarantine_report") or {}).get("uri"),
        },
    }


def format_summary(summary: dict[str, Any], task_seconds: dict[str, float] | None = None) -> str:
    """A plain-text table for logs and the terminal."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}"
        return "-" if value is None else str(value)

    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * float(value):.2f}%"

    lines = [
        f"{'rows (ok / inputs)':<34}{fmt(summary['rows'])} / {fmt(summary['inputs'])}",
        f"{'quarantined':<34}{fmt(summary['quarantined'])} {summary['quarantined_by_reason'] or ''}",
        f"{'validation accuracy (torch)':<34}{pct(summary['val_accuracy_torch'])}",
        f"{'accuracy FP32 (OpenVINO, holdout)':<34}{pct(summary['accuracy_f32'])}",
    ]
    precision = summary["precision_used"]
    if precision != "f32":
        lines.append(f"{f'accuracy {precision.upper()} (holdout)':<34}{pct(summary.get(f'accuracy_{precision}'))}")
    lines.append(f"{'precision that ran':<34}{precision}")
    for stage, rate in summary["images_per_s"].items():
        lines.append(f"{f'images/s {stage}':<34}{fmt(rate)}")
    for task, seconds in (task_seconds or {}).items():
        lines.append(f"{f'task seconds {task}':<34}{fmt(seconds)}")
    for name, uri in summary["outputs"].items():
        lines.append(f"{f'output {name}':<34}{uri}")
    return "\n".join(lines)
