"""Stage drivers as requests: run in the task's process (embedded) or as a job on the cluster (remote).

No Airflow, and nothing heavy at import: a thin Airflow worker builds requests, submits them over HTTP and
reads results without pyspark, Ray, torch or OpenVINO.
"""

from airflow_bigdata_ai.jobs.client import ClusterAuthError, JobsAPIError, JobsClient
from airflow_bigdata_ai.jobs.request import StageRequest, StoreSpec, submission_id, submission_prefix
from airflow_bigdata_ai.jobs.runner import ClusterJobRunner, InProcessRunner, JobState, StageFailed

__all__ = [
    "ClusterAuthError",
    "ClusterJobRunner",
    "InProcessRunner",
    "JobState",
    "JobsAPIError",
    "JobsClient",
    "StageFailed",
    "StageRequest",
    "StoreSpec",
    "submission_id",
    "submission_prefix",
]
