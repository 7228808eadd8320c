"""The warehouse example's data: scikit-learn's bundled breast-cancer table, loaded as a date partition.

``load_partition`` writes one logical date's rows into ``<database>.breast_cancer`` (created if missing,
partitioned by ``ds``) through Spark SQL on the shared cluster; a rerun replaces that date's rows.
``standardized_features`` is the preprocessing transform: one row's 30 measurements, standardised with the
bundled data's mean and deviation, as float32 features.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SOURCE_TABLE = "breast_cancer"
PREDICTIONS_TABLE = "breast_cancer_predictions"


def column_name(feature: str) -> str:
    """``mean radius`` -> ``mean_radius``: table columns of letters, digits and _."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", feature).strip("_")


@functools.cache
def _data() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    names = [column_name(f) for f in bunch.feature_names]
    values = bunch.data.astype(np.float64)
    return names, values, bunch.target.astype(np.int64), values.mean(axis=0), values.std(axis=0)


def feature_columns() -> list[str]:
    return list(_data()[0])


def load_partition(spark: SparkSession, database: str, ds: str) -> int:
    """Write the table's ``ds`` partition (569 rows: ``sample_id``, 30 measurements, ``label``)."""
    import pyarrow as pa

    names, values, labels, _mean, _std = _data()
    columns: dict[str, Any] = {"sample_id": [f"bc-{i:04d}" for i in range(len(labels))]}
    columns.update({name: values[:, j] for j, name in enumerate(names)})
    columns["label"] = labels
    table = pa.table(columns)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    ddl = ", ".join(["sample_id STRING", *[f"{n} DOUBLE" for n in names], "label BIGINT", "ds STRING"])
    spark.sql(f"CREATE TABLE IF NOT EXISTS {database}.{SOURCE_TABLE} ({ddl}) USING parquet PARTITIONED BY (ds)")
    frame = spark.createDataFrame(table.to_pandas())
    frame.createOrReplaceTempView("abai_breast_cancer_rows")
    spark.sql(
        f"INSERT OVERWRITE TABLE {database}.{SOURCE_TABLE} PARTITION (ds = '{ds}') "
        f"SELECT sample_id, {', '.join(names)}, label FROM abai_breast_cancer_rows"
    )
    return len(labels)


def standardized_features(row: dict[str, Any]) -> np.ndarray:
    """The row's 30 measurements, standardised, as float32 (other columns, e.g. ``sample_id``, ignored)."""
    names, _values, _labels, mean, std = _data()
    raw = np.asarray([float(row[name]) for name in names], dtype=np.float64)
    return ((raw - mean) / std).astype(np.float32)
