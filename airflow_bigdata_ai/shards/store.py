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
import random
import tempfile
import time
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
    """How to reach S3 (or an S3-compatible server). Empty credential fields fall back to boto3's own chain.

    Retries and timeouts are settings because S3 throttles (``503 SlowDown``) and drops connections as a
    matter of course, and because botocore's defaults (legacy mode, a 60 s read timeout) let one stalled
    connection hold a task for minutes: ``max_attempts`` is the total number of tries of one request
    (botocore's ``standard`` mode retries throttling, 5xx, connection errors and timeouts with jittered
    backoff; :meth:`S3Store.read_bytes` also retries a body cut off mid-download, which botocore does not);
    ``connect_timeout_s`` / ``read_timeout_s`` bound each try. Worst case for one object:
    ``max_attempts * (connect_timeout_s + read_timeout_s)`` plus backoff, then :class:`S3Unavailable`.
    """

    endpoint_url: str | None = None
    region_name: str | None = None
    aws_access_key_id: str | None = field(default=None, repr=False)  # an identifier, but half of the pair
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    max_attempts: int = 5
    retry_mode: str = "standard"
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.retry_mode not in ("standard", "adaptive", "legacy"):
            raise ValueError(f"retry_mode must be standard, adaptive or legacy, got {self.retry_mode!r}")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("connect_timeout_s and read_timeout_s must be > 0")

    def client_kwargs(self) -> dict[str, Any]:
        """Endpoint and credentials for ``boto3.client("s3", ...)`` (retries and timeouts: :meth:`client_config`)."""
        names = ("endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token")
        return {name: getattr(self, name) for name in names if getattr(self, name)}

    def client_config(self) -> Any:
        """The botocore ``Config`` with this store's retry mode, attempts and timeouts."""
        from botocore.config import Config

        return Config(
            retries={"mode": self.retry_mode, "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
        )


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
        """A temporary file next to ``path``, flushed and fsynced when the block ends; removed if it fails.

        A concurrent cleanup prunes directories it empties, so one may vanish while ``makedirs`` creates its
        subdirectory or before ``mkstemp``: that is retried (a temp file inside keeps the directory from
        being pruned afterwards).
        """
        for tries_left in range(2, -1, -1):
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=os.path.dirname(path))
                break
            except FileNotFoundError:
                if not tries_left:
                    raise
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


class S3Unavailable(ConnectionError):
    """S3 kept failing with a transient error (throttling, 5xx, reset connections, timeouts) after every
    attempt. Infrastructure, never bad data: it fails the task so that Spark and Airflow retry it."""


_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "InternalError",
     "ServiceUnavailable", "500", "502", "503", "504"}
)  # fmt: skip


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` is S3 being unavailable (worth retrying later), not an answer about the object."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ReadTimeoutError as BotoReadTimeout

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return error.get("Code") in _TRANSIENT_CODES or status.startswith("5")
    streaming = (ResponseStreamingError, IncompleteReadError, ConnectionClosedError, EndpointConnectionError)
    return isinstance(exc, (*streaming, BotoConnectionError, BotoReadTimeout, ConnectionError, TimeoutError))


class S3Store(ShardStore):
    """``s3://bucket/prefix`` store over boto3. Manifests use conditional puts (``If-None-Match: *``).

    Transient errors are retried (see :class:`S3Options`); when they persist, every operation raises
    :class:`S3Unavailable` naming the operation, the object and the endpoint. Answers about the object
    (``NoSuchKey``, ``AccessDenied``) are raised as botocore gives them.
    """

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

            self._client = boto3.client("s3", config=self.options.client_config(), **self.options.client_kwargs())
        return self._client

    @contextlib.contextmanager
    def _unavailable(self, operation: str, target: StoreURI) -> Iterator[None]:
        """Turn a transient error that outlived botocore's retries into :class:`S3Unavailable`."""
        try:
            yield
        except S3Unavailable:
            raise
        except Exception as exc:
            if not _transient(exc):
                raise
            endpoint = self.options.endpoint_url or "the default AWS endpoint"
            raise S3Unavailable(
                f"S3 {operation} {target} at {endpoint} failed after {self.options.max_attempts} attempts "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def read_bytes(self, uri: str | StoreURI) -> bytes:
        """The object's bytes. A body cut off mid-download (reset, timeout, short read) is fetched again:
        botocore retries only until the response headers arrive."""
        target = self.resolve(uri)
        with self._unavailable("GET", target):
            for attempt in range(1, self.options.max_attempts + 1):
                response = self.client.get_object(Bucket=target.bucket, Key=target.path)
                try:
                    return bytes(response["Body"].read())
                except Exception as exc:
                    response["Body"].close()
                    if attempt == self.options.max_attempts or not _transient(exc):
                        raise
                    time.sleep(min(2.0, 0.1 * 2**attempt) * random.random())  # jittered, as botocore's own
        raise AssertionError("unreachable")

    def write_bytes(self, uri: str | StoreURI, data: BytesLike) -> None:
        target = self.resolve(uri)  # a single PUT is atomic on S3; botocore takes bytes, not views
        with self._unavailable("PUT", target):
            self.client.put_object(Bucket=target.bucket, Key=target.path, Body=bytes(data))

    def put_if_absent(self, uri: str | StoreURI, data: BytesLike) -> bool:
        from botocore.exceptions import ClientError

        target = self.resolve(uri)
        try:
            with self._unavailable("conditional PUT", target):
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
            with self._unavailable("HEAD", target):
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
        with self._unavailable("LIST", base):
            for page in paginator.paginate(Bucket=base.bucket, Prefix=key_prefix):
                for item in page.get("Contents", []):
                    found.append(StoreURI("s3", base.bucket, item["Key"]))
        return sorted(found, key=lambda u: u.path)

    def delete(self, uris: builtins.list[StoreURI]) -> None:
        targets = [self.resolve(u) for u in uris]
        for start in range(0, len(targets), 1000):
            batch = targets[start : start + 1000]
            if batch:
                with self._unavailable("DELETE", batch[0]):
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
        kwargs: dict[str, Any] = {
            "check_directory_existence_before_creation": True,
            "connect_timeout": opts.connect_timeout_s,
            "request_timeout": opts.read_timeout_s,
            "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=opts.max_attempts),
        }
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


def confined_store(store_root: str, uri: str | None = None, s3_options: S3Options | None = None) -> ShardStore:
    """A store for ``uri``, confined so that nothing it writes can leave ``store_root``.

    A target at or under the store root gets a store rooted at the store root (outputs, checkpoints and
    caches of every task land below the configured prefix, never at the bucket's top). A target elsewhere (a
    source folder, another deployment's ShardSet or weights in the same bucket) gets a store rooted at that
    reference's own prefix (:func:`~airflow_bigdata_ai.shards.paths.own_root`), never at its bucket: a
    reference cannot open up the rest of a bucket.
    """
    from airflow_bigdata_ai.shards.paths import is_within, own_root

    root = parse_uri(store_root)
    target = parse_uri(uri) if uri else root
    confined = root if is_within(target, root) else own_root(target)
    return open_store(str(confined), s3_options if confined.scheme == "s3" else None)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
