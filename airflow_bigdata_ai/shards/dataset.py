"""Writing, committing and reading shard sets.

Layout of one output (deterministic per dag, task and logical date; ``run=<run id>`` for a run without one)::

    <root>/<dag_id>/<task_id>/ds=<date>/
        attempts/<attempt_id>/part-00000.parquet   # each attempt writes only under its own prefix
        _manifests/<attempt_id>.json                # immutable, created with a conditional put
        _commits/0000000001.json                    # one per publish, created with a conditional put
        _CURRENT                                    # copy of the newest commit record (for people and tools)

An attempt's id ends in ``-g<N>``: the generation it started from (the newest commit record then). Its
commit creates its manifest, then claims commit record N+1 with a conditional put: of two live attempts
of the same task (a zombie and its retry) that started from the same generation, exactly one claim
succeeds; the other raises :class:`CommitConflict` and removes its own staging and manifest (Spark's
OutputCommitCoordinator, without a coordinator: the store's create-if-absent decides). A reader sees the
newest commit record, so one put is the whole publish: a crash before it publishes nothing, after it the
publish stands. The winner then deletes the attempts (staging, temp files, manifests) that started from
an older generation, which can never publish; an attempt that started after the publish is left alone.
Commit records are a few hundred bytes and are kept: deleting one would let a stale attempt claim it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_bigdata_ai.shards.arrow_io import parquet_table
from airflow_bigdata_ai.shards.commits import (
    ATTEMPTS,
    POINTER,
    attempt_generation,
    delete_unpublishable,
    latest_commit,
    read_record,
    record_name,
)
from airflow_bigdata_ai.shards.errors import ChecksumMismatch, CommitConflict, InvalidReference
from airflow_bigdata_ai.shards.paths import MANIFESTS_SEGMENT, StoreURI, parse_uri, safe_relative_path, safe_segment
from airflow_bigdata_ai.shards.refs import Producer, ShardSet, check_sha256
from airflow_bigdata_ai.shards.store import BytesLike, ShardStore
from airflow_bigdata_ai.shards.tensors import schema_summary

MANIFEST_KIND = "ShardManifest"
MANIFEST_VERSION = "1.0"
MANIFESTS = MANIFESTS_SEGMENT


def sha256_hex(data: BytesLike) -> str:
    return hashlib.sha256(data).hexdigest()


def partition_segment(logical_date: datetime | str | None, run_id: str | None = None) -> str:
    """``ds=2026-11-24`` for midnight dates, ``ds=2026-11-24T13-00-00`` otherwise.

    A run without a logical date (asset-triggered, or triggered with none) has no date to share with a
    rerun, so it gets a partition of its own: ``run=<run id>`` (made path-safe). Only a caller that knows
    neither gets ``ds=none``.
    """
    if logical_date is None:
        return f"run={safe_segment(run_id)}" if run_id else "ds=none"
    if isinstance(logical_date, str):
        logical_date = datetime.fromisoformat(logical_date)
    if logical_date.tzinfo is not None:
        logical_date = logical_date.astimezone(UTC)
    if (logical_date.hour, logical_date.minute, logical_date.second) == (0, 0, 0):
        return f"ds={logical_date:%Y-%m-%d}"
    return f"ds={logical_date:%Y-%m-%dT%H-%M-%S}"


def output_uri(
    root: str, dag_id: str, task_id: str, logical_date: datetime | str | None, run_id: str | None = None
) -> str:
    """Deterministic output location: a rerun for the same date (or, without a date, of the same run)
    lands on the same place and replaces it; runs without a logical date never share one."""
    base = parse_uri(root)
    rel = f"{safe_segment(dag_id)}/{safe_segment(task_id)}/{partition_segment(logical_date, run_id)}"
    return str(base.join(rel))


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: path relative to the dataset directory, rows, bytes and sha256 of the file."""

    path: str
    rows: int
    bytes: int
    sha256: str

    @classmethod
    def from_dict(cls, data: Any) -> ShardInfo:
        if not isinstance(data, dict) or set(data) != {"path", "rows", "bytes", "sha256"}:
            raise InvalidReference(f"manifest shard entry must have path, rows, bytes, sha256: {data!r}")
        if not isinstance(data["rows"], int) or not isinstance(data["bytes"], int):
            raise InvalidReference(f"manifest shard entry has non-integer rows/bytes: {data!r}")
        safe_relative_path(data["path"])
        check_sha256(data["sha256"], f"shard {data['path']} sha256")
        return cls(**data)


