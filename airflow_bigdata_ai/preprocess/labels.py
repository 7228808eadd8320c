"""Labels files: located, read and validated on the driver, before any Spark job starts.

A labels file may sit anywhere in the store of the source (beside the image folder, in a sibling prefix,
in another bucket reached with the same S3 credentials). Reading it on the driver turns every problem with
the file itself (missing, empty, no ``path,label`` header, a path listed twice) into one clear error that
names the file, instead of an error inside an executor's traceback; the parsed mapping then travels in the
job, so executors never read it. A bad *value* (an unknown class, a non-integer) stays a per-record
``bad_label`` quarantine: that is bad data, counted against ``max_bad_fraction``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
from dataclasses import dataclass

from airflow_bigdata_ai.preprocess.errors import SourceLayoutError
from airflow_bigdata_ai.preprocess.sources import SourceSpec
from airflow_bigdata_ai.shards.errors import InvalidReference
from airflow_bigdata_ai.shards.paths import StoreURI, parse_uri
from airflow_bigdata_ai.shards.store import LocalStore, S3Store, ShardStore

LABEL_MODES = ("folders", "none")
MAX_LISTED = 5


@dataclass(frozen=True)
class LabelsFile:
    """A parsed labels file: ``{path relative to the source: raw label}``, and what identifies the file."""

    uri: str
    sha256: str
    mapping: dict[str, str]

    def describe(self) -> dict[str, object]:
        return {"uri": self.uri, "sha256": self.sha256, "rows": len(self.mapping)}


def uses_labels_file(spec: SourceSpec) -> bool:
    return spec.format == "images" and spec.labels not in LABEL_MODES


def labels_uri(spec: SourceSpec) -> StoreURI:
    """``spec.labels`` as a URI: absolute (``file://``, ``/path``, ``s3://``), or relative to the source folder
    (``labels.csv``, ``../labels.csv``)."""
    raw = spec.labels.strip()
    if "://" in raw or raw.startswith("/"):
        return parse_uri(raw)
    root = spec.root
    joined = posixpath.normpath(posixpath.join(root.path or "", raw))
    if joined == ".." or joined.startswith("../") or (root.scheme == "file" and not joined.startswith("/")):
        raise SourceLayoutError(f"labels file {raw!r} points above the root of {root}")
    return parse_uri(f"s3://{root.bucket}/{joined}" if root.scheme == "s3" else joined)


def labels_store(source_store: ShardStore, uri: StoreURI) -> ShardStore:
    """A store that may read ``uri``: the source's store, or one with the same credentials beside it."""
    if uri.scheme != source_store.root.scheme:
        scheme = source_store.root.scheme
        raise SourceLayoutError(
            f"labels file {uri} is not in the store of the source ({source_store.root}): use {scheme}://"
        )
    try:
        source_store.resolve(uri)
        return source_store
    except InvalidReference:
        pass
    if isinstance(source_store, S3Store):
        return S3Store(f"s3://{uri.bucket}", source_store.options)
    return LocalStore(str(uri.parent()))


def read_labels(spec: SourceSpec, source_store: ShardStore) -> LabelsFile:
    """Read and validate ``spec.labels`` (see :func:`parse_labels`).

    A missing labels file is a :class:`SourceLayoutError` too (not retried): the file is named in the
    task's own settings, and the task that writes it (if any) has finished before this one starts.
    """
    uri = labels_uri(spec)
    store = labels_store(source_store, uri)
    try:
        data = store.read_bytes(uri)
    except FileNotFoundError as exc:
        raise SourceLayoutError(f"labels file {uri} does not exist") from exc
    except IsADirectoryError as exc:
        raise SourceLayoutError(f"labels file {uri} is a folder, not a CSV file") from exc
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
        if code in ("NoSuchKey", "404", "NotFound"):
            raise SourceLayoutError(f"labels file {uri} does not exist") from exc
        raise
    return LabelsFile(str(uri), hashlib.sha256(data).hexdigest(), parse_labels(data, str(uri), spec.classes))


def parse_labels(data: bytes, name: str, classes: tuple[str, ...] | None = None) -> dict[str, str]:
    """``path,label`` CSV -> mapping. Raises :class:`SourceLayoutError` naming ``name`` and the problem.

    Header row with ``path`` and ``label`` (other columns are ignored; a UTF-8 BOM is fine); paths are
    relative to the source folder (``./`` prefixes and surrounding spaces are dropped); each path once.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceLayoutError(f"labels file {name} is not UTF-8 text ({exc})") from exc
    if not text.strip():
        raise SourceLayoutError(f"labels file {name} is empty; it needs a 'path,label' header and one row per image")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader)]
    if "path" not in header or "label" not in header:
        raise SourceLayoutError(
            f"labels file {name} has the header {','.join(header)!r}; it needs the columns 'path' and 'label' "
            "(first line 'path,label')"
        )
    path_col, label_col = header.index("path"), header.index("label")
    mapping: dict[str, str] = {}
    lines: dict[str, int] = {}
    duplicates: list[str] = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(path_col, label_col):
            raise SourceLayoutError(f"labels file {name} line {line} has {len(row)} columns, fewer than the header")
        path = _relative_path(row[path_col], name, line)
        if path in mapping:
            duplicates.append(f"{path!r} (lines {lines[path]} and {line})")
            continue
        mapping[path] = row[label_col].strip()
        lines[path] = line
    if duplicates:
        more = len(duplicates) - MAX_LISTED
        shown = "; ".join(duplicates[:MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")
        raise SourceLayoutError(f"labels file {name} lists {len(duplicates)} path(s) more than once: {shown}")
    if not mapping:
        raise SourceLayoutError(f"labels file {name} has a header but no rows")
    if classes is None and not any(_is_int(v) for v in mapping.values()):
        names = sorted(set(mapping.values()))
        hint = f" e.g. classes={names[:20]!r}" if len(names) <= 20 else ""
        raise SourceLayoutError(
            f"labels file {name} has class names, not integers: give the source 'classes' (label = index){hint}"
        )
    return mapping


def _relative_path(raw: str, name: str, line: int) -> str:
    path = raw.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    if not path:
        raise SourceLayoutError(f"labels file {name} line {line} has an empty path")
    if path.startswith("/") or "://" in path or ".." in path.split("/"):
        raise SourceLayoutError(
            f"labels file {name} line {line}: path {raw.strip()!r} must be relative to the source folder, "
            "e.g. 'cats/001.png'"
        )
    return path


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True
