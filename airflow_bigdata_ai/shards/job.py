"""What the per-shard jobs of every stage have in common (preprocessing and inference subclass it).

A :class:`ShardJob` is everything a worker needs to turn input shards into output shards, and nothing more:
picklable (stores drop their clients), sent once to each Spark task or Ray actor, which writes its shards
itself (only small summary rows go back to the driver) and posts its progress to the attempt's progress
prefix, which the driver tails (:mod:`airflow_bigdata_ai.shards.progress`). Engines run jobs tagged, so the
cluster can cancel just one task's work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_bigdata_ai.shards.dataset import ATTEMPTS
from airflow_bigdata_ai.shards.progress import Post, ProgressWatcher, ThrottledPoster, post

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import SparkSession

    from airflow_bigdata_ai.shards.dataset import ShardWriter
    from airflow_bigdata_ai.shards.paths import StoreURI

log = logging.getLogger(__name__)


class ShardJob:
    """Base of a stage's per-shard job; subclasses are dataclasses holding at least ``writer``."""

    writer: ShardWriter
    summary_schema: ClassVar[pa.Schema]
    """The summary rows a worker returns per shard (the Spark engines' ``mapInArrow`` schema)."""
    summary_ddl: ClassVar[str]

    @property
    def progress_prefix(self) -> StoreURI:
        """Where this attempt's workers post progress: inside the attempt, removed when the job ends."""
        return self.writer.dataset.join(f"{ATTEMPTS}/{self.writer.attempt_id}/progress")

    def post_progress(self, kind: str, **payload: Any) -> None:
        post(self.writer.store, self.progress_prefix, kind, **payload)

    def progress_poster(self, kind: str, interval_s: float) -> ThrottledPoster:
        return ThrottledPoster(self.writer.store, self.progress_prefix, kind, interval_s)

    def watch_progress(self, handle: Callable[[Post], None], interval_s: float) -> ProgressWatcher:
        return ProgressWatcher(self.writer.store, self.progress_prefix, handle, interval_s, consume=True)

    def remove_progress(self) -> None:
        """Best effort: the manifest never references progress posts, a leftover one is harmless."""
        try:
            self.writer.store.delete_prefix(self.progress_prefix)
        except Exception:
            log.warning("could not remove the progress posts of %s", self.writer.dataset, exc_info=True)


@contextmanager
def spark_tagged(spark: SparkSession, tag: str | None) -> Iterator[None]:
    """Spark jobs started inside carry ``tag``, so ``interruptTag`` cancels just this task's work."""
    if tag:
        spark.addTag(tag)
    try:
        yield
    finally:
        if tag:
            spark.removeTag(tag)
