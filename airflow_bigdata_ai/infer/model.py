"""Verified model loading and input-shape sanity checks (no Airflow, no OpenVINO).

The weights are hashed before a single byte is deserialised, and then loaded with
``torch.load(weights_only=True)``: a tampered or swapped file is refused, never executed.
"""

from __future__ import annotations

import math

from airflow_bigdata_ai.infer.errors import InputShapeRejected
from airflow_bigdata_ai.models.loading import load_model as load_verified_model
from airflow_bigdata_ai.models.loading import read_verified_weights

# Limits for one sample: generous for real vision models (4K RGB is 25M elements), tiny next to a bomb.
MAX_RANK = 4
MAX_DIM = 16384
MAX_SAMPLE_ELEMENTS = 64 * 1024 * 1024
MAX_REQUEST_BYTES = 1024 * 1024 * 1024


def check_input_shape(shape: list[int] | tuple[int, ...], request_batch: int = 1) -> tuple[int, ...]:
    """Reject absurd per-sample shapes (and request sizes) before conversion or compile allocate anything."""
    dims = tuple(shape)
    if not 1 <= len(dims) <= MAX_RANK:
        raise InputShapeRejected(f"input shape {list(dims)} has rank {len(dims)}; expected 1..{MAX_RANK}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM for d in dims):
        raise InputShapeRejected(f"input shape {list(dims)} must be positive integers <= {MAX_DIM}")
    elements = math.prod(dims)
    if elements > MAX_SAMPLE_ELEMENTS:
        raise InputShapeRejected(
            f"input shape {list(dims)} has {elements:,} elements per sample; the limit is {MAX_SAMPLE_ELEMENTS:,}"
        )
    if request_batch < 1 or elements * 4 * request_batch > MAX_REQUEST_BYTES:
        raise InputShapeRejected(
            f"request batch {request_batch} x {list(dims)} float32 exceeds {MAX_REQUEST_BYTES // 2**20} MiB per request"
        )
    return dims


__all__ = ["check_input_shape", "load_verified_model", "read_verified_weights"]
