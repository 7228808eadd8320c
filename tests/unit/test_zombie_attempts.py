"""Two live attempts of one task writing the same output at once (a zombie and its retry).

Airflow can run a task's retry while the previous attempt is still alive (a zombie whose heartbeat was
lost). Both write the same deterministic output location. The promise, after Spark's
OutputCommitCoordinatorSuite: exactly one publish wins, the loser raises :class:`CommitConflict` and
leaves no staging or temp files, and the published output equals that of a single run. Each writer is a
real thread with its own store object (its own S3 client), on the local store and on S3 through moto's
loopback HTTP server; nothing is mocked. On S3 a winner must also recognise its own claim when botocore
retries the conditional put after a lost answer (a small proxy in front of moto resets that connection).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from airflow_bigdata_ai.shards import (
    CommitConflict,
    S3Options,
    ShardInfo,
    ShardSet,
    ShardStore,
    ShardWriter,
    current_shardset,
    load_manifest,
    open_store,
    output_uri,
    read_table,
)
from airflow_bigdata_ai.shards.refs import Producer
from airflow_bigdata_ai.shards.store import TEMP_PREFIX
from tests.support.s3server import s3_server
from tests.unit.shard_helpers import SCHEMA, shard_table, write_shardset

SHARDS, ROWS = 3, 5
PRODUCER = Producer("dag", "task", "run", "2026-11-24T00:00:00+00:00", 1)
StoreFactory = Callable[[], ShardStore]


@pytest.fixture(scope="module")
def s3_options() -> Iterator[S3Options]:
    """One moto server on 127.0.0.1 for the module; stopped when the module ends."""
    with s3_server("zombie") as options:
        yield options


@pytest.fixture(params=["local", "s3"])
def new_store(request: pytest.FixtureRequest, tmp_path: Any) -> StoreFactory:
    """A factory: each attempt opens its own store, as two task processes would (own boto3 client)."""
    if request.param == "local":
        root = f"file://{tmp_path}/root"
        return lambda: open_store(root)
    options = request.getfixturevalue("s3_options")
    root = f"s3://zombie/{tmp_path.name}"
    return lambda: open_store(root, options)


def _single_run_checksums(store: ShardStore) -> list[str]:
    """Shard checksums of the same input written once, alone, at another output."""
    ref = write_shardset(store, output_uri(str(store.root), "dag", "alone", "2026-11-24"), shards=SHARDS, rows=ROWS)
    return [s.sha256 for s in load_manifest(store, ref).shards]


def _run_threads(*targets: Callable[[], None]) -> None:
    """Run each target in its own thread; re-raise the first unexpected error of any of them."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reported to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a writer thread hung"
    if errors:
        raise errors[0]


def _assert_one_published_like_a_single_run(
    store: ShardStore, dataset: str, winner: ShardSet, loser: ShardWriter, expected: list[str]
) -> None:
    """The winner is current, equals a single run, and the loser left nothing (no staging, temp, manifest)."""
    assert current_shardset(store, dataset) == winner
    manifest = load_manifest(store, winner)
    assert [s.sha256 for s in manifest.shards] == expected, "the result differs from a single run"
    assert read_table(store, winner).num_rows == SHARDS * ROWS  # every shard exists and matches its sha256
    listing = [u.path for u in store.list(dataset)]
    assert not [p for p in listing if loser.attempt_id in p], f"the loser left files: {listing}"
    assert not [p for p in listing if p.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)], f"temp files left: {listing}"
    assert len([p for p in listing if "/_manifests/" in p]) == 1
    staged = {p.split("/attempts/")[1].split("/")[0] for p in listing if "/attempts/" in p}
    assert staged == {manifest.attempt_id}


@pytest.mark.parametrize("round_", range(3))
def test_two_attempts_committing_at_once_publish_exactly_once(new_store: StoreFactory, round_: int) -> None:
    """Both attempts start from the same published state, write every shard, then commit together."""
    store = new_store()
    dataset = output_uri(str(store.root), "dag", "task", "2026-11-24")
    write_shardset(store, dataset, shards=1, rows=2)  # an earlier run's output, which both replace
    expected = _single_run_checksums(store)
    writers = [ShardWriter(new_store(), dataset) for _ in range(2)]  # both alive at once
    ready = threading.Barrier(2, timeout=30)
    outcomes: dict[int, ShardSet | CommitConflict] = {}

    def attempt(index: int) -> None:
        writer = writers[index]
        infos = [writer.write_table(i, shard_table(i, ROWS)) for i in range(SHARDS)]
        ready.wait()  # commit at the same moment
        try:
            outcomes[index] = writer.commit(infos, SCHEMA, PRODUCER)
        except CommitConflict as exc:
            outcomes[index] = exc

    _run_threads(lambda: attempt(0), lambda: attempt(1))
    winners = [i for i, o in outcomes.items() if isinstance(o, ShardSet)]
    assert len(winners) == 1, f"exactly one publish must win, got {outcomes}"
    loser = 1 - winners[0]
    assert "lost the commit" in str(outcomes[loser])
    result = outcomes[winners[0]]
    assert isinstance(result, ShardSet)
    _assert_one_published_like_a_single_run(store, dataset, result, writers[loser], expected)


