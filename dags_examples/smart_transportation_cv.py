"""Smart transportation: classify road users in camera crops, end to end on one shared cluster.

setup cluster -> generate the day's camera crops -> SparkPreprocessOperator (decode, resize, normalise)
-> RayTrainOperator (CNN, 2 workers, DDP) -> OpenVINOInferOperator (INT8 with its accuracy gate)
-> report -> teardown (or keep the warm cluster for the next run: param ``keep_cluster``).
Every output lands under ``<store>/<dag>/<task>/ds=<logical date>``, so backfills are safe.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from airflow_bigdata_ai.examples.assets import TRAFFIC_FEATURES, TRAFFIC_MODEL, TRAFFIC_PREDICTIONS
from airflow_bigdata_ai.examples.datasets.examples import TRAFFIC_CLASSES, example_scale
from airflow_bigdata_ai.operators.cluster import SetupRayOnSparkClusterOperator, TeardownRayOnSparkClusterOperator
from airflow_bigdata_ai.operators.infer import OpenVINOInferOperator
from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator
from airflow_bigdata_ai.operators.train import RayTrainOperator

SCALE = example_scale()
SIZE = SCALE.traffic_size


@dag(
    dag_id="smart_transportation_cv",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={"images": SCALE.traffic_images, "keep_cluster": True},
    tags=["airflow-bigdata-ai", "example", "computer-vision"],
    doc_md=__doc__,
)
def smart_transportation_cv():
    setup = SetupRayOnSparkClusterOperator(task_id="setup_cluster")

    @task
    def camera_crops(**context) -> str:
        """The day's crops (deterministic per date): stands in for the cameras' upload folder."""
        from airflow_bigdata_ai.examples.datasets.examples import prepare_traffic_source

        return prepare_traffic_source(context["ds"], int(context["params"]["images"]))

    crops = camera_crops()

    # [START traffic_preprocess]
    features = SparkPreprocessOperator(
        task_id="preprocess",
        source={"uri": crops, "labels": "folders", "classes": list(TRAFFIC_CLASSES)},
        transform=[
            {"op": "convert", "mode": "RGB"},
            {"op": "resize", "size": [SIZE, SIZE]},
            {"op": "to_tensor", "dtype": "float32"},
            {"op": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        ],
        guards={"max_pixels": 4096 * 4096},
        outlets=[TRAFFIC_FEATURES],
    )
    # [END traffic_preprocess]

    model = RayTrainOperator(
        task_id="train",
        train_data=features.output,
        model_factory="airflow_bigdata_ai.examples.models.traffic:make_traffic_cnn",
        factory_kwargs={"num_classes": len(TRAFFIC_CLASSES), "size": SIZE},
        epochs=SCALE.epochs,
        batch_size=64,
        lr=3e-3,
        num_workers=2,
        val_fraction=0.2,
        outlets=[TRAFFIC_MODEL],
    )

    # [START traffic_infer]
    predictions = OpenVINOInferOperator(
        task_id="infer",
        model_ref=model.output,
        input_data=features.output,
        precision=SCALE.precision,
        max_accuracy_drop=1.0,
        on_accuracy_drop="fail",
        outlets=[TRAFFIC_PREDICTIONS],
    )
    # [END traffic_infer]

    @task
    def report(features: dict, model: dict, predictions: dict) -> dict:
        from airflow_bigdata_ai.examples.report import format_summary, pipeline_summary

        summary = pipeline_summary(features, model, predictions)
        print(format_summary(summary))
        return summary

    teardown = TeardownRayOnSparkClusterOperator(task_id="teardown_cluster", keep_running="{{ params.keep_cluster }}")

    setup >> crops
    report(features.output, model.output, predictions.output) >> teardown.as_teardown(setups=setup)


smart_transportation_cv()
