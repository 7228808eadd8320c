"""Code bundles: find the user modules a job needs on the task's host, and serve them on any worker.

The package docstring (``airflow_bigdata_ai.usercode``) says why; this module holds the bundle, its
meta-path finder and the AST scan that collects a module's user imports.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_bigdata_ai.usercode.errors import UserCodeError

MAX_BUNDLE_BYTES = 16 * 1024 * 1024
SHA_ATTR = "__abai_code_sha256__"
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # airflow_bigdata_ai/


@functools.lru_cache(maxsize=1)
def _installed_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.abspath(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(sorted(dirs))


def is_user_file(path: str | None) -> bool:
    """True for a source file the workers may not have: not the standard library, not installed, not ours."""
    if not path or not path.endswith(".py"):
        return False
    full = os.path.abspath(path)
    parts = full.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    if full.startswith(_PACKAGE_DIR + os.sep):
        return False
    return not any(full.startswith(d + os.sep) for d in _installed_dirs())


@dataclass(frozen=True)
class ShippedModule:
    """One module's source as found on the task's host (``origin`` names that file in tracebacks)."""

    name: str
    source: str
    origin: str
    is_package: bool
    sha256: str

    @classmethod
    def read(cls, name: str, origin: str, is_package: bool) -> ShippedModule:
        with open(origin, encoding="utf-8") as handle:
            source = handle.read()
        digest = hashlib.sha256(f"{name}\0{int(is_package)}\0{source}".encode()).hexdigest()
        return cls(name, source, origin, is_package, digest)


@dataclass(frozen=True)
class CodeBundle:
    """The user modules a job needs, carried inside the job (picklable, a few KB)."""

    modules: tuple[ShippedModule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.modules)

    @property
    def digest(self) -> str:
        """sha256 over every shipped module: changes whenever any of their sources changes."""
        joined = "\n".join(f"{m.name}={m.sha256}" for m in self.modules)
        return hashlib.sha256(joined.encode()).hexdigest()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)

    def describe(self) -> dict[str, str]:
        """``{module: sha256[:16]}``: the code identity recorded in manifests and ModelRefs."""
        return {m.name: m.sha256[:16] for m in self.modules}

    def activate(self) -> None:
        """Serve these modules' sources to ``import`` in this process; drop stale copies already imported."""
        if self.modules:
            FINDER.activate(self)

    def merged(self, other: CodeBundle) -> CodeBundle:
        found = {m.name: m for m in (*self.modules, *other.modules)}
        return CodeBundle(tuple(found[n] for n in sorted(found)))


class _BundleLoader(importlib.abc.Loader):
    def __init__(self, module: ShippedModule) -> None:
        self.module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        shipped = self.module
        module.__file__ = shipped.origin
        setattr(module, SHA_ATTR, shipped.sha256)
        code = compile(shipped.source, shipped.origin, "exec", dont_inherit=True)
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str:  # tracebacks show the shipped lines (linecache asks here)
        return self.module.source


def _on_this_hosts_path(shipped: ShippedModule) -> bool:
    """True where the module's own file is importable the ordinary way: on the host the bundle was made
    (the task's, or a notebook's), whose files are the truth, edited or not. Elsewhere (an executor or a Ray
    worker that cannot import the file) the bundle is the truth."""
    if not shipped.source or not os.path.isfile(shipped.origin):
        return False
    return _find_spec(shipped.name) is not None


class _BundleFinder(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: serves the active bundles' modules before anything installed."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.modules: dict[str, ShippedModule] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        shipped = self.modules.get(fullname)
        if shipped is None or _on_this_hosts_path(shipped):
            return None
        spec = importlib.util.spec_from_loader(
            fullname, _BundleLoader(shipped), origin=shipped.origin, is_package=shipped.is_package
        )
        if spec is not None and shipped.is_package:
            # shipped submodules come from this finder; others from the package's folder where it exists
            folder = os.path.dirname(shipped.origin)
            spec.submodule_search_locations = [folder] if os.path.isdir(folder) else []
        return spec

    def activate(self, bundle: CodeBundle) -> None:
        with self.lock:
            if self not in sys.meta_path:
                sys.meta_path.insert(0, self)
            changed = [m for m in bundle.modules if self.modules.get(m.name) != m]
            loaded_elsewhere = [
                m
                for m in bundle.modules
                if m.name in sys.modules and getattr(sys.modules[m.name], SHA_ATTR, None) != m.sha256
            ]
            if not changed and not loaded_elsewhere:
                return
            for module in bundle.modules:
                self.modules[module.name] = module
            # Any change: re-import every module of the bundle, since an unchanged one may hold objects of a
            # changed one (``from helpers import SIZE``).
            for name in bundle.names:
                sys.modules.pop(name, None)
            importlib.invalidate_caches()


FINDER = _BundleFinder()


# -- building a bundle on the task's host ------------------------------------------------------------------


def _find_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """Where ``import name`` would find the module on this host's disk (never a bundle served earlier)."""
    try:
        parent, _, _ = name.rpartition(".")
        path = None
        if parent:
            parent_spec = _find_spec(parent)
            if parent_spec is None or not parent_spec.submodule_search_locations:
                return None
            path = list(parent_spec.submodule_search_locations)
        for finder in sys.meta_path:  # what ``import`` does, minus sys.modules and the bundles
            if finder is FINDER or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path)
            if spec is not None:
                return spec  # type: ignore[no-any-return]
        return None
    except (ImportError, ValueError, AttributeError):
        return None


