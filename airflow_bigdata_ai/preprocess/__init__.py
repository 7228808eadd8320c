"""Data-parallel image/tabular preprocessing into ShardSets. No Airflow imports (usable from a notebook)."""

from airflow_bigdata_ai.preprocess.core import QUARANTINE_FILE, preprocess
from airflow_bigdata_ai.preprocess.engine import Progress, run_local, run_spark
from airflow_bigdata_ai.preprocess.errors import (
    REASONS,
    InconsistentOutput,
    QuarantineRecord,
    SettingsError,
    SourceError,
    SourceLayoutError,
    TooManyBadRecords,
)
from airflow_bigdata_ai.preprocess.images import ImageGuards, ImagePipeline, decode_image, to_tensor
from airflow_bigdata_ai.preprocess.labels import LabelsFile, parse_labels, read_labels
from airflow_bigdata_ai.preprocess.plan import normalise_output_spec, plan_job
from airflow_bigdata_ai.preprocess.process import PreprocessJob
from airflow_bigdata_ai.preprocess.sources import SourceSpec, list_units

__all__ = [
    "QUARANTINE_FILE",
    "REASONS",
    "ImageGuards",
    "ImagePipeline",
    "InconsistentOutput",
    "LabelsFile",
    "PreprocessJob",
    "Progress",
    "QuarantineRecord",
    "SettingsError",
    "SourceError",
    "SourceLayoutError",
    "SourceSpec",
    "TooManyBadRecords",
    "decode_image",
    "list_units",
    "normalise_output_spec",
    "parse_labels",
    "plan_job",
    "preprocess",
    "read_labels",
    "run_local",
    "run_spark",
    "to_tensor",
]
