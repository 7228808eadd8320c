"""Resolve a user's function on any process: by import path (its modules from the bundle) or by value."""

from __future__ import annotations

import hashlib
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_bigdata_ai.usercode.bundle import (
    FINDER,
    CodeBundle,
    bundle_for,
    importable_as_itself,
    is_user_file,
    module_not_found,
    split_path,
)
from airflow_bigdata_ai.usercode.errors import UserCodeError


def import_callable(path: str, bundle: CodeBundle | None = None) -> Callable[..., Any]:
    """Resolve ``"package.module:attr[.attr]"`` after activating ``bundle``; UserCodeError when it cannot."""
    module_name, attr = split_path(path)
    if bundle:
        bundle.activate()
    with FINDER.lock:
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise module_not_found(module_name, path, exc) from exc
        except Exception as exc:  # the module itself raised while importing
            raise UserCodeError(
                f"importing module {module_name!r} for {path!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UserCodeError(f"module {module_name!r} has no attribute {attr!r} (looked up for {path!r})") from None
    if not callable(target):
        raise UserCodeError(f"{path!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def _attribute(module: Any, qualname: str) -> Any:
    """``module.<qualname>`` if it resolves (the path form only fits what the path names: not instances)."""
    target = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target


def _cloudpickle() -> Any:
    import cloudpickle

    return cloudpickle


_LOADED: dict[tuple[str, str, str], Callable[..., Any]] = {}


@dataclass(frozen=True)
class UserCallable:
    """A user function that travels to any worker: by import path (its code in ``bundle``) or by value."""

    name: str
    path: str | None = None
    pickled: bytes | None = None
    bundle: CodeBundle = field(default_factory=CodeBundle)

    @classmethod
    def of(cls, target: str | Callable[..., Any] | UserCallable, check_import: bool = True) -> UserCallable:
        """Build on the task's host; a missing module or attribute fails here, before any job starts.

        ``check_import=False`` (a thin worker whose drivers run on the cluster) finds the module without running
        it, so a factory importing torch does not import torch here: a missing attribute fails on the cluster.
        """
        if isinstance(target, UserCallable):
            return target
        if isinstance(target, str):
            bundle = bundle_for(target)
            if check_import:
                import_callable(target, bundle)  # early, clear error on this host
            return cls(name=target, path=target, bundle=bundle)
        if not callable(target):
            raise UserCodeError(f"expected an import path 'module:function' or a callable, got {target!r}")
        module_name = getattr(target, "__module__", None) or ""
        qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
        name = f"{module_name}:{qualname}"
        module = sys.modules.get(module_name)
        bundle = bundle_for(target)
        if module is not None and module_name != "__main__" and _attribute(module, qualname) is target:
            if not is_user_file(getattr(module, "__file__", None)) or importable_as_itself(module):
                return cls(name=name, path=name, bundle=bundle)  # installed, or shipped in the bundle
        cloudpickle = _cloudpickle()
        by_value = module is not None and module_name != "__main__" and not importable_as_itself(module)
        if by_value:
            try:  # a DAG file's module: importable here only, so its functions must travel by value
                cloudpickle.register_pickle_by_value(module)
            except ValueError:
                by_value = False  # not in sys.modules: cloudpickle pickles it by value anyway
        try:
            pickled = cloudpickle.dumps(target)
        except Exception as exc:
            raise UserCodeError(f"{name} cannot be sent to the cluster by value: {type(exc).__name__}: {exc}") from exc
        finally:
            if by_value:
                cloudpickle.unregister_pickle_by_value(module)
        return cls(name=name, pickled=pickled, bundle=bundle)

    def load(self) -> Callable[..., Any]:
        """The function itself, on whatever process this runs in (cached per code version)."""
        key = (self.name, self.bundle.digest, hashlib.sha256(self.pickled or b"").hexdigest())
        self.bundle.activate()
        cached = _LOADED.get(key)
        if cached is not None:
            return cached
        if self.path is not None:
            fn = import_callable(self.path, self.bundle)
        else:
            try:
                fn = _cloudpickle().loads(self.pickled)
            except ImportError as exc:
                raise UserCodeError(f"{self.name} needs a module this worker cannot import: {exc}") from exc
        _LOADED[key] = fn
        return fn

    def describe(self) -> dict[str, Any]:
        return {"callable": self.name, "by": "path" if self.path else "value", "modules": self.bundle.describe()}
