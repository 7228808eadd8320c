"""Rebuild a model from a ModelRef: verify the weights' sha256 first, then load them with weights_only=True.

Nothing is unpickled from XCom or from an unverified file: the reference is JSON, the weights are a plain
state dict checked against the digest the trainer recorded.
"""

from __future__ import annotations

import hashlib
import importlib
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.shards.errors import ChecksumMismatch
from airflow_bigdata_ai.shards.refs import ModelRef

if TYPE_CHECKING:
    import torch

    from airflow_bigdata_ai.shards.store import ShardStore


def import_factory(path: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the callable (the same rule ModelRef validates)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'package.module:function', got {path!r}")
    module = importlib.import_module(module_name)
    try:
        factory = getattr(module, attr)
    except AttributeError as exc:
        raise ValueError(f"{module_name!r} has no attribute {attr!r}") from exc
    if not callable(factory):
        raise ValueError(f"{path!r} is not callable")
    return factory  # type: ignore[no-any-return]


def build_model(model_factory: str, factory_kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """Instantiate the (untrained) model a factory path names."""
    import torch

    model = import_factory(model_factory)(**(factory_kwargs or {}))
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{model_factory} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def load_state_dict_bytes(data: bytes) -> dict[str, Any]:
    """Deserialise a state dict safely (tensors and plain containers only)."""
    import torch

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"weights file holds a {type(state).__name__}, expected a state dict")
    return state


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


def load_model(ref: ModelRef | dict[str, Any] | str, store: ShardStore) -> torch.nn.Module:
    """The trained model a ModelRef names, in eval mode.

    Raises :class:`ChecksumMismatch` when the stored weights differ from ``weights_sha256`` (tampering, or a
    rerun replaced them), before any byte is deserialised.
    """
    ref = ModelRef.coerce(ref)
    data = read_verified_weights(ref, store)
    model = build_model(ref.model_factory, ref.factory_kwargs)
    model.load_state_dict(load_state_dict_bytes(data))
    model.eval()
    return model
