"""Templated keyword arguments for user functions: rendered strings back to the types the function declares.

Jinja renders every value to a string (``"64"``); a transform's ``size: int = 32`` must get ``64``.
"""

from __future__ import annotations

import ast
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from airflow_bigdata_ai.usercode.errors import UserCodeError

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _target_type(hint: Any) -> type | None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _target_type(options[0]) if len(options) == 1 else None
    if origin is not None:
        hint = origin
    return hint if hint in (int, float, bool, list, tuple, dict) else None


def _convert(value: str, kind: type) -> Any:
    text = value.strip()
    if kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = ast.literal_eval(text)  # Jinja renders tuples and dicts as Python reprs
    if kind is tuple and isinstance(parsed, list):
        parsed = tuple(parsed)
    if not isinstance(parsed, kind):
        raise ValueError(text)
    return parsed


def coerce_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any] | None, what: str = "kwargs") -> dict[str, Any]:
    """Turn templated strings (``"64"``) into the type the parameter declares, or its default's type."""
    result = dict(kwargs or {})
    if not any(isinstance(v, str) for v in result.values()):
        return result
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return result
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    for key, value in result.items():
        param = signature.parameters.get(key)
        if not isinstance(value, str) or param is None:
            continue
        kind = _target_type(hints.get(key)) if key in hints else None
        if kind is None and key not in hints and param.default not in (inspect.Parameter.empty, None):
            kind = _target_type(type(param.default))
        if kind is None:
            continue
        try:
            result[key] = _convert(value, kind)
        except (ValueError, SyntaxError):
            raise UserCodeError(
                f"{what}: parameter {key!r} of {name} expects {kind.__name__}, got {value!r} (a templated value "
                "renders as a string; it is converted when the parameter's annotation or default gives its type)"
            ) from None
    return result
