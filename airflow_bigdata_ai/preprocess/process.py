"""Per-shard processing: runs on executors (or in-process), writes one shard, returns small summaries.

A shard's content depends only on its listing units (sorted by record id) and the transform, never on
which partition, executor or attempt ran it: retries and speculative copies write identical bytes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from airflow_bigdata_ai.preprocess.allocator import keep_large_allocations
from airflow_bigdata_ai.preprocess.errors import (
    BAD_LABEL,
    BAD_OUTPUT,
    MISSING_FILE,
    TRANSFORM_ERROR,
    Quarantined,
    QuarantineRecord,
)
from airflow_bigdata_ai.preprocess.images import ImageGuards, ImagePipeline, decode_image
from airflow_bigdata_ai.preprocess.labels import LabelsFile
from airflow_bigdata_ai.preprocess.sources import SourceSpec, list_units, read_tabular
from airflow_bigdata_ai.shards.dataset import ShardWriter
from airflow_bigdata_ai.shards.errors import InvalidReference
from airflow_bigdata_ai.shards.job import ShardJob
from airflow_bigdata_ai.shards.store import LocalStore, ShardStore
from airflow_bigdata_ai.shards.tensors import encode_tensors, tensor_field
from airflow_bigdata_ai.usercode import UserCallable

Transform = ImagePipeline | UserCallable
"""A transform as it travels to the executors: built-in steps, or user code (by import path or by value)."""
RESERVED = ("record_id", "label")

SUMMARY_DDL = (
    "kind string, shard int, path string, rows long, bytes long, sha256 string, inputs long, "
    "record_id string, uri string, reason string, detail string, schema_hex string, wall_s double, cpu_s double"
)
SUMMARY_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("shard", pa.int32()),
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("inputs", pa.int64()),
        ("record_id", pa.string()),
        ("uri", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("schema_hex", pa.string()),
        ("wall_s", pa.float64()),
        ("cpu_s", pa.float64()),
    ]
)


# -- output columns -----------------------------------------------------------------------------------

_SCALARS: dict[type, pa.DataType] = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def _column_spec(value: Any) -> tuple[Any, ...]:
    if isinstance(value, np.ndarray) and value.ndim >= 1:
        return ("tensor", tuple(value.shape), value.dtype.name)
    if isinstance(value, np.generic):
        value = value.item()
    for typ, arrow_type in _SCALARS.items():
        if type(value) is typ:
            return ("scalar", str(arrow_type))
    raise TypeError(f"unsupported output value of type {type(value).__name__}; return arrays or scalars")


def normalise_output(value: Any, default_name: str) -> dict[str, Any]:
    """A transform may return one array (-> ``default_name``) or a dict of arrays/scalars."""
    if isinstance(value, Mapping):
        out = dict(value)
    else:
        out = {default_name: value}
    for name in out:
        if not isinstance(name, str) or name in RESERVED:
            raise TypeError(f"output column name {name!r} is not allowed (reserved: {RESERVED})")
        if isinstance(out[name], np.ndarray) and out[name].dtype.kind not in "biuf":
            raise TypeError(f"output {name!r} has dtype {out[name].dtype}; numeric arrays only")
    return out


class ArrayPool:
    """A few shard-sized arrays kept for the next shard of this process.

    Fresh memory is zeroed page by page by the kernel on first touch (~3% of a preprocessing task's CPU,
    measured with perf); a worker writing several shards reuses the same two arrays instead (one being
    written while the next is built).
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.free: list[np.ndarray] = []
        self.lock = threading.Lock()

    def take(self, rows: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        with self.lock:
            for index, array in enumerate(self.free):
                if array.dtype == np.dtype(dtype) and array.shape[1:] == tuple(shape) and len(array) >= rows:
                    return self.free.pop(index)[:rows]
        return np.empty((rows, *shape), dtype)

    def give(self, array: np.ndarray) -> None:
        """Return an array (or a view of one) that nothing will read again."""
        base = array.base if isinstance(array.base, np.ndarray) else array
        with self.lock:
            self.free = [base, *self.free][: self.keep]


ARRAYS = ArrayPool()


class ShardColumns:
    """One shard's output columns, filled record by record.

    Each tensor column is one array, taken once per shard from :data:`ARRAYS` and filled in place:
    keeping hundreds of per-record arrays and stacking them at the end faulted ~20k fresh pages in per
    512-image shard (0.3-0.6 s of system time against ~1.9 s of decoding, measured). Grows by doubling
    when a tabular source yields more records than its files were counted as.
    """

    def __init__(self, specs: dict[str, tuple[Any, ...]], capacity: int) -> None:
        self.specs = specs
        self.record_ids: list[str] = []
        self.labels: list[int | None] = []
        self.tensors = {n: ARRAYS.take(max(capacity, 1), s[1], s[2]) for n, s in specs.items() if s[0] == "tensor"}
        self.scalars: dict[str, list[Any]] = {n: [] for n, s in specs.items() if s[0] == "scalar"}

    def release(self) -> None:
        """Hand the tensor arrays back for the next shard; call once the shard is written and dropped."""
        for column in self.tensors.values():
            ARRAYS.give(column)
        self.tensors = {}

    def __len__(self) -> int:
        return len(self.record_ids)

    def append(self, record_id: str, label: int | None, out: Mapping[str, Any]) -> None:
        row = len(self.record_ids)
        for name, column in self.tensors.items():
            if row == len(column):
                column = self.tensors[name] = np.concatenate([column, np.empty_like(column)])
            column[row] = out[name]
        for name, values in self.scalars.items():
            value = out[name]
            values.append(value.item() if isinstance(value, np.generic) else value)
        self.record_ids.append(record_id)
        self.labels.append(label)

    def table(self) -> pa.Table:
        fields = [pa.field("record_id", pa.string(), nullable=False), pa.field("label", pa.int64())]
        arrays: list[pa.Array] = [pa.array(self.record_ids, pa.string()), pa.array(self.labels, pa.int64())]
        for name, spec in self.specs.items():
            if spec[0] == "tensor":
                fields.append(tensor_field(name, spec[1], spec[2]))
                arrays.append(encode_tensors(self.tensors[name][: len(self)]))
            else:
                arrow_type = pa.type_for_alias(spec[1])
                fields.append(pa.field(name, arrow_type))
                arrays.append(pa.array(self.scalars[name], arrow_type))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def prefetch(read: Callable[[str], bytes], uris: list[str], window: int) -> Iterator[bytes]:
    """Read ``uris`` in order with up to ``window`` reads in flight (object stores are latency-bound).

    Bounded, so a shard of large files never sits in memory at once; errors surface in order.
    """
    if window <= 1:
        yield from (read(uri) for uri in uris)
        return
    with ThreadPoolExecutor(max_workers=window, thread_name_prefix="abai-read") as pool:
        pending: deque[Future[bytes]] = deque()
        for uri in uris:
            pending.append(pool.submit(read, uri))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _parse_label(raw: Any) -> int:
    if raw is None or isinstance(raw, bool):
        raise ValueError(raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        return int(raw.strip())
    raise TypeError(raw)


# -- the per-shard job -------------------------------------------------------------------------------


@dataclass
class BuiltShard:
    """A shard decoded and transformed, not yet written: its columns, quarantined records and cost so far."""

    shard: int
    inputs: int = 0
    columns: ShardColumns | None = None
    bad: list[QuarantineRecord] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0


@dataclass
class PreprocessJob(ShardJob):
    """Everything an executor needs to turn source records into shards. Picklable (stores drop their clients).

    Built by :func:`airflow_bigdata_ai.preprocess.plan.plan_job` on the driver: the transform is resolved
    (user code travels inside it, content-hashed), ``transform_kwargs`` are coerced, ``output_spec`` is
    normalised and the labels file is parsed, so executors neither import from the driver's path nor read
    the labels file.
    """

    source: SourceSpec
    source_store: ShardStore
    writer: ShardWriter
    transform: Transform = field(default_factory=ImagePipeline)
    transform_kwargs: dict[str, Any] = field(default_factory=dict)
    guards: ImageGuards = field(default_factory=ImageGuards)
    output_spec: dict[str, tuple[Any, ...]] | None = None
    labels: LabelsFile | None = None
    read_ahead: int = 8
    _fn: Callable[..., Any] | None = field(default=None, repr=False)
    summary_schema: ClassVar[pa.Schema] = SUMMARY_SCHEMA
    summary_ddl: ClassVar[str] = SUMMARY_DDL

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fn"] = None
        return state

    @property
    def fn(self) -> Callable[..., Any]:
        """The transform, loaded once per process (user code: from the shipped bundle, a changed module afresh)."""
        if self._fn is None:
            self._fn = self.transform.load() if isinstance(self.transform, UserCallable) else self.transform
        return self._fn

    def list_units(self, rows_per_shard: int, parallelism: int = 1) -> pa.Table:
        """The source's sorted, sharded listing, labelled from the shipped labels file if there is one."""
        labels = self.labels.mapping if self.labels is not None else None
        return list_units(self.source, self.source_store, rows_per_shard, parallelism, labels=labels)

    def process_shard(
        self, shard: int, units: Iterable[dict[str, Any]], on_input: Callable[[], None] | None = None
    ) -> list[dict[str, Any]]:
        """Process one shard's units, write its Parquet file, return summary rows (shard + quarantine).

        ``on_input`` is called for every input (progress reporting while a long task runs).
        """
        return self.write_shard(self.build_shard(shard, units, on_input))

    def build_shard(
        self, shard: int, units: Iterable[dict[str, Any]], on_input: Callable[[], None] | None = None
    ) -> BuiltShard:
        """Read, decode and transform one shard's units (the CPU-heavy half of :meth:`process_shard`)."""
        keep_large_allocations()
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        ordered = sorted(units, key=lambda u: u["record_id"])
        built = BuiltShard(shard)
        specs: dict[str, tuple[Any, ...]] | None = dict(self.output_spec) if self.output_spec else None
        built.columns = ShardColumns(specs, len(ordered)) if specs else None
        for record_id, uri, label, payload in self._records(ordered):
            built.inputs += 1
            if on_input is not None:
                on_input()
            try:
                out = self._apply(payload)
                record_specs = {name: _column_spec(value) for name, value in out.items()}
                if specs is None:
                    specs = record_specs
                elif record_specs != specs:
                    raise Quarantined(BAD_OUTPUT, f"output {record_specs} differs from {specs}")
            except Quarantined as exc:
                built.bad.append(QuarantineRecord(record_id, uri, exc.reason, exc.detail))
                continue
            built.columns = built.columns or ShardColumns(specs, len(ordered))
            built.columns.append(record_id, label, out)
        built.wall_s, built.cpu_s = time.perf_counter() - wall0, time.thread_time() - cpu0
        return built

    def write_shard(self, built: BuiltShard) -> list[dict[str, Any]]:
        """Encode and store a built shard; returns its summary rows. May run in another thread than the build."""
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        summary: dict[str, Any] = dict.fromkeys(SUMMARY_SCHEMA.names)
        summary.update(kind="shard", shard=built.shard, rows=0, bytes=0, inputs=built.inputs)
        if built.columns:
            table = built.columns.table()
            info = self.writer.write_table(built.shard, table)
            summary.update(
                path=info.path, rows=info.rows, bytes=info.bytes, sha256=info.sha256,
                schema_hex=table.schema.serialize().to_pybytes().hex(),
            )  # fmt: skip
            del table
        if built.columns is not None:
            built.columns.release()
        summary.update(wall_s=built.wall_s + time.perf_counter() - wall0, cpu_s=built.cpu_s + time.thread_time() - cpu0)
        rows = [summary]
        for record in built.bad:
            row: dict[str, Any] = dict.fromkeys(SUMMARY_SCHEMA.names)
            row.update(kind="bad", shard=built.shard, **record.to_dict())
            rows.append(row)
        return rows

    def _records(self, units: list[dict[str, Any]]) -> Iterable[tuple[str, str, int | None, Any]]:
        """(record_id, uri, label, payload) where payload is bytes or Quarantined or a row dict."""
        if self.source.format == "images":
            to_read = [u["uri"] for u in units if not u.get("label_error")]
            # local reads are page-cache fast: threads would only add GIL traffic
            window = 1 if isinstance(self.source_store, LocalStore) else self.read_ahead
            if window > 1:
                getattr(self.source_store, "client", None)  # create a boto3 client once: creation is not thread-safe
            contents = prefetch(self.source_store.read_bytes, to_read, window)
            for unit in units:
                if unit.get("label_error"):
                    yield unit["record_id"], unit["uri"], None, Quarantined(BAD_LABEL, unit["label_error"])
                    continue
                data = next(contents)  # infrastructure errors (missing object, S3 error) raise here
                yield unit["record_id"], unit["uri"], unit["label"], data
            return
        if self.source.is_query:  # rows arrive inline (preprocess.query), already sorted by id
            origin = f"table:{self.source.table}" if self.source.table else "query"  # where a bad row came from
            for unit in units:
                row = unit["row"]
                path = row.get(self.source.path_column) if self.source.path_column else origin
                yield self._row_record(unit["record_id"], path, row)
            return
        for unit in units:
            table = read_tabular(self.source, self.source_store, unit["uri"])
            for index, row in enumerate(table.to_pylist()):
                yield self._row_record(f"{unit['record_id']}#{index}", unit["uri"], row)

    def _row_record(self, record_id: str, uri: str | None, row: dict[str, Any]) -> tuple[str, str, int | None, Any]:
        """One table row: its label and payload (image bytes, the bytes of the file it names, or its values)."""
        label: int | None = None
        if self.source.label_column is not None:
            raw = row.pop(self.source.label_column, None)
            try:
                label = _parse_label(raw)
            except (TypeError, ValueError):
                return record_id, str(uri), None, Quarantined(BAD_LABEL, f"label {raw!r} is not an integer")
        if self.source.image_column is not None:
            return record_id, str(uri), label, row.get(self.source.image_column) or b""
        if self.source.path_column is not None:
            if not uri:
                return record_id, "", None, Quarantined(MISSING_FILE, f"no path in column {self.source.path_column!r}")
            target = uri if "://" in uri else str(self.source.root.join(uri))  # relative to the source's uri
            try:
                return record_id, target, label, self.source_store.read_bytes(target)
            except (FileNotFoundError, InvalidReference) as exc:
                return record_id, target, None, Quarantined(MISSING_FILE, f"{type(exc).__name__}: {exc}")
        return record_id, str(uri), label, row

    def _apply(self, payload: Any) -> dict[str, Any]:
        if isinstance(payload, Quarantined):
            raise payload
        if isinstance(payload, (bytes, bytearray)):
            image = decode_image(bytes(payload), self.guards)
            default = "image"
            arg: Any = image
        else:
            default = "features"
            arg = payload
        fn = self.fn  # an import error is a configuration error: it raises, it is not quarantined
        try:
            return normalise_output(fn(arg, **self.transform_kwargs), default)
        except Quarantined:
            raise
        except Exception as exc:
            raise Quarantined(TRANSFORM_ERROR, f"{type(exc).__name__}: {exc}") from None
