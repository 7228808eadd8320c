"""Object stores for shards: the local filesystem (embedded default) and S3 (boto3).

One small interface, picklable, so the same object is shipped to Spark executors and Ray workers.
Every URI is checked against the store's root first: a reference can never make a reader touch a
foreign bucket or a path outside the root.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from airflow_bigdata_ai.shards.errors import InvalidReference
from airflow_bigdata_ai.shards.paths import StoreURI, parse_uri

if TYPE_CHECKING:
    import pyarrow.fs

BytesLike = bytes | bytearray | memoryview
"""What the stores write: shard encoders hand over a view of Arrow's buffer instead of copying it to bytes."""


@dataclass(frozen=True)
class S3Options:
    """How to reach S3 (or an S3-compatible server). Empty fields fall back to boto3's own chain."""

    endpoint_url: str | None = None
    region_name: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)

    def client_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v}


TEMP_PREFIX = ".tmp-"


def is_temporary(uri: StoreURI) -> bool:
    """An object still being written (a local store's temp file before its rename): listings include it so
    that cleanup removes a crashed writer's leftovers, but a reader must skip it (its bytes would be read
    again under the final name)."""
    return uri.name.startswith(TEMP_PREFIX)


class ShardStore:
    """Root-confined byte store. Subclasses implement the primitives for one scheme."""

    def __init__(self, root: str) -> None:
        self.root = parse_uri(root)

    # -- confinement -------------------------------------------------------------------------------
    def resolve(self, uri: str | StoreURI) -> StoreURI:
        """Parse ``uri`` and refuse anything outside this store's root."""
        parsed = parse_uri(uri) if isinstance(uri, str) else uri
        if parsed.scheme != self.root.scheme:
            raise InvalidReference(f"URI {parsed} uses scheme {parsed.scheme!r}; this store is {self.root}")
        if parsed.bucket != self.root.bucket:
            raise InvalidReference(f"foreign bucket {parsed.bucket!r} in {parsed}; this store is {self.root}")
        root_path = self.root.path.rstrip("/")
        if root_path and parsed.path != root_path and not parsed.path.startswith(root_path + "/"):
            raise InvalidReference(f"URI {parsed} is outside the store root {self.root}")
        return parsed

    # -- primitives --------------------------------------------------------------------------------
    def read_bytes(self, uri: str | StoreURI) -> bytes:
        raise NotImplementedError

    def write_bytes(self, uri: str | StoreURI, data: BytesLike) -> None:
        """Write or replace an object atomically: readers see the old bytes or the new, never a mix."""
        raise NotImplementedError

    @contextlib.contextmanager
    def open_write(self, uri: str | StoreURI) -> Iterator[BinaryIO]:
        """Write an object through a file handle; published atomically when the block ends without error.

        The default buffers in memory and calls :meth:`write_bytes`; stores that can stream override it.
        """
        buffer = io.BytesIO()
        yield buffer
        self.write_bytes(uri, buffer.getbuffer())

    def put_if_absent(self, uri: str | StoreURI, data: BytesLike) -> bool:
        """Create an object only if it does not exist yet. Returns False when it already existed."""
        raise NotImplementedError

    def exists(self, uri: str | StoreURI) -> bool:
        raise NotImplementedError

    def list(self, prefix: str | StoreURI) -> builtins.list[StoreURI]:
        """Every object below ``prefix`` (recursive), sorted."""
        raise NotImplementedError

    def delete(self, uris: builtins.list[StoreURI]) -> None:
        raise NotImplementedError

    def arrow_filesystem(self) -> pyarrow.fs.FileSystem:
        """A pyarrow filesystem for bulk reads (Ray Data, pyarrow.parquet)."""
        raise NotImplementedError

    def arrow_path(self, uri: str | StoreURI) -> str:
        """The path of ``uri`` as :meth:`arrow_filesystem` expects it."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str | StoreURI) -> None:
        self.delete(self.list(prefix))


class LocalStore(ShardStore):
    """``file://`` store. Atomic replace is ``os.replace``; create-if-absent is ``os.link``."""

    def read_bytes(self, uri: str | StoreURI) -> bytes:
        path = self.resolve(uri).path
        with open(path, "rb") as handle:
            return handle.read()

    @contextlib.contextmanager
    def _temp_beside(self, path: str) -> Iterator[tuple[BinaryIO, str]]:
        """A temporary file next to ``path``, flushed and fsynced when the block ends; removed if it fails."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle, tmp
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def write_bytes(self, uri: str | StoreURI, data: BytesLike) -> None:
        with self.open_write(uri) as handle:
            handle.write(data)

    @contextlib.contextmanager
    def open_write(self, uri: str | StoreURI) -> Iterator[BinaryIO]:
        """Streams into a temporary file beside the target (no copy of the object in memory), then renames."""
        path = self.resolve(uri).path
        with self._temp_beside(path) as (handle, tmp):
            yield handle
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))

    def put_if_absent(self, uri: str | StoreURI, data: BytesLike) -> bool:
        path = self.resolve(uri).path
        with self._temp_beside(path) as (handle, tmp):
            handle.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync_dir(os.path.dirname(path))
        return True

    def exists(self, uri: str | StoreURI) -> bool:
        return os.path.exists(self.resolve(uri).path)

    def list(self, prefix: str | StoreURI) -> builtins.list[StoreURI]:
        base = self.resolve(prefix)
        found: builtins.list[StoreURI] = []
        for dirpath, _dirs, files in os.walk(base.path):
            for name in files:
                found.append(StoreURI("file", "", os.path.join(dirpath, name)))
        return sorted(found, key=lambda u: u.path)

    def delete(self, uris: builtins.list[StoreURI]) -> None:
        dirs: set[str] = set()
        for uri in uris:
            path = self.resolve(uri).path
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            dirs.add(os.path.dirname(path))
        for directory in sorted(dirs, key=len, reverse=True):  # prune empty directories, deepest first
            while directory.startswith(self.root.path) and directory != self.root.path:
                try:
                    os.rmdir(directory)
                except OSError:
                    break
                directory = os.path.dirname(directory)

    def arrow_filesystem(self) -> pyarrow.fs.FileSystem:
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem()

    def arrow_path(self, uri: str | StoreURI) -> str:
        return self.resolve(uri).path


class S3Store(ShardStore):
    """``s3://bucket/prefix`` store over boto3. Manifests use conditional puts (``If-None-Match: *``)."""

    def __init__(self, root: str, options: S3Options | None = None) -> None:
        super().__init__(root)
        self.options = options or S3Options()
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # boto3 clients do not pickle; each process makes its own
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", **self.options.client_kwargs())
        return self._client

    def read_bytes(self, uri: str | StoreURI) -> bytes:
        target = self.resolve(uri)
        response = self.client.get_object(Bucket=target.bucket, Key=target.path)
        return bytes(response["Body"].read())

    def write_bytes(self, uri: str | StoreURI, data: BytesLike) -> None:
        target = self.resolve(uri)  # a single PUT is atomic on S3; botocore takes bytes, not views
        self.client.put_object(Bucket=target.bucket, Key=target.path, Body=bytes(data))

    def put_if_absent(self, uri: str | StoreURI, data: BytesLike) -> bool:
        from botocore.exceptions import ClientError

        target = self.resolve(uri)
        try:
            self.client.put_object(Bucket=target.bucket, Key=target.path, Body=bytes(data), IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def exists(self, uri: str | StoreURI) -> bool:
        from botocore.exceptions import ClientError

        target = self.resolve(uri)
        try:
            self.client.head_object(Bucket=target.bucket, Key=target.path)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str | StoreURI) -> builtins.list[StoreURI]:
        base = self.resolve(prefix)
        key_prefix = base.path.rstrip("/") + "/" if base.path else ""
        found: builtins.list[StoreURI] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=base.bucket, Prefix=key_prefix):
            for item in page.get("Contents", []):
                found.append(StoreURI("s3", base.bucket, item["Key"]))
        return sorted(found, key=lambda u: u.path)

    def delete(self, uris: builtins.list[StoreURI]) -> None:
        targets = [self.resolve(u) for u in uris]
        for start in range(0, len(targets), 1000):
            batch = targets[start : start + 1000]
            if batch:
                self.client.delete_objects(
                    Bucket=batch[0].bucket, Delete={"Objects": [{"Key": t.path} for t in batch], "Quiet": True}
                )

    def arrow_filesystem(self) -> pyarrow.fs.FileSystem:
        import pyarrow.fs

        opts = self.options
        # Ray Train calls create_dir(recursive=True) on its storage path. Without this check Arrow puts an
        # empty "directory" object at EVERY ancestor, up to the bucket's top (``team/``, ``team/prefix/``...):
        # objects outside the store root. With it, Arrow stops at the first ancestor that exists (the
        # training writes its run record with boto3 first, so that is a folder below the root).
        kwargs: dict[str, Any] = {"check_directory_existence_before_creation": True}
        if opts.endpoint_url:
            scheme, _, host = opts.endpoint_url.partition("://")
            kwargs["endpoint_override"] = host
            kwargs["scheme"] = scheme
        if opts.region_name:
            kwargs["region"] = opts.region_name
        if opts.aws_access_key_id:
            kwargs["access_key"] = opts.aws_access_key_id
            kwargs["secret_key"] = opts.aws_secret_access_key
            if opts.aws_session_token:
                kwargs["session_token"] = opts.aws_session_token
        return pyarrow.fs.S3FileSystem(**kwargs)

    def arrow_path(self, uri: str | StoreURI) -> str:
        target = self.resolve(uri)
        return f"{target.bucket}/{target.path}"


def open_store(root: str, s3_options: S3Options | None = None) -> ShardStore:
    """The store for ``root`` (``file:///...``, an absolute path, or ``s3://bucket/prefix``)."""
    parsed = parse_uri(root)
    if parsed.scheme == "s3":
        return S3Store(str(parsed), s3_options)
    return LocalStore(str(parsed))


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
