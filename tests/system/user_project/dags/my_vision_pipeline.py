"""My own pipeline: my images and labels -> my transform -> my model -> int8 inference.

my_project/
    dags/my_vision_pipeline.py   this DAG file
    dags/my_vision/              my code (transform, model), shipped to the cluster by the operators
    data/images/...              my images, in any nested folders
    data/labels.csv              path,label for every image (paths relative to data/images/)
"""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import DAG
from my_vision import CLASSES

from airflow_bigdata_ai.operators.infer import OpenVINOInferOperator
from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator
from airflow_bigdata_ai.operators.train import RayTrainOperator

DATA = Path(__file__).resolve().parent.parent / "data"

# [START my_vision_dag]
with DAG(
    dag_id="my_vision_pipeline",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    params={"data": str(DATA), "size": 32, "width": 16},
    tags=["my-project"],
):
    features = SparkPreprocessOperator(
        task_id="preprocess",
        source={
            "uri": "{{ params.data }}/images",
            "labels": "{{ params.data }}/labels.csv",  # outside the image folder
            "classes": list(CLASSES),  # label names in labels.csv -> 0, 1, 2
        },
        transform="my_vision.transforms:prepare",  # my function, by import path
        transform_kwargs={"size": "{{ params.size }}"},  # rendered as "32", passed as 32
        max_bad_fraction=0.05,  # quarantine up to 5% broken images before failing
    )

    model = RayTrainOperator(
        task_id="train",
        train_data=features.output,
        model_factory="my_vision.model:make_model",  # my model
        factory_kwargs={"num_classes": len(CLASSES), "width": "{{ params.width }}"},
        epochs=4,
        batch_size=32,
        lr=5e-3,
    )

    predictions = OpenVINOInferOperator(
        task_id="infer",
        model_ref=model.output,
        input_data=features.output,
        precision="int8",  # NNCF quantisation, calibrated on the input
        max_accuracy_drop=5.0,  # fail if int8 loses more than 5 points against f32
    )
# [END my_vision_dag]
