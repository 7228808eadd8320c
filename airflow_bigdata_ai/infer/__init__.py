"""OpenVINO inference core (no Airflow): verified model -> cached IR -> gated precision -> distributed predict.

Heavy engines (torch, openvino, nncf, ray, pyspark) are imported inside the functions that use them.
"""

from airflow_bigdata_ai.infer.engine import InferOptions, InferResult, run_inference
from airflow_bigdata_ai.infer.errors import AccuracyGateFailed, InferenceError, InputShapeRejected, ModelLoadFailed
from airflow_bigdata_ai.infer.model import check_input_shape, load_verified_model

__all__ = [
    "AccuracyGateFailed",
    "InferOptions",
    "InferResult",
    "InferenceError",
    "InputShapeRejected",
    "ModelLoadFailed",
    "check_input_shape",
    "load_verified_model",
    "run_inference",
]
