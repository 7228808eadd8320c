"""Torch -> OpenVINO IR conversion, NNCF INT8 quantization, and the IR cache in the shard store.

The IR lives beside the model's weights, keyed by everything that changes its bytes: the weights' sha256,
the OpenVINO (and, for INT8, NNCF) version, the variant and the input shape. A backfill over many dates
converts once. f32 and bf16 share one float IR (the precision is a compile-time hint); INT8 is its own
IR, calibrated on rows of the first input ShardSet that needed it. Those rows are kept beside the IR
(``calibration-<sha>.npy``) and ``meta.json`` records their uri and sha256 with the source manifest's uri and
sha256: the provenance of a reused int8 IR resolves even after a rerun replaced or deleted that manifest.
When the model factory is user code (a module shipped in a CodeBundle), its content digest is part of the
key: an edited factory converts afresh.

Files are content-addressed (``model-<sha>.xml``), and ``meta.json`` is created last with a conditional
put: two tasks converting at once never clobber each other, and a reader verifies both files' sha256
against ``meta.json`` before handing them to OpenVINO.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from airflow_bigdata_ai.shards.errors import ChecksumMismatch
from airflow_bigdata_ai.shards.paths import parse_uri
from airflow_bigdata_ai.shards.refs import ModelRef

if TYPE_CHECKING:
    import openvino as ov
    import torch

    from airflow_bigdata_ai.shards.store import ShardStore

log = logging.getLogger(__name__)

CACHE_DIR = "_openvino"
PRECISIONS = ("f32", "bf16", "int8")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def ir_variant(precision: str) -> str:
    """f32 and bf16 compile from the same float IR; int8 needs its own quantized IR."""
    return "int8" if check_precision(precision) == "int8" else "float"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict[str, str]:
    import openvino as ov

    found = {"openvino": ov.get_version()}
    try:
        import nncf

        found["nncf"] = nncf.__version__
    except ImportError:  # pragma: no cover - nncf is a dependency
        pass
    return found


@dataclass(frozen=True)
class IRHandle:
    """Where one cached IR lives and the digests its files must have. Picklable, a few hundred bytes."""

    store: ShardStore
    xml_uri: str
    bin_uri: str
    xml_sha256: str
    bin_sha256: str
    key: str
    meta: dict[str, Any] = field(default_factory=dict)

    def read(self) -> tuple[bytes, bytes]:
        """(xml, bin) bytes, verified against the digests recorded when the IR was cached."""
        xml = self.store.read_bytes(self.store.resolve(self.xml_uri))
        weights = self.store.read_bytes(self.store.resolve(self.bin_uri))
        for name, data, expected in (("xml", xml, self.xml_sha256), ("bin", weights, self.bin_sha256)):
            if _sha(data) != expected:
                raise ChecksumMismatch(f"cached IR {name} of {self.key} has sha256 {_sha(data)}, expected {expected}")
        return xml, weights

    def read_model(self, core: ov.Core | None = None) -> ov.Model:
        import openvino as ov

        xml, weights = self.read()
        core = core or ov.Core()
        return core.read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))


def cache_key(ref: ModelRef, precision: str, extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """A stable digest of everything that determines the IR bytes, and the fields it was made from."""
    fields = {
        "weights_sha256": ref.weights_sha256,
        "model_factory": ref.model_factory,
        "factory_kwargs": ref.factory_kwargs,
        "input_shape": list(ref.input_shape),
        "variant": ir_variant(precision),
        "versions": versions() if ir_variant(precision) == "int8" else {"openvino": versions()["openvino"]},
        **(extra or {}),
    }
    digest = _sha(json.dumps(fields, sort_keys=True, default=str).encode())
    return digest, fields


def cache_dir(ref: ModelRef, store: ShardStore, variant: str, digest: str) -> str:
    """``<weights dir>/_openvino/<variant>-<weights sha[:16]>-<key[:16]>``: beside the model it came from."""
    weights = store.resolve(ref.weights_uri)
    return str(parse_uri(str(weights)).parent().join(f"{CACHE_DIR}/{variant}-{ref.weights_sha256[:16]}-{digest[:16]}"))


def lookup(ref: ModelRef, store: ShardStore, precision: str, extra: dict[str, Any] | None = None) -> IRHandle | None:
    """The cached IR for this model/precision/version, or None."""
    digest, _ = cache_key(ref, precision, extra)
    directory = parse_uri(cache_dir(ref, store, ir_variant(precision), digest))
    meta_uri = directory.join("meta.json")
    if not store.exists(meta_uri):
        return None
    meta = json.loads(store.read_bytes(meta_uri))
    if meta.get("key") != digest:
        raise ChecksumMismatch(f"IR cache {meta_uri} holds key {meta.get('key')!r}, expected {digest}")
    return IRHandle(
        store=store,
        xml_uri=str(directory.join(meta["xml"])),
        bin_uri=str(directory.join(meta["bin"])),
        xml_sha256=meta["xml_sha256"],
        bin_sha256=meta["bin_sha256"],
        key=digest,
        meta=meta,
    )


def serialize(model: ov.Model) -> tuple[bytes, bytes]:
    """IR bytes without FP16 weight compression (save_model compresses by default: not exact f32)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="abai-ir-") as tmp:
        path = os.path.join(tmp, "model.xml")
        ov.save_model(model, path, compress_to_fp16=False)
        with open(path, "rb") as xml_file, open(os.path.join(tmp, "model.bin"), "rb") as bin_file:
            return xml_file.read(), bin_file.read()