def _imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module ``source`` imports (relative imports resolved against ``module``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base_parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base:
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _user_spec(name: str) -> tuple[str, bool] | None:
    """(source file, is package) of module ``name`` if it is user code, else None."""
    spec = _find_spec(name)
    if spec is None:
        return None
    if spec.origin in (None, "namespace") and spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        if locations and is_user_file(os.path.join(locations[0], "__init__.py")):
            return "", True  # namespace package of user code: shipped empty
        return None
    if not is_user_file(spec.origin):
        return None
    return str(spec.origin), spec.submodule_search_locations is not None


def _collect(names: Iterable[str]) -> CodeBundle:
    pending = list(names)
    shipped: dict[str, ShippedModule] = {}
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        parts = name.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parents first-class too
        found = _user_spec(name)
        if found is None:
            continue
        origin, is_package = found
        if origin:
            module = ShippedModule.read(name, origin, is_package)
        else:
            module = ShippedModule(name, "", name, True, hashlib.sha256(f"{name}\0ns".encode()).hexdigest())
        shipped[name] = module
        pending.extend(_imported_names(module.source, name, is_package))
    size = sum(len(m.source) for m in shipped.values())
    if size > MAX_BUNDLE_BYTES:
        raise UserCodeError(
            f"the user modules {sorted(shipped)} add up to {size / 1e6:.1f} MB of source (limit "
            f"{MAX_BUNDLE_BYTES / 1e6:.0f} MB); install them as a package on the cluster instead"
        )
    return CodeBundle(tuple(shipped[n] for n in sorted(shipped)))


def split_path(path: str) -> tuple[str, str]:
    module, sep, attr = path.partition(":")
    if not isinstance(path, str) or not sep or not module or not attr:
        raise UserCodeError(f"an import path must look like 'package.module:function', got {path!r}")
    return module, attr


def module_not_found(module: str, path: str, cause: BaseException | None = None) -> UserCodeError:
    where = [p for p in sys.path if p] or ["(empty sys.path)"]
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return UserCodeError(
        f"cannot import module {module!r} for {path!r}{detail}; looked in sys.path: {', '.join(where)}. Put the "
        "module in the DAGs folder (it is shipped to the cluster with each job) or install it on every worker."
    )


def bundle_for(*targets: str | Callable[..., Any] | None) -> CodeBundle:
    """Package the user modules that ``targets`` (import paths or callables) need, with their user imports."""
    names: list[str] = []
    for target in targets:
        if target is None:
            continue
        if isinstance(target, str):
            module, _ = split_path(target)
            if _find_spec(module) is None:
                raise module_not_found(module, target)
            names.append(module)
            continue
        module_obj = sys.modules.get(getattr(target, "__module__", None) or "")
        origin = getattr(module_obj, "__file__", None)
        if module_obj is not None and is_user_file(origin):
            assert origin is not None
            with open(origin, encoding="utf-8") as handle:
                source = handle.read()
            names.extend(_imported_names(source, module_obj.__name__, hasattr(module_obj, "__path__")))
            if importable_as_itself(module_obj):
                names.append(module_obj.__name__)
    return _collect(names)


def importable_as_itself(module: types.ModuleType) -> bool:
    """True when ``import <module.__name__>`` finds this very file (not so for DAG files Airflow loads)."""
    spec = _find_spec(module.__name__)
    origin = getattr(module, "__file__", None)
    return bool(spec and spec.origin and origin and os.path.abspath(spec.origin) == os.path.abspath(origin))
