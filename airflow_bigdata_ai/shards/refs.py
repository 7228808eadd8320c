"""Typed, versioned, JSON-only references that travel through XCom instead of data.

A reference is a few hundred bytes whatever the dataset size: it names the immutable manifest (and its
sha256) that lists the shards, never the shards themselves. Nothing here is ever unpickled.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from airflow_bigdata_ai.shards.errors import InvalidReference
from airflow_bigdata_ai.shards.paths import parse_uri

REFERENCE_MAJOR_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

R = TypeVar("R", bound="_Reference")


def check_sha256(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise InvalidReference(f"{what} must be a lowercase hex sha256, got {value!r}")
    return value


@dataclass(frozen=True)
class Producer:
    """Which Airflow task attempt (or notebook call) produced an output."""

    dag_id: str = ""
    task_id: str = ""
    run_id: str = ""
    logical_date: str | None = None
    try_number: int | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Producer:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidReference(f"producer must be an object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidReference(f"producer has unknown fields {sorted(unknown)}")
        for name in ("dag_id", "task_id", "run_id"):
            if not isinstance(data.get(name, ""), str):
                raise InvalidReference(f"producer.{name} must be a string")
        if data.get("logical_date") is not None and not isinstance(data["logical_date"], str):
            raise InvalidReference("producer.logical_date must be an ISO string or null")
        try_number = data.get("try_number")
        if try_number is not None and (not isinstance(try_number, int) or isinstance(try_number, bool)):
            raise InvalidReference("producer.try_number must be an integer or null")
        return cls(**data)


class _Reference:
    """Shared JSON (de)serialisation and validation for reference types."""

    KIND: ClassVar[str]
    _REQUIRED: ClassVar[dict[str, type | tuple[type, ...]]]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        data["kind"] = self.KIND
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls: type[R], text: str | bytes) -> R:
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise InvalidReference(f"{cls.KIND} reference is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def coerce(cls: type[R], value: Any) -> R:
        """Accept the reference itself, its dict (as pulled from XCom) or its JSON text."""
        if isinstance(value, cls):
            return value
        if isinstance(value, (str, bytes)):
            return cls.from_json(value)
        if isinstance(value, dict):
            return cls.from_dict(value)
        raise InvalidReference(f"expected a {cls.KIND} reference (object or JSON), got {type(value).__name__}")

    @classmethod
    def from_dict(cls: type[R], data: Any) -> R:
        if not isinstance(data, dict):
            raise InvalidReference(f"{cls.KIND} reference must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        kind = data.pop("kind", None)
        if kind != cls.KIND:
            raise InvalidReference(f"expected kind {cls.KIND!r}, got {kind!r}")
        version = data.get("version")
        if not isinstance(version, str) or not re.match(r"^\d+\.\d+$", version):
            raise InvalidReference(f"{cls.KIND}.version must look like '1.0', got {version!r}")
        if int(version.split(".")[0]) != REFERENCE_MAJOR_VERSION:
            raise InvalidReference(
                f"unsupported {cls.KIND} major version {version!r}; this package reads {REFERENCE_MAJOR_VERSION}.x"
            )
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise InvalidReference(f"{cls.KIND} has unknown fields {sorted(unknown)}")
        for name, expected in cls._REQUIRED.items():
            if name not in data:
                raise InvalidReference(f"{cls.KIND} is missing required field {name!r}")
            value = data[name]
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
                raise InvalidReference(
                    f"{cls.KIND}.{name} has type {type(value).__name__}, expected {_type_names(expected)}"
                )
        data["producer"] = Producer.from_dict(data.get("producer"))
        obj = cls(**data)
        obj.validate()  # type: ignore[attr-defined]
        return obj


def _type_names(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


@dataclass(frozen=True)
class ShardSet(_Reference):
    """A committed set of shards: what one task hands the next through XCom.

    ``manifest_uri`` names the immutable manifest; ``manifest_sha256`` pins its exact bytes, so a reader
    detects tampering or a concurrent rewrite before reading any shard.
    """

    KIND: ClassVar[str] = "ShardSet"
    _REQUIRED: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "version": str,
        "manifest_uri": str,
        "manifest_sha256": str,
        "format": str,
        "schema": dict,
        "num_rows": int,
        "num_shards": int,
        "total_bytes": int,
    }

    manifest_uri: str
    manifest_sha256: str
    schema: dict[str, str]
    num_rows: int
    num_shards: int
    total_bytes: int
    format: str = "parquet"
    version: str = f"{REFERENCE_MAJOR_VERSION}.0"
    producer: Producer = field(default_factory=Producer)
    stats: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        parse_uri(self.manifest_uri)
        check_sha256(self.manifest_sha256, "ShardSet.manifest_sha256")
        if self.format != "parquet":
            raise InvalidReference(f"unsupported shard format {self.format!r}; supported: parquet")
        for name in ("num_rows", "num_shards", "total_bytes"):
            if getattr(self, name) < 0:
                raise InvalidReference(f"ShardSet.{name} must be >= 0")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.schema.items()):
            raise InvalidReference("ShardSet.schema must map column names to type strings")
        if not isinstance(self.stats, dict):
            raise InvalidReference("ShardSet.stats must be an object")

    @property
    def dataset_uri(self) -> str:
        """The dataset directory: the manifest lives in ``<dataset>/_manifests/``."""
        return str(parse_uri(self.manifest_uri).parent().parent())


@dataclass(frozen=True)
class ModelRef(_Reference):
    """A trained model: where its state dict lives, its sha256, how to rebuild it and what it scored."""

    KIND: ClassVar[str] = "ModelRef"
    _REQUIRED: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "version": str,
        "weights_uri": str,
        "weights_sha256": str,
        "model_factory": str,
        "input_shape": list,
    }

    weights_uri: str
    weights_sha256: str
    model_factory: str
    input_shape: list[int]  # one sample, without the batch dimension (e.g. [1, 8, 8])
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] | None = None
    version: str = f"{REFERENCE_MAJOR_VERSION}.0"
    producer: Producer = field(default_factory=Producer)
    code: dict[str, str] = field(default_factory=dict)  # user modules shipped with the factory: name -> sha256[:16]

    def validate(self) -> None:
        parse_uri(self.weights_uri)
        if not isinstance(self.code, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.code.items()
        ):
            raise InvalidReference("ModelRef.code must map module names to content hashes")
        check_sha256(self.weights_sha256, "ModelRef.weights_sha256")
        if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", self.model_factory):
            raise InvalidReference(
                f"ModelRef.model_factory must be 'package.module:function', got {self.model_factory!r}"
            )
        if not self.input_shape or not all(isinstance(d, int) and 0 < d <= 65536 for d in self.input_shape):
            raise InvalidReference(f"ModelRef.input_shape must be positive integers, got {self.input_shape!r}")
        if self.trained_on is not None:
            ShardSet.from_dict(self.trained_on)
