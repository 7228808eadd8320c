"""Rebuild a model from a ModelRef: verify the weights' sha256 first, then load them with weights_only=True.

Nothing is unpickled from XCom or from an unverified file: the reference is JSON, the weights are a plain
state dict checked against the digest the trainer recorded.
"""

from __future__ import annotations

import hashlib
import inspect
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.shards.errors import ChecksumMismatch
from airflow_bigdata_ai.shards.refs import ModelRef
from airflow_bigdata_ai.usercode import CodeBundle, UserCallable, UserCodeError, coerce_kwargs, import_callable

if TYPE_CHECKING:
    import torch

    from airflow_bigdata_ai.shards.store import ShardStore


def import_factory(path: str, bundle: CodeBundle | None = None) -> Callable[..., Any]:
    """``"package.module:function"`` -> the callable, through the one resolver user code goes through.

    ``bundle`` carries the source of user modules this process may not have (a module beside the DAG, on a
    Ray worker); :class:`~airflow_bigdata_ai.usercode.UserCodeError` names the module and where it looked.
    """
    return import_callable(path, bundle)


def factory_call_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """``kwargs`` converted to the factory's parameter types and checked against its signature.

    Run on the driver before anything starts, so a templated ``"64"`` or a misspelt keyword fails there, with
    a :class:`~airflow_bigdata_ai.usercode.UserCodeError` naming the factory.
    """
    converted = coerce_kwargs(factory, kwargs, "factory_kwargs")
    try:
        inspect.signature(factory).bind(**converted)
    except TypeError as exc:
        raise UserCodeError(f"{name} does not accept factory_kwargs {sorted(converted)}: {exc}") from None
    except ValueError:  # no signature to check (a builtin): the call itself will say
        pass
    return converted


def build_model(
    model_factory: str | UserCallable,
    factory_kwargs: dict[str, Any] | None = None,
    bundle: CodeBundle | None = None,
) -> torch.nn.Module:
    """Instantiate the (untrained) model a factory names (an import path, or a UserCallable from the driver).

    Templated kwargs (``"64"``) are converted to the factory's declared parameter types first.
    """
    import torch

    if isinstance(model_factory, UserCallable):
        factory, name = model_factory.load(), model_factory.name
    else:
        factory, name = import_factory(model_factory, bundle), model_factory
    model = factory(**factory_call_kwargs(factory, factory_kwargs, name))
    if not isinstance(model, torch.nn.Module):
        raise UserCodeError(f"{name} returned {type(model).__name__}, expected a torch.nn.Module")
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


def load_model(
    ref: ModelRef | dict[str, Any] | str, store: ShardStore, bundle: CodeBundle | None = None
) -> torch.nn.Module:
    """The trained model a ModelRef names, in eval mode (``bundle``: the factory's user modules, if shipped).

    Raises :class:`ChecksumMismatch` when the stored weights differ from ``weights_sha256`` (tampering, or a
    rerun replaced them), before any byte is deserialised.
    """
    ref = ModelRef.coerce(ref)
    data = read_verified_weights(ref, store)
    model = build_model(ref.model_factory, ref.factory_kwargs, bundle)
    model.load_state_dict(load_state_dict_bytes(data))
    model.eval()
    return model
