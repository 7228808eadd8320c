"""URI parsing and the path-safety rules every reference must pass before any data is read."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from airflow_bigdata_ai.shards.errors import InvalidReference, UnsafePath

SUPPORTED_SCHEMES = ("file", "s3")
_SEGMENT = re.compile(r"^[A-Za-z0-9._=+\-@,]+$")
_OBJECT_SUFFIX = re.compile(r"[^.]\.[A-Za-z][A-Za-z0-9]{0,7}$")  # model-1a2b.pt, labels.csv; not run ids' .123+00
MANIFESTS_SEGMENT = "_manifests"
"""The folder of a shard set's manifests (``dataset.MANIFESTS``): a manifest's dataset is its parent's parent."""


@dataclass(frozen=True)
class StoreURI:
    """A parsed ``file:///abs/path`` or ``s3://bucket/key`` URI."""

    scheme: str
    bucket: str  # empty for file://
    path: str  # absolute path for file://, key (no leading slash) for s3://

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}".rstrip("/")
        return f"file://{self.path}"

    def join(self, relative: str) -> StoreURI:
        """Append a *validated* relative path."""
        rel = safe_relative_path(relative)
        joined = posixpath.join(self.path, rel) if self.path else rel
        return StoreURI(self.scheme, self.bucket, joined)

    def parent(self) -> StoreURI:
        return StoreURI(self.scheme, self.bucket, posixpath.dirname(self.path.rstrip("/")))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))


def parse_uri(uri: str) -> StoreURI:
    """Parse a store URI; plain absolute paths count as ``file://``. Unknown schemes are refused."""
    if not isinstance(uri, str) or not uri:
        raise InvalidReference(f"store URI must be a non-empty string, got {uri!r}")
    if "\\" in uri:
        raise UnsafePath(f"backslash in URI {uri!r}")
    if uri.startswith("/"):
        uri = "file://" + uri
    parsed = urlparse(uri)
    if parsed.scheme not in SUPPORTED_SCHEMES:
        raise InvalidReference(
            f"unknown URI scheme {parsed.scheme!r} in {uri!r}; supported: {', '.join(SUPPORTED_SCHEMES)}"
        )
    if parsed.query or parsed.fragment:
        raise InvalidReference(f"query strings and fragments are not allowed in store URIs: {uri!r}")
    if "%" in parsed.path or "%" in parsed.netloc:
        raise UnsafePath(f"percent-encoded characters are not allowed in store URIs: {uri!r}")
    raw_parts = parsed.path.split("/")
    if any(part in ("..", ".") for part in raw_parts):
        raise UnsafePath(f"dot segments are not allowed in store URIs: {uri!r}")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidReference(f"file:// URIs must not name a host: {uri!r}")
        path = posixpath.normpath(parsed.path) if parsed.path else "/"
        if not path.startswith("/"):
            raise InvalidReference(f"file:// URIs must be absolute: {uri!r}")
        return StoreURI("file", "", path)
    if not parsed.netloc:
        raise InvalidReference(f"s3:// URI without a bucket: {uri!r}")
    return StoreURI("s3", parsed.netloc, parsed.path.strip("/"))


def is_within(uri: StoreURI, root: StoreURI) -> bool:
    """True when ``uri`` is ``root`` itself or lies below it (same scheme, same bucket, path prefix)."""
    if (uri.scheme, uri.bucket) != (root.scheme, root.bucket):
        return False
    base = root.path.rstrip("/")
    return not base or uri.path == base or uri.path.startswith(base + "/")


def own_root(uri: StoreURI) -> StoreURI:
    """The narrowest prefix a reference needs to be read whole: what a store opened for it is confined to.

    A shard set's manifest (``<dataset>/_manifests/<id>.json``) needs its dataset directory (the pointer and
    the attempts live there); another object (a name with a suffix: weights ``model-<sha>.pt``, a labels
    ``.csv``) needs its own directory (the IR cache sits beside weights); a folder or prefix is its own root.
    Never wider than that, so a reference cannot open up the rest of a bucket.
    """
    if uri.parent().name == MANIFESTS_SEGMENT:
        return uri.parent().parent()  # ShardSet.dataset_uri
    if _OBJECT_SUFFIX.search(uri.name):
        return uri.parent()
    return uri


def safe_relative_path(relative: str) -> str:
    """Return ``relative`` if it stays inside its root, else raise :class:`UnsafePath`.

    Refused: empty, absolute, ``..``/``.`` segments, backslashes, percent-encoding, odd characters.
    """
    if not isinstance(relative, str) or not relative:
        raise UnsafePath(f"relative path must be a non-empty string, got {relative!r}")
    if "\\" in relative:
        raise UnsafePath(f"backslash in relative path {relative!r}")
    if "%" in relative and unquote(relative) != relative:
        raise UnsafePath(f"percent-encoded relative path {relative!r}")
    if relative.startswith("/") or re.match(r"^[A-Za-z]:", relative):
        raise UnsafePath(f"absolute path where a relative one is required: {relative!r}")
    parts = relative.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"path segment {part!r} not allowed in {relative!r}")
        if not _SEGMENT.match(part):
            raise UnsafePath(f"path segment {part!r} has characters outside [A-Za-z0-9._=+-@,] in {relative!r}")
    return relative


def safe_segment(value: str) -> str:
    """Turn an Airflow id or date into one safe path segment (deterministic, collision-resistant enough)."""
    cleaned = re.sub(r"[^A-Za-z0-9._=+\-@,]", "_", value)
    cleaned = cleaned.strip(".") or "_"
    return cleaned
