"""Sources: a folder or prefix of images (labels from sub-folders or a labels file), Parquet, CSV, and
a Spark table or SQL query (:mod:`airflow_bigdata_ai.preprocess.query`).

Listing runs where it is called: the Spark engine calls :func:`list_units` inside an executor task, so
neither the Airflow worker nor the driver ever holds the data. The listing is sorted and sharded here,
which is what makes shard contents independent of partitioning, retries and the store (file or S3).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from airflow_bigdata_ai.preprocess.errors import SourceError, SourceLayoutError
from airflow_bigdata_ai.preprocess.images import IMAGE_EXTENSIONS
from airflow_bigdata_ai.shards.arrow_io import arrow_buffer, parquet_table
from airflow_bigdata_ai.shards.paths import StoreURI, parse_uri
from airflow_bigdata_ai.shards.store import ShardStore

QUERY_FORMATS = ("table", "sql")
FORMATS = ("images", "parquet", "csv", *QUERY_FORMATS)

# One listing unit: an image file, or a whole tabular file. Spark DDL and Arrow schema must agree.
UNIT_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("label", pa.int64()),
        pa.field("label_error", pa.string()),
        pa.field("shard", pa.int32()),
    ]
)


@dataclass(frozen=True)
class SourceSpec:
    """What to read. Plain data, so it can come from a templated operator argument.

    ``labels`` (images): ``"folders"`` (first sub-folder is the class), ``"none"``, or a CSV labels file
    anywhere in the same store: a URI, or a path relative to ``uri`` (``"../labels.csv"``); format in
    :mod:`airflow_bigdata_ai.preprocess.labels`. ``classes`` fixes the class order (label = index);
    without it the sorted folder names are the classes. Tabular sources (``parquet``, ``csv``)
    give one output shard per input file; ``image_column`` holds encoded image bytes to decode.
    Paths with a segment starting with ``.`` or ``_`` (``_SUCCESS``, ``.tmp``) are not inputs.

    Query sources: ``table`` (a catalog table name) or ``sql`` (a query, templated in the operator), run on
    the shared Spark application. A row's payload is its ``image_column`` (encoded image bytes), the file
    its ``path_column`` names (a URI inside the store at ``uri``), or else the row's other columns.
    ``id_column`` names a unique key (else a row's id is the sha256 of its values); ``label_column`` as for
    tabular files. ``format`` is implied by ``table=`` or ``sql=``.
    """

    uri: str = ""
    format: str = "images"
    labels: str = "folders"
    classes: tuple[str, ...] | None = None
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    image_column: str | None = None
    label_column: str | None = None
    columns: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    table: str | None = None
    sql: str | None = None
    id_column: str | None = None
    path_column: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"source format must be one of {FORMATS}, got {self.format!r}")
        if self.is_query:
            if (self.table is None) == (self.sql is None) or self.format != ("table" if self.table else "sql"):
                raise ValueError("a query source gives exactly one of table= or sql=")
            if not (self.table or "").strip() and not (self.sql or "").strip():
                raise ValueError("the source's table name or SQL query is empty")
            if self.image_column and self.path_column:
                raise ValueError("give image_column (image bytes) or path_column (image URIs), not both")
            if self.path_column and not self.uri:
                raise ValueError("path_column needs uri=: the store root the paths live in")
        elif self.table is not None or self.sql is not None:
            raise ValueError(f"table= and sql= make a query source; format {self.format!r} reads uri=")
        elif not self.uri:
            raise ValueError("the source needs uri= (or table= / sql=)")
        if self.uri:
            parse_uri(self.uri)

    @property
    def is_query(self) -> bool:
        return self.format in QUERY_FORMATS

    def describe(self) -> str:
        """The source in a log line or error: its URI, table name or (shortened) query."""
        if self.table:
            return f"table {self.table}"
        if self.sql:
            text = " ".join(self.sql.split())
            return f"query {text[:200]!r}"
        return self.uri

    @classmethod
    def coerce(cls, value: SourceSpec | Mapping[str, Any] | str) -> SourceSpec:
        if isinstance(value, SourceSpec):
            return value
        if isinstance(value, str):
            return cls(uri=value)
        data = dict(value)
        if "format" not in data and ("table" in data or "sql" in data):
            data["format"] = "table" if "table" in data else "sql"
        for key in ("classes", "extensions", "columns"):
            if data.get(key) is not None:
                data[key] = tuple(str(v) for v in data[key])
        return cls(**data)

    @property
    def root(self) -> StoreURI:
        return parse_uri(self.uri.rstrip("/") or self.uri)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "format": self.format,
            "labels": self.labels,
            "classes": list(self.classes) if self.classes is not None else None,
            "image_column": self.image_column,
            "label_column": self.label_column,
            **({"table": self.table} if self.table else {}),
            **({"sql": self.sql, "id_column": self.id_column} if self.sql else {}),
            **({"path_column": self.path_column} if self.path_column else {}),
        }


def _relative(root: StoreURI, uri: StoreURI) -> str:
    base = root.path.rstrip("/")
    return uri.path[len(base) + 1 :] if base else uri.path


def _label_for(
    rel: str, spec: SourceSpec, classes: list[str] | None, labels_file: Mapping[str, str] | None
) -> tuple[int | None, str | None]:
    """(label, None) or (None, why the label is bad)."""
    if spec.labels == "none":
        return None, None
    if labels_file is not None:
        if rel not in labels_file:
            return None, "no entry in the labels file"
        raw = labels_file[rel]
        if classes is not None:
            if raw in classes:
                return classes.index(raw), None
            return None, f"label {raw!r} is not one of the classes"
        try:
            return int(raw), None
        except ValueError:
            return None, f"label {raw!r} is not an integer"
    parts = rel.split("/")
    if len(parts) < 2:
        return None, "file is not inside a class folder"
    assert classes is not None
    if parts[0] not in classes:
        return None, f"folder {parts[0]!r} is not one of the classes"
    return classes.index(parts[0]), None


def shard_count(inputs: int, rows_per_shard: int, parallelism: int = 1) -> int:
    """The fewest shards of at most ``rows_per_shard`` inputs, rounded up to a multiple of ``parallelism``.

    Rounding lets every one of ``parallelism`` tasks write the same number of equal shards, so no core idles
    at the end (2,400 images at 512 rows on 2 cores: 6 shards of 400 instead of 5 of up to 512).
    """
    shards = -(-inputs // rows_per_shard)
    shards = -(-shards // parallelism) * parallelism
    return max(1, min(shards, inputs))


def list_units(
    spec: SourceSpec,
    store: ShardStore,
    rows_per_shard: int,
    parallelism: int = 1,
    labels: Mapping[str, str] | None = None,
) -> pa.Table:
    """The sorted, sharded listing of ``spec`` (raises :class:`SourceError` for a missing/empty source).

    Images are cut into :func:`shard_count` contiguous shards whose sizes differ by at most one; tabular
    sources get one shard per file. ``labels``: the parsed labels file (the driver reads it once and ships
    it; read here only when a caller did not).
    """
    root = store.resolve(spec.root)
    objects = store.list(root)
    if not objects:
        raise SourceError(f"source {spec.uri} does not exist or is empty")
    rels = sorted((_relative(root, o), o) for o in objects)
    rels = [(r, o) for r, o in rels if not any(seg.startswith((".", "_")) for seg in r.split("/"))]
    if spec.format == "images":
        exts = tuple(e.lower() for e in spec.extensions)
        files = [(r, o) for r, o in rels if r.lower().endswith(exts)]
        if not files:
            raise SourceLayoutError(f"source {spec.uri} has no files ending in {exts}")
        labels_file = labels
        if labels_file is None and spec.labels not in ("folders", "none"):
            from airflow_bigdata_ai.preprocess.labels import read_labels

            labels_file = read_labels(spec, store).mapping
        classes = list(spec.classes) if spec.classes is not None else None
        if classes is None and spec.labels == "folders":
            classes = sorted({r.split("/")[0] for r, _ in files if "/" in r})
        cols: dict[str, list[Any]] = {n: [] for n in UNIT_SCHEMA.names}
        shards = shard_count(len(files), rows_per_shard, parallelism)
        for index, (rel, obj) in enumerate(files):
            label, error = _label_for(rel, spec, classes, labels_file)
            cols["record_id"].append(rel)
            cols["uri"].append(str(obj))
            cols["label"].append(label)
            cols["label_error"].append(error)
            cols["shard"].append(index * shards // len(files))
        return pa.Table.from_pydict(cols, schema=UNIT_SCHEMA)
    suffix = ".parquet" if spec.format == "parquet" else ".csv"
    files = [(r, o) for r, o in rels if r.lower().endswith(suffix)]
    if not files:
        raise SourceLayoutError(f"source {spec.uri} has no {suffix} files")
    return pa.Table.from_pydict(
        {
            "record_id": [r for r, _ in files],
            "uri": [str(o) for _, o in files],
            "label": [None] * len(files),
            "label_error": [None] * len(files),
            "shard": list(range(len(files))),
        },
        schema=UNIT_SCHEMA,
    )


def units_by_shard(units: pa.Table) -> dict[int, list[dict[str, Any]]]:
    """A listing's units grouped by shard, shards in ascending order."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for unit in units.to_pylist():
        grouped.setdefault(int(unit["shard"]), []).append(unit)
    return dict(sorted(grouped.items()))


def read_tabular(spec: SourceSpec, store: ShardStore, uri: str) -> pa.Table:
    """One Parquet or CSV file as a table (errors raise: a whole unreadable file is not one bad record)."""
    data = store.read_bytes(uri)
    if spec.format == "parquet":
        return parquet_table(data, spec.columns)
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(pa.BufferReader(arrow_buffer(data)), **spec.options)
    return table.select(list(spec.columns)) if spec.columns else table


def record_name(rel: str) -> str:
    return posixpath.basename(rel)