@dataclass(frozen=True)
class Manifest:
    """The full listing of one committed shard set (stored beside the data, never in XCom)."""

    attempt_id: str
    created_at: str
    schema: dict[str, str]
    arrow_schema: str  # base64-free: IPC-serialised schema as hex, keeps tensor metadata exact
    shards: tuple[ShardInfo, ...]
    producer: Producer = field(default_factory=Producer)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_bytes(self) -> bytes:
        body = {
            "kind": MANIFEST_KIND,
            "version": MANIFEST_VERSION,
            "attempt_id": self.attempt_id,
            "created_at": self.created_at,
            "schema": self.schema,
            "arrow_schema": self.arrow_schema,
            "producer": asdict(self.producer),
            "stats": self.stats,
            "shards": [asdict(s) for s in self.shards],
        }
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(data)
        except json.JSONDecodeError as exc:
            raise InvalidReference(f"manifest is not valid JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("kind") != MANIFEST_KIND:
            raise InvalidReference("not a shard manifest (kind != ShardManifest)")
        version = str(body.get("version", ""))
        if version.split(".")[0] != MANIFEST_VERSION.split(".")[0]:
            raise InvalidReference(f"unsupported manifest major version {version!r}")
        for name, typ in (("attempt_id", str), ("schema", dict), ("arrow_schema", str), ("shards", list)):
            if not isinstance(body.get(name), typ):
                raise InvalidReference(f"manifest field {name!r} missing or not a {typ.__name__}")
        return cls(
            attempt_id=body["attempt_id"],
            created_at=str(body.get("created_at", "")),
            schema=body["schema"],
            arrow_schema=body["arrow_schema"],
            shards=tuple(ShardInfo.from_dict(s) for s in body["shards"]),
            producer=Producer.from_dict(body.get("producer")),
            stats=body.get("stats") or {},
        )

    def pa_schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(self.arrow_schema)))


ROW_GROUP_BYTES = 32 << 20
PAGE_BYTES = 1 << 20  # Parquet's default data page size
LZ4_SAMPLE_BYTES = 1 << 20
LZ4_MAX_RATIO = 0.8  # below 20% saving LZ4 costs more CPU per shard than the bytes it saves are worth


def tensor_codec(column: pa.ChunkedArray) -> str:
    """``"lz4"`` for tensor columns it shrinks by at least 20%, else ``"none"``; judged on the first MiB.

    Photo-sized uint8 pixels barely compress (224x224 photos: LZ4 saves 13% and costs ~100 ms of a 77 MB
    shard's write, measured), while small or synthetic images shrink several times. Deterministic: the
    same column always gets the same codec.
    """
    chunks = [c for c in column.chunks if len(c)]
    if not chunks or chunks[0].buffers()[2] is None:
        return "none"
    first = chunks[0]
    width = np.int64 if pa.types.is_large_binary(first.type) else np.int32
    offsets = np.frombuffer(first.buffers()[1], width)[first.offset : first.offset + len(first) + 1]
    stop = offsets[min(int(np.searchsorted(offsets, offsets[0] + LZ4_SAMPLE_BYTES)), len(offsets) - 1)]
    sample = first.buffers()[2].slice(int(offsets[0]), int(stop - offsets[0]))
    if sample.size == 0:
        return "none"
    # the C library keeps the freed output for the next shard; mimalloc hands it back and faults it in again
    compressed = pa.compress(sample, codec="lz4", asbytes=False, memory_pool=pa.system_memory_pool())
    return "lz4" if compressed.size <= LZ4_MAX_RATIO * sample.size else "none"


