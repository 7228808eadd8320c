"""Verified model loading and input-shape sanity checks (no Airflow, no OpenVINO).

The weights are hashed before a single byte is deserialised, and then loaded with
``torch.load(weights_only=True)``: a tampered or swapped file is refused, never executed.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import math
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.infer.errors import InputShapeRejected
from airflow_bigdata_ai.shards.errors import ChecksumMismatch
from airflow_bigdata_ai.shards.refs import ModelRef

if TYPE_CHECKING:
    import torch

    from airflow_bigdata_ai.shards.store import ShardStore

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


def read_verified_weights(ref: ModelRef, store: ShardStore) -> bytes:
    """The weights file's bytes, only if their sha256 is the one the ModelRef recorded."""
    data = store.read_bytes(store.resolve(ref.weights_uri))
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.weights_sha256:
        raise ChecksumMismatch(
            f"weights {ref.weights_uri} have sha256 {digest}, the ModelRef expects {ref.weights_sha256}; "
            "refusing to load them (tampered, or replaced by another run)"
        )
    return data


def import_factory(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    factory = getattr(importlib.import_module(module_name), attr, None)
    if not callable(factory):
        raise ValueError(f"model_factory {path!r} does not name a callable")
    return factory


def load_verified_model(ref: ModelRef | dict[str, Any] | str, store: ShardStore) -> torch.nn.Module:
    """Rebuild the ModelRef's model in eval mode from sha256-verified weights (``weights_only=True``)."""
    import torch

    ref = ModelRef.coerce(ref)
    data = read_verified_weights(ref, store)
    model = import_factory(ref.model_factory)(**ref.factory_kwargs)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{ref.model_factory} returned {type(model).__name__}, expected a torch.nn.Module")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"weights file holds a {type(state).__name__}, expected a state dict")
    model.load_state_dict(state)
    model.eval()
    return model