def store_ir(
    ref: ModelRef,
    store: ShardStore,
    precision: str,
    model: ov.Model,
    extra: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> IRHandle:
    """Write the IR (content-addressed files, then meta.json with a conditional put)."""
    digest, fields = cache_key(ref, precision, extra)
    directory = parse_uri(cache_dir(ref, store, ir_variant(precision), digest))
    xml, weights = serialize(model)
    xml_name, bin_name = f"model-{_sha(xml)[:16]}.xml", f"model-{_sha(weights)[:16]}.bin"
    store.write_bytes(directory.join(bin_name), weights)
    store.write_bytes(directory.join(xml_name), xml)
    meta = {
        "key": digest,
        "fields": fields,
        "xml": xml_name,
        "bin": bin_name,
        "xml_sha256": _sha(xml),
        "bin_sha256": _sha(weights),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(info or {}),
    }
    if not store.put_if_absent(directory.join("meta.json"), json.dumps(meta, sort_keys=True, indent=1).encode()):
        log.info("IR %s was cached concurrently by another task; using the cached one", digest[:16])
        found = lookup(ref, store, precision, extra)
        if found is not None:
            return found
    return IRHandle(
        store, str(directory.join(xml_name)), str(directory.join(bin_name)), _sha(xml), _sha(weights), digest, meta
    )


def convert(model: torch.nn.Module, input_shape: Sequence[int]) -> ov.Model:
    """Trace the torch model with an example input; the batch dimension stays dynamic in the IR."""
    import openvino as ov
    import torch

    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    with torch.no_grad():
        converted = ov.convert_model(model, example_input=example, input=[ov.PartialShape([-1, *input_shape])])
    return converted


def quantize(model: ov.Model, calibration: np.ndarray, batch: int = 1) -> ov.Model:
    """NNCF post-training INT8 quantization, calibrated on real rows of the input ShardSet."""
    import nncf

    items = [calibration[i : i + batch] for i in range(0, len(calibration), batch)]
    dataset = nncf.Dataset(items)
    return nncf.quantize(model, dataset, subset_size=len(items), preset=nncf.QuantizationPreset.PERFORMANCE)


@dataclass
class IRResult:
    handle: IRHandle
    cache_hit: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "cache_hit": self.cache_hit,
            "key": self.handle.key[:16],
            "seconds": round(self.seconds, 3),
            **self.info,
        }


@dataclass(frozen=True)
class CalibrationSource:
    """The input an int8 IR was calibrated on: its manifest, pinned by sha256, and the store it lives in."""

    manifest_uri: str
    manifest_sha256: str
    store: ShardStore | None = None


