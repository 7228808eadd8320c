"""Inference only, scheduled on data: runs whenever ``digits_e2e`` publishes a new model Asset.

The asset event's extra carries the ModelRef (and through it the ShardSet it was trained on), so this
DAG needs no XCom from another DAG: it scores the features with the new model in bf16.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from airflow_bigdata_ai.examples.assets import DIGITS_MODEL
from airflow_bigdata_ai.operators.infer import OpenVINOInferOperator


@dag(
    dag_id="digits_inference_on_new_model",
    schedule=[DIGITS_MODEL],
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    tags=["airflow-bigdata-ai", "example", "asset-scheduled"],
    doc_md=__doc__,
)
def digits_inference_on_new_model():
    @task
    def new_model(**context) -> dict:
        """The newest ModelRef among the events that triggered this run."""
        events = context["triggering_asset_events"][DIGITS_MODEL]
        if not events:
            raise ValueError(f"no {DIGITS_MODEL.name} event triggered this run")
        return events[-1].extra["reference"]

    @task
    def trained_on(model: dict) -> dict:
        return model["trained_on"]

    # [START asset_scheduled_infer]
    model = new_model()
    OpenVINOInferOperator(
        task_id="infer_bf16",
        model_ref=model,
        input_data=trained_on(model),
        precision="bf16",
        on_accuracy_drop="fallback",
    )
    # [END asset_scheduled_infer]


digits_inference_on_new_model()
