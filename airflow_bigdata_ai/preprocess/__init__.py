"""Data-parallel image/tabular preprocessing into ShardSets. No Airflow imports (usable from a notebook)."""

from airflow_bigdata_ai.preprocess.core import QUARANTINE_FILE, preprocess
from airflow_bigdata_ai.preprocess.engine import Progress, run_local, run_spark
from airflow_bigdata_ai.preprocess.errors import (
    REASONS,
    InconsistentOutput,
    QuarantineRecord,
    SourceError,
    TooManyBadRecords,
)
from airflow_bigdata_ai.preprocess.images import ImageGuards, ImagePipeline, decode_image, to_tensor
from airflow_bigdata_ai.preprocess.process import ShardJob, import_callable, resolve_transform
from airflow_bigdata_ai.preprocess.sources import SourceSpec, list_units

__all__ = [
    "QUARANTINE_FILE",
    "REASONS",
    "ImageGuards",
    "ImagePipeline",
    "InconsistentOutput",
    "Progress",
    "QuarantineRecord",
    "ShardJob",
    "SourceError",
    "SourceSpec",
    "TooManyBadRecords",
    "decode_image",
    "import_callable",
    "list_units",
    "preprocess",
    "resolve_transform",
    "run_local",
    "run_spark",
    "to_tensor",
]