def store_calibration(store: ShardStore, directory: str, samples: np.ndarray) -> dict[str, Any]:
    """Keep the calibration rows beside the IR, content-addressed (``.npy``); returns their record."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(samples), allow_pickle=False)
    data = buffer.getvalue()
    uri = parse_uri(directory).join(f"calibration-{_sha(data)[:16]}.npy")
    if not store.exists(uri):
        store.write_bytes(uri, data)
    return {
        "uri": str(uri),
        "sha256": _sha(data),
        "rows": int(samples.shape[0]),
        "shape": list(samples.shape[1:]),
        "dtype": str(samples.dtype),
    }


def _manifest_state(source: CalibrationSource | None, uri: str | None, sha256: str | None) -> str:
    """``present`` (same bytes), ``replaced`` (a rerun rewrote it), ``deleted`` or ``unknown`` (not checkable)."""
    if source is None or source.store is None or not uri:
        return "unknown"
    try:
        target = source.store.resolve(uri)
        if not source.store.exists(target):
            return "deleted"
        if sha256 and _sha(source.store.read_bytes(target)) != sha256:
            return "replaced"
        return "present"
    except Exception:  # another store, or outside this store's root: say so rather than guess
        log.debug("cannot check calibration manifest %s", uri, exc_info=True)
        return "unknown"


def provenance(meta: dict[str, Any], store: ShardStore, source: CalibrationSource | None) -> dict[str, Any]:
    """What a reused int8 IR was calibrated on, resolvable whatever happened to the source manifest since."""
    sample = dict(meta.get("calibration_sample") or {})
    if sample.get("uri"):
        try:
            sample["present"] = store.exists(store.resolve(sample["uri"]))
        except Exception:
            sample["present"] = False
    return {
        "calibrated_on": meta.get("calibrated_on"),
        "calibrated_on_sha256": meta.get("calibrated_on_sha256"),
        "calibrated_on_manifest": _manifest_state(source, meta.get("calibrated_on"), meta.get("calibrated_on_sha256")),
        "calibration_sample": sample or None,
        "calibration_samples": meta.get("calibration_samples"),
    }


def get_or_build(
    ref: ModelRef,
    store: ShardStore,
    precision: str,
    torch_model: Any,
    calibration: Any = None,
    calibration_source: CalibrationSource | None = None,
    extra: dict[str, Any] | None = None,
) -> IRResult:
    """The IR for ``precision``: from the cache, or converted (and for int8 quantized) then cached.

    ``torch_model`` is a zero-argument callable returning the verified torch model, so a cache hit never
    loads torch weights at all. ``calibration`` is likewise a callable returning the calibration array.
    ``extra`` joins the cache key (the digest of the user code that builds the model).
    """
    start = time.monotonic()
    found = lookup(ref, store, precision, extra)
    if found is not None:
        info = provenance(found.meta, store, calibration_source) if precision == "int8" else {}
        return IRResult(found, True, time.monotonic() - start, info)
    float_handle = lookup(ref, store, "f32", extra)
    if float_handle is not None:
        float_model = float_handle.read_model()
    else:
        float_model = convert(torch_model(), ref.input_shape)
        if precision != "int8":
            handle = store_ir(ref, store, precision, float_model, extra)
            return IRResult(handle, False, time.monotonic() - start)
        store_ir(ref, store, "f32", float_model, extra)
    if precision != "int8":
        assert float_handle is not None
        return IRResult(float_handle, True, time.monotonic() - start)
    samples = np.asarray(calibration(), dtype=np.float32)
    quantized = quantize(float_model, samples)
    digest, _ = cache_key(ref, "int8", extra)
    meta_info = {
        "calibrated_on": calibration_source.manifest_uri if calibration_source else None,
        "calibrated_on_sha256": calibration_source.manifest_sha256 if calibration_source else None,
        "calibration_sample": store_calibration(store, cache_dir(ref, store, "int8", digest), samples),
        "calibration_samples": len(samples),
    }
    handle = store_ir(ref, store, "int8", quantized, extra, info=meta_info)
    return IRResult(handle, False, time.monotonic() - start, provenance(handle.meta, store, calibration_source))