def write_parquet(table: pa.Table, sink: Any) -> None:
    """Deterministic Parquet encoding: the same table always gives the same bytes (same checksum).

    Tensor (binary) columns: LZ4 where it pays (:func:`tensor_codec`), no dictionary, no statistics: dense
    pixel/float bytes never repeat, so dictionaries and min/max statistics cost CPU on every write and read.
    Ordinary columns get zstd, dictionaries and statistics. Row groups of at most ``ROW_GROUP_BYTES``, so a
    reader can stream a shard; not smaller: a reader that gets several chunks per column copies them together
    (the handoff benchmark read its 25 MB shards in 0.37 s with 8 MB groups, 0.34 s as one group, one run
    each). ``sink``: a pyarrow stream or a binary file.
    """
    binary = {f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)}
    ordinary = [f.name for f in table.schema if f.name not in binary]

    def rows_in(limit: int) -> int:
        return max(1, limit * table.num_rows // max(table.nbytes, 1))

    pq.write_table(
        table,
        sink,
        row_group_size=rows_in(ROW_GROUP_BYTES),
        # Rows handed to the encoder at a time: its buffer holds a whole batch before a page is cut, so the
        # default 1,024 rows of 150 KB images made one 32 MB buffer per row group, mapped and zeroed afresh
        # every time. Batches of about one page keep it at 1 MB and halve the encoding time (measured).
        write_batch_size=min(1024, rows_in(PAGE_BYTES)),
        compression={f.name: tensor_codec(table[f.name]) if f.name in binary else "zstd" for f in table.schema},
        use_dictionary=ordinary,
        write_statistics=ordinary,
        store_schema=True,
    )


def encode_parquet(table: pa.Table) -> memoryview:
    """:func:`write_parquet` into memory; a view of Arrow's buffer, not a copy."""
    sink = pa.BufferOutputStream()
    write_parquet(table, sink)
    return memoryview(sink.getvalue())


class _ChecksummingFile:
    """Passes writes through to ``handle`` and keeps their size and sha256 (for streamed shards)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: BytesLike) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:  # the store owns the handle: it fsyncs and publishes it
        self.closed = True


@dataclass
class ShardWriter:
    """Writes the shards of one attempt and commits them. Picklable: ship it to executors and workers.

    Executors call :meth:`write_table` (or :meth:`write_bytes`) with a deterministic shard index; the
    driver collects the returned :class:`ShardInfo` and calls :meth:`commit` once. Creating a writer reads
    the output's newest generation (once, on the driver) and puts it in ``attempt_id`` (``...-g<N>``); an
    ``attempt_id`` passed with that suffix already is taken as is.
    """

    store: ShardStore
    dataset_uri: str
    attempt_id: str = ""

    def __post_init__(self) -> None:
        dataset = self.store.resolve(self.dataset_uri)
        if attempt_generation(self.attempt_id) is None:
            stem = self.attempt_id or f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
            self.attempt_id = f"{stem}-g{latest_commit(self.store, dataset)[0]}"
        safe_relative_path(self.attempt_id)

    @property
    def dataset(self) -> StoreURI:
        return self.store.resolve(self.dataset_uri)

    @property
    def base_generation(self) -> int:
        """The generation this attempt started from; its commit claims the next one."""
        generation = attempt_generation(self.attempt_id)
        if generation is None:  # only if attempt_id was reassigned after construction
            raise ValueError(f"attempt id {self.attempt_id!r} does not end in -g<generation>")
        return generation

    def shard_path(self, shard_index: int, suffix: str = ".parquet") -> str:
        return f"{ATTEMPTS}/{self.attempt_id}/part-{shard_index:05d}{suffix}"

    def write_bytes(self, relative_path: str, data: BytesLike, rows: int) -> ShardInfo:
        target = self.dataset.join(safe_relative_path(relative_path))
        try:
            self.store.write_bytes(target, data)
        except FileNotFoundError as exc:
            self._raise_if_superseded(exc)
            raise
        return ShardInfo(path=relative_path, rows=rows, bytes=memoryview(data).nbytes, sha256=sha256_hex(data))

    def write_table(self, shard_index: int, table: pa.Table) -> ShardInfo:
        """Streams the Parquet encoding into the store: a shard of tens of MB never sits in memory as bytes,
        whose fresh pages cost more system time than the encoding itself (measured: 0.5 s vs 0.07 s for
        77 MB on a 2-core VM)."""
        path = self.shard_path(shard_index)
        try:
            with self.store.open_write(self.dataset.join(safe_relative_path(path))) as handle:
                sink = _ChecksummingFile(handle)
                write_parquet(table, pa.PythonFile(sink, mode="w"))
        except FileNotFoundError as exc:  # a newer publish's cleanup removed our staging mid-write
            self._raise_if_superseded(exc)
            raise
        return ShardInfo(path=path, rows=table.num_rows, bytes=sink.size, sha256=sink.digest.hexdigest())

    def commit(
        self,
        shards: Iterable[ShardInfo],
        schema: pa.Schema,
        producer: Producer | None = None,
        stats: dict[str, Any] | None = None,
        *,
        keep_superseded: bool = False,
    ) -> ShardSet:
        """Publish atomically and return the reference; superseded attempts are removed afterwards.

        Raises :class:`CommitConflict` when another attempt published first since this one started (this
        attempt's staging and manifest are removed before it raises: a loser leaves nothing behind), or
        when this attempt already committed (nothing is removed then).
        """
        ordered = tuple(sorted(shards, key=lambda s: s.path))
        if len({s.path for s in ordered}) != len(ordered):
            raise ValueError("two shards share a path; shard indexes must be unique")
        manifest = Manifest(
            attempt_id=self.attempt_id,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            schema=schema_summary(schema),
            arrow_schema=schema.serialize().to_pybytes().hex(),
            shards=ordered,
            producer=producer or Producer(),
            stats=stats or {},
        )
        body = manifest.to_bytes()
        manifest_uri = self.dataset.join(f"{MANIFESTS}/{self.attempt_id}.json")
        if not self.store.put_if_absent(manifest_uri, body):
            raise CommitConflict(f"manifest {manifest_uri} already exists: attempt {self.attempt_id} committed twice")
        digest = sha256_hex(body)
        generation = self.base_generation + 1
        record = {
            "manifest": f"{MANIFESTS}/{self.attempt_id}.json",
            "sha256": digest,
            "generation": generation,
            "attempt_id": self.attempt_id,
        }
        encoded = json.dumps(record, sort_keys=True).encode()
        if not self.store.put_if_absent(self.dataset.join(record_name(generation)), encoded):
            claimed = read_record(self.store, self.dataset, generation)
            if claimed != record:  # equal: a retried conditional put found the record its first try created
                self._lose(claimed.get("attempt_id"), generation)
        if latest_commit(self.store, self.dataset)[0] == generation:  # else a newer publish's copy stands
            self.store.write_bytes(self.dataset.join(POINTER), encoded)
        if not keep_superseded:
            delete_unpublishable(self.store, self.dataset, generation, self.attempt_id)
        return ShardSet(
            manifest_uri=str(manifest_uri),
            manifest_sha256=digest,
            schema=manifest.schema,
            num_rows=manifest.num_rows,
            num_shards=len(ordered),
            total_bytes=manifest.total_bytes,
            producer=manifest.producer,
            stats=manifest.stats,
        )

    def abort(self) -> None:
        """Remove this attempt's staged shards and manifest (it did not publish, or lost the commit).

        Does nothing for the attempt that won its commit: its shards are the published output, and callers
        abort on any error, including one raised after the publish.
        """
        generation = self.base_generation + 1
        if self.store.exists(self.dataset.join(record_name(generation))):
            if read_record(self.store, self.dataset, generation).get("attempt_id") == self.attempt_id:
                return
        self.store.delete_prefix(self.dataset.join(f"{ATTEMPTS}/{self.attempt_id}"))
        manifest_uri = self.dataset.join(f"{MANIFESTS}/{self.attempt_id}.json")
        if self.store.exists(manifest_uri):
            self.store.delete([manifest_uri])

    def _lose(self, winner: Any, generation: int) -> NoReturn:
        self.abort()
        raise CommitConflict(
            f"attempt {self.attempt_id} lost the commit of {self.dataset}: attempt {winner} published "
            f"generation {generation} first (two live attempts of one task, e.g. a zombie and its retry); "
            "this attempt's staged shards and manifest were removed, its output is discarded"
        )

    def _raise_if_superseded(self, exc: BaseException) -> None:
        """A write failed because its file vanished: if a newer publish doomed this attempt, say so."""
        newest, record = latest_commit(self.store, self.dataset)
        if newest > self.base_generation:
            raise CommitConflict(
                f"attempt {self.attempt_id} was superseded while writing {self.dataset}: attempt "
                f"{record.get('attempt_id') if record else None} published generation {newest}; "
                "this attempt can no longer publish"
            ) from exc


def current_shardset(store: ShardStore, dataset_uri: str) -> ShardSet | None:
    """The reference published at ``dataset_uri`` (its newest commit record), or None if nothing was committed."""
    dataset = store.resolve(dataset_uri)
    _generation, pointer = latest_commit(store, dataset)
    if pointer is None:
        return None
    manifest_uri = dataset.join(safe_relative_path(pointer["manifest"]))
    body = store.read_bytes(manifest_uri)
    if sha256_hex(body) != pointer["sha256"]:
        raise ChecksumMismatch(f"manifest {manifest_uri} does not match the sha256 of its commit record")
    manifest = Manifest.from_bytes(body)
    return ShardSet(
        manifest_uri=str(manifest_uri),
        manifest_sha256=pointer["sha256"],
        schema=manifest.schema,
        num_rows=manifest.num_rows,
        num_shards=len(manifest.shards),
        total_bytes=manifest.total_bytes,
        producer=manifest.producer,
        stats=manifest.stats,
    )


def load_manifest(store: ShardStore, shardset: ShardSet) -> Manifest:
    """Read and verify the manifest a reference names, before any shard is touched."""
    shardset = ShardSet.coerce(shardset)
    manifest_uri = store.resolve(shardset.manifest_uri)
    if not store.exists(manifest_uri):
        raise FileNotFoundError(
            f"manifest {manifest_uri} no longer exists: the output was superseded by a rerun or deleted"
        )
    body = store.read_bytes(manifest_uri)
    if sha256_hex(body) != shardset.manifest_sha256:
        raise ChecksumMismatch(
            f"manifest {shardset.manifest_uri} has sha256 {sha256_hex(body)}, "
            f"the reference expects {shardset.manifest_sha256}"
        )
    manifest = Manifest.from_bytes(body)
    if manifest.num_rows != shardset.num_rows or len(manifest.shards) != shardset.num_shards:
        raise InvalidReference(
            f"manifest lists {manifest.num_rows} rows in {len(manifest.shards)} shards, "
            f"the reference says {shardset.num_rows} in {shardset.num_shards}"
        )
    return manifest


def shard_uris(store: ShardStore, shardset: ShardSet) -> list[str]:
    """Full URIs of every shard (validated to stay inside the dataset directory)."""
    dataset = store.resolve(ShardSet.coerce(shardset).dataset_uri)
    return [str(dataset.join(s.path)) for s in load_manifest(store, shardset).shards]


def read_shard(store: ShardStore, dataset_uri: str, shard: ShardInfo, *, verify: bool = True) -> pa.Table:
    """One shard as a table; with ``verify`` the bytes must match the manifest's sha256."""
    uri = store.resolve(dataset_uri).join(shard.path)
    data = store.read_bytes(uri)
    if verify and sha256_hex(data) != shard.sha256:
        raise ChecksumMismatch(f"shard {uri} has sha256 {sha256_hex(data)}, the manifest expects {shard.sha256}")
    return parquet_table(data)


def iter_tables(store: ShardStore, shardset: ShardSet, *, verify: bool = True) -> Iterator[pa.Table]:
    shardset = ShardSet.coerce(shardset)
    manifest = load_manifest(store, shardset)
    for shard in manifest.shards:
        yield read_shard(store, shardset.dataset_uri, shard, verify=verify)


def read_table(store: ShardStore, shardset: ShardSet, *, verify: bool = True) -> pa.Table:
    """The whole shard set in one table (small data, tests, notebooks)."""
    shardset = ShardSet.coerce(shardset)
    manifest = load_manifest(store, shardset)
    tables = [read_shard(store, shardset.dataset_uri, s, verify=verify) for s in manifest.shards]
    if not tables:
        return manifest.pa_schema().empty_table()
    return pa.concat_tables(tables)
