"""What a run of my_vision_pipeline produced, read straight from the shard store (no Airflow needed).

Run it as ``python inspect_outputs.py 2026-11-20``, or paste it into a notebook.
"""

from __future__ import annotations

import json
import os
import sys

from airflow_bigdata_ai.shards import current_shardset, open_store, read_table

date = sys.argv[1] if len(sys.argv) > 1 else "2026-11-20"
home = os.environ.get("AIRFLOW_BIGDATA_AI_HOME", "~/.cache/airflow-bigdata-ai")
root = "file://" + os.path.join(os.path.expanduser(home), "store")  # the default shard store
store = open_store(root)

# The committed output of each task sits at <store>/<dag_id>/<task_id>/ds=<logical date>/
features = current_shardset(store, f"{root}/my_vision_pipeline/preprocess/ds={date}")
predictions = current_shardset(store, f"{root}/my_vision_pipeline/infer/ds={date}")
assert features is not None and predictions is not None, "nothing committed for this date yet"

# Broken inputs are quarantined, not dropped silently: the report lists each one with its reason.
report = json.loads(store.read_bytes(features.stats["quarantine_report"]["uri"]))
quarantined = {r["record_id"]: r["reason"] for r in report["records"]}

rows = read_table(store, features)  # record_id, label and my transform's columns
preds = read_table(store, predictions)  # record_id, predicted, scores, label
print(
    json.dumps(
        {
            "rows": features.num_rows,
            "columns": rows.column_names,
            "code_version": sorted(set(rows.column("code_version").to_pylist())),
            "quarantined": quarantined,
            "predictions": preds.num_rows,
            "precision_used": predictions.stats["precision_used"],
            "accuracy": predictions.stats["accuracy"],
            "first": preds.slice(0, 3).select(["record_id", "predicted", "label"]).to_pylist(),
        },
        indent=1,
    )
)
