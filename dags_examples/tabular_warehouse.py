"""Warehouse in, warehouse out: a date-partitioned table -> SQL + Python transform -> MLP -> OpenVINO ->
the predictions as the same date's partition of a table analysts query with Spark SQL.

setup cluster -> load the day's rows into ``abai_examples.breast_cancer`` (scikit-learn's bundled table)
-> SparkPreprocessOperator over ``SELECT ... WHERE ds = '{{ ds }}'`` -> RayTrainOperator (MLP) ->
OpenVINOInferOperator -> PublishTablePartitionOperator (``abai_examples.breast_cancer_predictions``,
partition ``ds``) -> teardown (keeps the cluster).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from airflow_bigdata_ai.examples.datasets.examples import example_scale
from airflow_bigdata_ai.operators.cluster import SetupRayOnSparkClusterOperator, TeardownRayOnSparkClusterOperator
from airflow_bigdata_ai.operators.infer import OpenVINOInferOperator
from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator
from airflow_bigdata_ai.operators.tables import PublishTablePartitionOperator
from airflow_bigdata_ai.operators.train import RayTrainOperator

DATABASE = "abai_examples"
SCALE = example_scale()


@dag(
    dag_id="tabular_warehouse",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["airflow-bigdata-ai", "example"],
    doc_md=__doc__,
)
def tabular_warehouse():
    setup = SetupRayOnSparkClusterOperator(task_id="setup_cluster")

    @task
    def load_source_partition(ds: str | None = None) -> int:
        from airflow_bigdata_ai.examples.tabular import load_partition
        from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook

        attached = RayOnSparkHook().attach()
        try:
            return load_partition(attached.spark(), DATABASE, str(ds))
        finally:
            attached.close()

    loaded = load_source_partition()

    # [START tabular_preprocess]
    features = SparkPreprocessOperator(
        task_id="preprocess",
        source={
            "sql": f"SELECT * FROM {DATABASE}.breast_cancer WHERE ds = '{{{{ ds }}}}'",
            "id_column": "sample_id",
            "label_column": "label",
        },
        transform="airflow_bigdata_ai.examples.tabular:standardized_features",
        rows_per_shard=256,
    )
    # [END tabular_preprocess]

    model = RayTrainOperator(
        task_id="train",
        train_data=features.output,
        model_factory="airflow_bigdata_ai.examples.models.tabular:make_tabular_mlp",
        epochs=SCALE.epochs * 3,
        batch_size=32,
        lr=5e-3,
        num_workers=1,
        training={"feature_column": "features"},
    )

    predictions = OpenVINOInferOperator(
        task_id="infer",
        model_ref=model.output,
        input_data=features.output,
        image_column="features",
        precision="f32",
    )

    # [START tabular_publish]
    published = PublishTablePartitionOperator(
        task_id="publish_predictions",
        shardset=predictions.output,
        table=f"{DATABASE}.breast_cancer_predictions",
    )
    # [END tabular_publish]

    teardown = TeardownRayOnSparkClusterOperator(task_id="teardown_cluster", keep_running=True)
    setup >> loaded >> features
    published >> teardown.as_teardown(setups=setup)


tabular_warehouse()
