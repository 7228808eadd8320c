"""Typed, versioned, JSON-only references that travel through XCom instead of data.

A reference is a few hundred bytes whatever the dataset size: it names the immutable manifest (and its
sha256) that lists the shards, never the shards themselves. Nothing here is ever unpickled.

References travel through places other people can edit (XCom rows, asset-event extras, run conf), so a
producer signs what it returns (HMAC-SHA256 over the canonical JSON minus the signature, with a
per-deployment key) and a consumer verifies what it receives: :func:`sign_reference`, :func:`verify_reference`.
The key comes in as bytes; where it is kept is the Airflow layer's business.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
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
        if not data.get("signature"):  # an unsigned reference keeps the shape older readers know
            data.pop("signature", None)
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
    signature: str = ""  # see sign_reference; "" = unsigned

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
        check_signature_format(self.signature, "ShardSet.signature")

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
    signature: str = ""  # see sign_reference; "" = unsigned

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
        check_signature_format(self.signature, "ModelRef.signature")


# -- signing -----------------------------------------------------------------------------------------------
SIGNATURE_SCHEME = "hmac-sha256"
_SIGNATURE = re.compile(r"^hmac-sha256:([0-9a-f]{16}):([0-9a-f]{64})$")
REFERENCE_KEY_INFO = b"airflow-bigdata-ai reference signing v1"

Ref = TypeVar("Ref", bound=ShardSet | ModelRef)


class SignatureMismatch(InvalidReference):
    """A reference's signature does not verify: rewritten after it was produced, or signed by another deployment."""


class UnsignedReference(InvalidReference):
    """A reference without a signature where the policy requires one."""


def check_signature_format(value: Any, what: str) -> None:
    if not isinstance(value, str) or (value and not _SIGNATURE.match(value)):
        raise InvalidReference(f"{what} must be '' or '{SIGNATURE_SCHEME}:<key id>:<hex>', got {value!r}")


def derive_key(secret: str | bytes, info: bytes = REFERENCE_KEY_INFO) -> bytes:
    """HKDF-SHA256 (RFC 5869) of a configured secret: a key for this one purpose, never the secret itself.

    Deriving (instead of using a connection password directly) means a leaked reference key does not leak
    the cluster token it was derived from, and the same token yields unrelated keys for other purposes.
    """
    ikm = secret.encode() if isinstance(secret, str) else secret
    if not ikm:
        raise ValueError("cannot derive a reference key from an empty secret")
    prk = hmac.new(b"airflow-bigdata-ai", ikm, hashlib.sha256).digest()  # extract (fixed salt)
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()  # expand: one block = 32 bytes


def key_id(key: bytes) -> str:
    """A short public name of a key (in the signature), to tell "another key" from "tampered" in errors."""
    return hashlib.sha256(b"key-id:" + key).hexdigest()[:16]


def canonical_bytes(ref: ShardSet | ModelRef) -> bytes:
    """The signed bytes: the reference's JSON minus its signature, keys sorted, no whitespace, ASCII only."""
    data = ref.to_dict()
    data.pop("signature", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()  # NaN: as XCom writes it


def _mac(ref: ShardSet | ModelRef, key: bytes) -> str:
    return hmac.new(key, canonical_bytes(ref), hashlib.sha256).hexdigest()


def sign_reference(ref: Ref, key: bytes) -> Ref:
    """A copy of ``ref`` carrying ``hmac-sha256:<key id>:<HMAC of the canonical JSON>``."""
    if len(key) < 16:
        raise ValueError("a reference key must have at least 16 bytes")
    unsigned = replace(ref, signature="")
    return replace(unsigned, signature=f"{SIGNATURE_SCHEME}:{key_id(key)}:{_mac(unsigned, key)}")


def is_signed(ref: ShardSet | ModelRef) -> bool:
    return bool(ref.signature)


def verify_reference(ref: ShardSet | ModelRef, keys: bytes | tuple[bytes, ...], what: str | None = None) -> None:
    """Raise :class:`SignatureMismatch` unless ``ref`` is signed by one of ``keys`` and unchanged since.

    ``keys`` may hold the current key and earlier ones (rotation). ``what`` names the field in the error.
    """
    name = what or ref.KIND
    match = _SIGNATURE.match(ref.signature or "")
    if match is None:
        raise UnsignedReference(f"{name}: the {ref.KIND} reference is not signed")
    candidates = (keys,) if isinstance(keys, bytes) else tuple(keys)
    for key in candidates:
        if hmac.compare_digest(_mac(ref, key), match.group(2)):
            return
    ours = ", ".join(key_id(k) for k in candidates)
    hint = (
        "it was changed after it was produced"
        if match.group(1) in ours
        else f"it was signed with another key ({match.group(1)}; this deployment's: {ours})"
    )
    raise SignatureMismatch(
        f"{name}: the signature of the {ref.KIND} reference does not match: {hint}. A retry cannot fix "
        "this: rerun the task that produced it (or sign a hand-built reference with this deployment's key)"
    )
