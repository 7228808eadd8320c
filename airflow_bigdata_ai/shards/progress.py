"""Progress from workers to their driver through the shard store: the one mechanism of every stage.

Workers (the Spark tasks of preprocessing and inference, Ray Data actors, rank 0 of a Ray Train run) post small
JSON objects under a prefix; the driver (a task on any host, a cluster job, a notebook) tails them with a
:class:`ProgressWatcher`. The store is the channel because it is the one thing the workers and the driver all
reach, and Spark returns a task's rows only when the task ends. Names sort by time, so posts are read in the
order they were made; a local store writes ``.tmp-*`` then renames, so a reader skips objects being written.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.shards.paths import StoreURI
from airflow_bigdata_ai.shards.store import is_temporary

if TYPE_CHECKING:
    from airflow_bigdata_ai.shards.store import ShardStore

log = logging.getLogger(__name__)

Post = dict[str, Any]
"""One post: ``{"type": kind, "time": epoch seconds, **payload}``."""


def post(store: ShardStore, prefix: str | StoreURI, kind: str, **payload: Any) -> None:
    """One post from a worker: a small JSON object whose name sorts by time."""
    body = json.dumps({"type": kind, "time": time.time(), **payload}).encode()
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.json"
    store.write_bytes(store.resolve(prefix).join(name), body)


def read_posts(
    store: ShardStore, prefix: str | StoreURI, skip: set[str] | frozenset[str] = frozenset()
) -> Iterator[tuple[StoreURI, Post]]:
    """The posts made so far, oldest first; objects named in ``skip`` (already read) are not read again."""
    for uri in store.list(store.resolve(prefix)):
        if uri.name not in skip and not is_temporary(uri):
            yield uri, json.loads(store.read_bytes(uri))


class ThrottledPoster:
    """A worker's poster that posts at most every ``interval_s`` (each post carries the whole state, so a
    skipped one loses nothing); ``final=True`` always posts."""

    def __init__(self, store: ShardStore, prefix: str | StoreURI, kind: str, interval_s: float) -> None:
        self.store, self.prefix, self.kind, self.interval_s = store, prefix, kind, interval_s
        self.last = time.monotonic()

    def __call__(self, final: bool = False, **payload: Any) -> None:
        now = time.monotonic()
        if final or now - self.last >= self.interval_s:
            post(self.store, self.prefix, self.kind, **payload)
            self.last = now


class ProgressWatcher:
    """Tails the posts under ``prefix`` in a thread and hands each new one to ``handle`` once, oldest first.

    Leaving the ``with`` block stops the thread and polls once more, so the last posts are never missed. A
    failed poll (a flaky listing) is retried at the next interval: progress must never fail the job. With
    ``consume``, the watcher is the posts' only reader and deletes them once handled, so every poll lists only
    what came since the last one (a long job posts thousands; listing them all each second grew without bound).
    """

    def __init__(
        self,
        store: ShardStore,
        prefix: str | StoreURI,
        handle: Callable[[Post], None],
        interval_s: float = 1.0,
        name: str = "abai-progress",
        consume: bool = False,
    ) -> None:
        self.store, self.prefix, self.handle, self.interval_s = store, store.resolve(prefix), handle, interval_s
        self.consume = consume
        self.seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self.poll()
        except Exception:  # the job's own outcome matters more than its last progress line
            log.debug("final progress poll failed", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:
                log.debug("progress poll failed", exc_info=True)

    def poll(self) -> None:
        with self._lock:  # the thread's last poll and the final one must not hand a post over twice
            handled = []
            for uri, body in read_posts(self.store, self.prefix, skip=self.seen):
                self.seen.add(uri.name)
                self.handle(body)
                handled.append(uri)
            if self.consume and handled:
                self.store.delete(handled)  # a failed delete only leaves them for the next listing to skip
