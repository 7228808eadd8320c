"""Training progress through the shard store: rank 0 writes one small JSON object per event, the driver tails them.

The store is the channel because it is the one thing the Ray workers and the driver (a task on any host, or a
notebook) both reach; a local store writes ``.tmp-*`` then renames, so a reader skips objects still being written.
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
from airflow_bigdata_ai.train.config import EpochProgress
from airflow_bigdata_ai.train.restarts import restart_cause

if TYPE_CHECKING:
    from airflow_bigdata_ai.shards.store import ShardStore

log = logging.getLogger(__name__)


def write_event(store: ShardStore, events: str | StoreURI, kind: str, **payload: Any) -> None:
    """One event from rank 0: a small JSON object whose name sorts by time."""
    body = json.dumps({"type": kind, "time": time.time(), **payload}).encode()
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.json"
    store.write_bytes(store.resolve(events).join(name), body)


def read_events(
    store: ShardStore, events: str | StoreURI, skip: set[str] | frozenset[str] = frozenset()
) -> Iterator[tuple[StoreURI, dict[str, Any]]]:
    """The events written so far, oldest first (names sort by time); objects named in ``skip`` are not read."""
    for uri in store.list(events):
        if uri.name not in skip and not is_temporary(uri):
            yield uri, json.loads(store.read_bytes(uri))


def finished_epochs(store: ShardStore, events: str | StoreURI) -> list[int]:
    """The epochs whose end rank 0 has reported, in order (a restart reports an epoch again)."""
    return [int(event["epoch"]) for _uri, event in read_events(store, events) if event["type"] == "epoch"]


class EventWatcher:
    """Tails the events rank 0 writes to the store and turns them into log lines and progress callbacks."""

    def __init__(
        self,
        store: ShardStore,
        events: StoreURI,
        epochs: int,
        progress: Callable[[EpochProgress], None] | None,
        timeouts: str = "",
    ) -> None:
        self.store, self.events, self.epochs, self.progress = store, events, epochs, progress
        self.timeouts = timeouts
        self.created_ns = time.time_ns()  # just before fit(): older Ray Train runs of this driver are not ours
        self.seen: set[str] = set()
        self.starts: list[int] = []
        self.last_epoch: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-progress", daemon=True)

    def __enter__(self) -> EventWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.poll()
            except Exception:  # a flaky listing must not kill training; the final poll retries
                log.debug("progress poll failed", exc_info=True)

    def poll(self) -> None:
        for uri, event in read_events(self.store, self.events, skip=self.seen):
            self.seen.add(uri.name)
            if event["type"] == "start":
                self.starts.append(int(event["start_epoch"]))
                if len(self.starts) > 1:
                    log.warning(
                        "training restarted at epoch %d (worker-group restart %d in this attempt; Ray Train "
                        "timeouts: %s); cause: %s",
                        event["start_epoch"],
                        len(self.starts) - 1,
                        self.timeouts,
                        restart_cause(len(self.starts) - 1, self.created_ns),
                    )
                elif event["start_epoch"] > 0:
                    log.info("training resumed at epoch %d from the last checkpoint", event["start_epoch"])
                else:
                    log.info("training started with %d workers", event.get("world_size", 0))
            elif event["type"] == "epoch":
                self.last_epoch = event
                line = EpochProgress(
                    epoch=int(event["epoch"]),
                    epochs=self.epochs,
                    train_loss=float(event["train_loss"]),
                    val_loss=float(event["val_loss"]),
                    val_accuracy=float(event["val_accuracy"]),
                    samples_per_s=float(event["samples_per_s"]),
                    epoch_seconds=float(event["epoch_seconds"]),
                    restarts=self.restarts,
                    time_split=dict(event.get("time_split") or {}),
                )
                log.info("%s", line.line())
                if self.progress is not None:
                    self.progress(line)

    @property
    def restarts(self) -> int:
        return max(len(self.starts) - 1, 0)
