"""Handwritten digits end to end: scikit-learn's real 8x8 digits through the same three operators.

setup cluster -> write the digits as PNG files -> SparkPreprocessOperator -> RayTrainOperator (small CNN)
-> OpenVINOInferOperator (INT8 with its accuracy gate) -> report -> teardown (keeps the cluster by default).
The trained model is published as an Asset, which schedules ``digits_inference_on_new_model``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from airflow_bigdata_ai.examples.assets import DIGITS_FEATURES, DIGITS_MODEL, DIGITS_PREDICTIONS
from airflow_bigdata_ai.examples.datasets.examples import example_scale
from airflow_bigdata_ai.operators.cluster import SetupRayOnSparkClusterOperator, TeardownRayOnSparkClusterOperator
from airflow_bigdata_ai.operators.infer import OpenVINOInferOperator
from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator
from airflow_bigdata_ai.operators.train import RayTrainOperator

SCALE = example_scale()


@dag(
    dag_id="digits_e2e",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={"keep_cluster": True},
    tags=["airflow-bigdata-ai", "example"],
    doc_md=__doc__,
)
def digits_e2e():
    # [START digits_setup_cluster]
    setup = SetupRayOnSparkClusterOperator(task_id="setup_cluster")
    # [END digits_setup_cluster]

    @task
    def digit_images() -> str:
        from airflow_bigdata_ai.examples.datasets.examples import prepare_digits_source

        return prepare_digits_source(SCALE.digits_limit)

    images = digit_images()

    # [START digits_preprocess]
    features = SparkPreprocessOperator(
        task_id="preprocess",
        source={"uri": images, "labels": "folders"},
        transform=[
            {"op": "convert", "mode": "L"},
            {"op": "to_tensor", "dtype": "float32"},
            {"op": "normalize", "mean": [0.25], "std": [0.33]},
        ],
        outlets=[DIGITS_FEATURES],
    )
    # [END digits_preprocess]

    # [START digits_train]
    model = RayTrainOperator(
        task_id="train",
        train_data=features.output,
        model_factory="airflow_bigdata_ai.examples.models.digits:make_digits_cnn",
        epochs=SCALE.epochs,
        batch_size=64,
        lr=2e-3,
        num_workers=2,
        outlets=[DIGITS_MODEL],
    )
    # [END digits_train]

    # [START digits_infer]
    predictions = OpenVINOInferOperator(
        task_id="infer",
        model_ref=model.output,
        input_data=features.output,
        precision=SCALE.precision,
        max_accuracy_drop=1.0,
        outlets=[DIGITS_PREDICTIONS],
    )
    # [END digits_infer]

    @task
    def report(features: dict, model: dict, predictions: dict) -> dict:
        from airflow_bigdata_ai.examples.report import format_summary, pipeline_summary

        summary = pipeline_summary(features, model, predictions)
        print(format_summary(summary))
        return summary

    # [START digits_teardown_cluster]
    teardown = TeardownRayOnSparkClusterOperator(task_id="teardown_cluster", keep_running="{{ params.keep_cluster }}")

    setup >> images
    report(features.output, model.output, predictions.output) >> teardown.as_teardown(setups=setup)
    # [END digits_teardown_cluster]


digits_e2e()
