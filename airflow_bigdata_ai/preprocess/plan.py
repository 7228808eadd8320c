"""Driver-side planning: settings checked, user code resolved and labels read before any Spark job starts.

Everything a retry cannot fix fails here, in the calling process, with a message that names the culprit:
a transform module that cannot be found (:class:`~airflow_bigdata_ai.usercode.UserCodeError`), settings
that cannot work (:class:`SettingsError`), a labels file that is malformed (:class:`SourceLayoutError`).
Before, these surfaced as a Spark ``PythonException`` from the executors, or as every row quarantined.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from airflow_bigdata_ai.preprocess.errors import SettingsError
from airflow_bigdata_ai.preprocess.images import ImageGuards, ImagePipeline
from airflow_bigdata_ai.preprocess.labels import LabelsFile, read_labels, uses_labels_file
from airflow_bigdata_ai.preprocess.process import PreprocessJob, Transform
from airflow_bigdata_ai.preprocess.sources import SourceSpec
from airflow_bigdata_ai.shards.dataset import ShardWriter
from airflow_bigdata_ai.shards.errors import InvalidReference
from airflow_bigdata_ai.shards.store import ShardStore
from airflow_bigdata_ai.usercode import UserCallable, coerce_kwargs

TransformLike = Callable[..., Any] | str | Sequence[Mapping[str, Any]] | ImagePipeline | UserCallable | None

# the column types a transform's output can produce (see process._column_spec), by the names users write
_SCALAR_NAMES = {
    "bool": "bool", "boolean": "bool",
    "int": "int64", "int64": "int64", "long": "int64",
    "float": "double", "float64": "double", "double": "double",
    "str": "string", "string": "string", "utf8": "string",
}  # fmt: skip
_SCHEMA_FORM = re.compile(r"^tensor<(\w+)>\[([\d,\s]*)\]$")


def normalise_output_spec(spec: Mapping[str, Any] | None) -> dict[str, tuple[Any, ...]] | None:
    """Any written form -> the form outputs are compared in: ``("tensor", (3, 64, 64), "float32")`` or
    ``("scalar", "double")``.

    Accepted per column: ``["tensor", [3, 64, 64], "float32"]`` (lists or tuples, as JSON or a template
    gives them; sizes may be strings; dtype any NumPy name such as ``"f4"``), ``"tensor<float32>[3,64,64]"``
    (as ``ShardSet.schema`` prints it), ``["scalar", "int64"]`` (also ``"float"``, ``"float64"``, ``"str"``...).
    """
    if not spec:
        return None
    if not isinstance(spec, Mapping):
        raise SettingsError(f"output_spec must be a dict of column name -> spec, got {type(spec).__name__}")
    return {str(name): _column(str(name), value) for name, value in spec.items()}


def _column(name: str, value: Any) -> tuple[Any, ...]:
    where = f"output_spec[{name!r}] = {value!r}"
    if isinstance(value, str):
        match = _SCHEMA_FORM.match(value.strip())
        if match:
            value = ("tensor", [d for d in match.group(2).split(",") if d.strip()], match.group(1))
        elif value.strip() in _SCALAR_NAMES:
            value = ("scalar", value.strip())
    if not isinstance(value, (list, tuple)) or not value or value[0] not in ("tensor", "scalar"):
        raise SettingsError(f"{where}: expected ['tensor', [sizes...], 'dtype'] or ['scalar', 'type']")
    if value[0] == "scalar":
        if len(value) != 2 or str(value[1]) not in _SCALAR_NAMES:
            raise SettingsError(f"{where}: scalar types are {sorted(set(_SCALAR_NAMES.values()))}")
        return ("scalar", _SCALAR_NAMES[str(value[1])])
    if len(value) != 3:
        raise SettingsError(f"{where}: a tensor spec is ['tensor', [sizes...], 'dtype']")
    sizes = value[1] if isinstance(value[1], (list, tuple)) else [value[1]]
    try:
        shape = tuple(int(size) for size in sizes)
        dtype = np.dtype(value[2].strip() if isinstance(value[2], str) else value[2])
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{where}: {exc}") from None
    if any(size < 0 for size in shape) or dtype.kind not in "biuf":
        raise SettingsError(f"{where}: sizes must be >= 0 and the dtype numeric")
    return ("tensor", shape, dtype.name)


def plan_transform(transform: TransformLike, kwargs: Mapping[str, Any] | None) -> tuple[Transform, dict[str, Any]]:
    """The transform as it travels (a built-in pipeline, or a :class:`UserCallable`), and its kwargs coerced
    to the function's parameter types (templated values arrive as strings: ``"64"`` -> ``64``).

    A user function is loaded here once, so a module that cannot be found fails now, not on an executor.
    """
    kwargs = dict(kwargs or {})
    if transform is None or isinstance(transform, ImagePipeline) or _is_steps(transform):
        if kwargs:
            raise SettingsError("transform_kwargs are for user functions; put built-in options in the steps")
        try:
            return ImagePipeline.from_spec(transform or ()), {}  # type: ignore[arg-type]
        except (TypeError, ValueError, KeyError) as exc:
            raise SettingsError(f"transform steps {transform!r}: {exc}") from None
    if not (isinstance(transform, (str, UserCallable)) or callable(transform)):
        raise SettingsError(
            f"transform must be a callable, an import path 'pkg.module:function' or a list of built-in steps, "
            f"got {type(transform).__name__}"
        )
    user = UserCallable.of(transform)  # UserCodeError (module not found, not callable) raises from here
    return user, coerce_kwargs(user.load(), kwargs, "transform_kwargs")


def _is_steps(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(step, Mapping) for step in value)


def describe_transform(transform: Transform) -> Any:
    """JSON-able identity for the manifest's stats: the steps, or the function's name and code hashes."""
    if isinstance(transform, ImagePipeline):
        return transform.to_spec()
    return transform.name


def plan_job(
    spec: SourceSpec,
    writer: ShardWriter,
    source_store: ShardStore,
    *,
    transform: TransformLike,
    transform_kwargs: Mapping[str, Any] | None,
    guards: ImageGuards | Mapping[str, Any] | None,
    output_spec: Mapping[str, Any] | None,
) -> PreprocessJob:
    """The job the executors run, checked: raises before any Spark work for anything a retry cannot fix."""
    resolved, kwargs = plan_transform(transform, transform_kwargs)
    try:
        checked_guards = ImageGuards.coerce(guards)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"guards {guards!r}: {exc}") from None
    labels: LabelsFile | None = read_labels(spec, source_store) if uses_labels_file(spec) else None
    return PreprocessJob(
        source=spec,
        source_store=source_store,
        writer=writer,
        transform=resolved,
        transform_kwargs=kwargs,
        guards=checked_guards,
        output_spec=normalise_output_spec(output_spec),
        labels=labels,
    )


def coerce_source(source: SourceSpec | Mapping[str, Any] | str) -> SourceSpec:
    """``SourceSpec.coerce`` with its errors (unknown key, bad format, bad URI) as :class:`SettingsError`."""
    try:
        return SourceSpec.coerce(source)
    except (TypeError, ValueError, InvalidReference) as exc:
        raise SettingsError(f"source {source!r}: {exc}") from None
