"""Distributed training on the shared cluster (Ray Train + PyTorch), Airflow-free."""

from airflow_bigdata_ai.train.config import EpochProgress, RunKey, TrainConfig
from airflow_bigdata_ai.train.core import (
    TrainingFailed,
    checkpoint_uri,
    discard_run,
    has_checkpoint,
    read_result,
    stop_current_job,
    train,
)

__all__ = [
    "EpochProgress",
    "RunKey",
    "TrainConfig",
    "TrainingFailed",
    "checkpoint_uri",
    "discard_run",
    "has_checkpoint",
    "read_result",
    "stop_current_job",
    "train",
]
