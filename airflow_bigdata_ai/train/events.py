"""Training progress: rank 0 posts one event per start and per epoch, the driver tails them.

The channel is the one every stage uses (:mod:`airflow_bigdata_ai.shards.progress`); this module only knows
what a training event means: log lines, the progress callback, and restarts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.shards.progress import Post, ProgressWatcher, read_posts
from airflow_bigdata_ai.train.config import EpochProgress
from airflow_bigdata_ai.train.restarts import restart_cause

if TYPE_CHECKING:
    from airflow_bigdata_ai.shards.paths import StoreURI
    from airflow_bigdata_ai.shards.store import ShardStore

log = logging.getLogger(__name__)


def read_events(
    store: ShardStore, events: str | StoreURI, skip: set[str] | frozenset[str] = frozenset()
) -> Iterator[tuple[StoreURI, dict[str, Any]]]:
    """The events written so far, oldest first; objects named in ``skip`` are not read."""
    return read_posts(store, events, skip)


def finished_epochs(store: ShardStore, events: str | StoreURI) -> list[int]:
    """The epochs whose end rank 0 has reported, in order (a restart reports an epoch again)."""
    return [int(event["epoch"]) for _uri, event in read_events(store, events) if event["type"] == "epoch"]


class EventWatcher(ProgressWatcher):
    """Tails the events rank 0 posts and turns them into log lines and progress callbacks."""

    def __init__(
        self,
        store: ShardStore,
        events: StoreURI,
        epochs: int,
        progress: Callable[[EpochProgress], None] | None,
        timeouts: str = "",
    ) -> None:
        super().__init__(store, events, self.handle_event, interval_s=1.0, name="train-progress")
        self.epochs, self.progress, self.timeouts = epochs, progress, timeouts
        self.created_ns = time.time_ns()  # just before fit(): older Ray Train runs of this driver are not ours
        self.starts: list[int] = []
        self.last_epoch: dict[str, Any] = {}

    def __enter__(self) -> EventWatcher:
        super().__enter__()
        return self

    def handle_event(self, event: Post) -> None:
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