def test_zombie_publishing_while_its_retry_writes_dooms_the_retry(new_store: StoreFactory) -> None:
    """The zombie commits (and cleans up) while the retry is half-way: the retry must lose, not publish a
    manifest whose first shard the zombie's cleanup deleted."""
    store = new_store()
    dataset = output_uri(str(store.root), "dag", "task", "2026-11-24")
    expected = _single_run_checksums(store)
    zombie, retry = ShardWriter(new_store(), dataset), ShardWriter(new_store(), dataset)
    retry_started, zombie_published = threading.Event(), threading.Event()
    published: list[ShardSet] = []
    retry_error: list[CommitConflict] = []

    def run_zombie() -> None:
        infos = [zombie.write_table(i, shard_table(i, ROWS)) for i in range(SHARDS)]
        assert retry_started.wait(30)
        published.append(zombie.commit(infos, SCHEMA, PRODUCER))
        zombie_published.set()

    def run_retry() -> None:
        infos: list[ShardInfo] = [retry.write_table(0, shard_table(0, ROWS))]
        retry_started.set()
        assert zombie_published.wait(30)
        try:
            infos += [retry.write_table(i, shard_table(i, ROWS)) for i in range(1, SHARDS)]
            retry.commit(infos, SCHEMA, PRODUCER)
        except CommitConflict as exc:
            retry_error.append(exc)

    _run_threads(run_zombie, run_retry)
    assert len(retry_error) == 1, "the retry published over the zombie's output instead of losing"
    assert zombie.attempt_id in str(retry_error[0])
    _assert_one_published_like_a_single_run(store, dataset, published[0], retry, expected)


def test_a_rerun_started_after_the_publish_still_replaces_it(new_store: StoreFactory) -> None:
    """Losing is for concurrent attempts only: an attempt that starts after a publish supersedes it."""
    store = new_store()
    dataset = output_uri(str(store.root), "dag", "task", "2026-11-24")
    expected = _single_run_checksums(store)
    first = write_shardset(new_store(), dataset, shards=SHARDS, rows=ROWS)
    rerun = ShardWriter(new_store(), dataset)
    second = rerun.commit([rerun.write_table(i, shard_table(i, ROWS)) for i in range(SHARDS)], SCHEMA, PRODUCER)
    assert current_shardset(store, dataset) == second != first
    with pytest.raises(FileNotFoundError, match="superseded"):
        load_manifest(store, first)
    assert [s.sha256 for s in load_manifest(store, second).shards] == expected


class _LostAnswerProxy(ThreadingHTTPServer):
    """Forwards requests to the S3 server unchanged, except the first PUT whose path contains ``pattern``:
    that one is applied upstream, then the connection is reset before the answer. The client cannot tell
    a lost answer from a lost request, so it retries a conditional put that already took effect."""

    daemon_threads = True

    def __init__(self, upstream: str, pattern: str) -> None:
        super().__init__(("127.0.0.1", 0), _LostAnswerHandler)
        self.upstream, self.pattern, self.fired = upstream, pattern, threading.Event()


class _LostAnswerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    server: _LostAnswerProxy

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test shows its assertions, not every request."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        upstream = urlsplit(self.server.upstream)
        conn = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(self.command, self.path, body=body if body or self.command == "PUT" else None, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if self.command == "PUT" and self.server.pattern in self.path and not self.server.fired.is_set():
            self.server.fired.set()  # the object now exists upstream; the client never hears so
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self.send_response_only(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("content-length", "connection", "keep-alive", "transfer-encoding", "date", "server"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the socket was reset on purpose
            super().finish()


@contextlib.contextmanager
def _lost_answer_proxy(options: S3Options, pattern: str) -> Iterator[tuple[S3Options, threading.Event]]:
    """The proxy on 127.0.0.1 in front of ``options``' server; stopped on exit."""
    assert options.endpoint_url
    server = _LostAnswerProxy(options.endpoint_url, pattern)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield replace(options, endpoint_url=f"http://127.0.0.1:{server.server_address[1]}"), server.fired
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_claim_retried_after_its_answer_was_lost_still_wins(s3_options: S3Options, tmp_path: Any) -> None:
    """botocore retries a PUT whose connection was reset; the retry of the winning claim finds the record
    its first try created (412). That is this attempt's own publish, not a loss to another attempt."""
    expected = _single_run_checksums(open_store(f"s3://zombie/{tmp_path.name}", s3_options))
    with _lost_answer_proxy(s3_options, "/_commits/") as (options, fired):
        store = open_store(f"s3://zombie/{tmp_path.name}", options)
        dataset = output_uri(str(store.root), "dag", "task", "2026-11-24")
        writer = ShardWriter(store, dataset)
        ref = writer.commit([writer.write_table(i, shard_table(i, ROWS)) for i in range(SHARDS)], SCHEMA, PRODUCER)
        assert fired.is_set(), "the proxy never lost a claim's answer: the test tested nothing"
        assert current_shardset(store, dataset) == ref
        assert [s.sha256 for s in load_manifest(store, ref).shards] == expected
        assert read_table(store, ref).num_rows == SHARDS * ROWS
