"""Verified model loading and input-shape sanity checks (no Airflow, no OpenVINO).

The weights are hashed before a single byte is deserialised, and then loaded with
``torch.load(weights_only=True)``: a tampered or swapped file is refused, never executed.

The model factory runs only in the task process (conversion to OpenVINO IR and NNCF quantization happen
there; workers compile the IR and never import it). A factory in a module beside the DAG is resolved through
a :class:`~airflow_bigdata_ai.usercode.UserCallable`, whose bundle re-imports an edited module on the next
run even in a long-lived process, and whose digest joins the IR cache key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_bigdata_ai.infer.errors import InputShapeRejected, ModelLoadFailed
from airflow_bigdata_ai.models.loading import factory_call_kwargs, read_verified_weights
from airflow_bigdata_ai.models.loading import load_model as load_verified_model
from airflow_bigdata_ai.shards.errors import InvalidReference
from airflow_bigdata_ai.shards.refs import ModelRef
from airflow_bigdata_ai.usercode import UserCallable, UserCodeError

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


def model_factory(ref: ModelRef, shipped: UserCallable | None = None) -> UserCallable:
    """The ModelRef's factory, checked now: UserCodeError if its module is missing or it refuses the kwargs.

    ``shipped``: the factory with its modules as the task's host found them (a driver on the cluster, whose
    host lacks the DAG folder); used when it names the ModelRef's factory."""
    same = shipped is not None and shipped.name == ref.model_factory
    factory = shipped if same and shipped is not None else UserCallable.of(ref.model_factory)
    factory_call_kwargs(factory.load(), ref.factory_kwargs, factory.name)
    return factory


def model_loader(ref: ModelRef, store: ShardStore, factory: UserCallable) -> Callable[[], torch.nn.Module]:
    """A zero-argument loader of the verified trained model (called only when an IR must be built)."""

    def load() -> torch.nn.Module:
        try:
            return load_verified_model(ref, store, factory.bundle)
        except (UserCodeError, InvalidReference):
            raise
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:  # e.g. state dict keys or shapes differ
            raise ModelLoadFailed(
                f"the weights {ref.weights_uri} do not load into {factory.name}(**{ref.factory_kwargs}): {exc}"
            ) from exc

    return load


__all__ = ["check_input_shape", "load_verified_model", "model_factory", "model_loader", "read_verified_weights"]
