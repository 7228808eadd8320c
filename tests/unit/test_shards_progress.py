"""The progress channel every stage uses: workers post small JSON objects in the store, the driver tails them."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from airflow_bigdata_ai.shards import ShardWriter, open_store
from airflow_bigdata_ai.shards.job import ShardJob
from airflow_bigdata_ai.shards.progress import ProgressWatcher, ThrottledPoster, post, read_posts


def test_the_watcher_hands_each_post_over_once_in_the_order_they_were_made(tmp_path: Any) -> None:
    store = open_store(str(tmp_path))
    prefix = f"{tmp_path}/progress"
    seen: list[int] = []
    with ProgressWatcher(store, prefix, lambda body: seen.append(body["n"]), interval_s=0.01) as watcher:
        for n in range(20):
            post(store, prefix, "step", n=n)
        time.sleep(0.1)
        watcher.poll()
    assert seen == list(range(20))


def test_a_consuming_watcher_deletes_what_it_handled_so_each_poll_lists_only_new_posts(tmp_path: Any) -> None:
    store = open_store(str(tmp_path))
    prefix = f"{tmp_path}/progress"
    listed: list[int] = []
    real_list = store.list
    store.list = lambda uri: listed.append(len(real_list(uri))) or real_list(uri)  # type: ignore[method-assign]
    seen: list[int] = []
    watcher = ProgressWatcher(store, prefix, lambda body: seen.append(body["n"]), consume=True)
    for batch in range(5):
        for n in range(10):
            post(store, prefix, "step", n=batch * 10 + n)
        watcher.poll()
    assert seen == list(range(50))
    assert listed == [10] * 5, listed  # without consume: 10, 20, 30, 40, 50
    assert real_list(store.resolve(prefix)) == []


def test_a_post_still_being_written_is_skipped_until_it_is_renamed(tmp_path: Any) -> None:
    store = open_store(str(tmp_path))
    prefix = store.resolve(f"{tmp_path}/progress")
    os.makedirs(prefix.path)
    open(os.path.join(prefix.path, ".tmp-0003"), "wb").close()  # the writer created its temp file, no bytes yet
    post(store, prefix, "step", n=1)
    assert [body["n"] for _uri, body in read_posts(store, prefix)] == [1]


def test_a_failing_poll_does_not_stop_the_watcher(tmp_path: Any) -> None:
    store = open_store(str(tmp_path))
    prefix = f"{tmp_path}/progress"
    calls = {"n": 0}
    real_list = store.list

    def flaky_list(uri: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("listing failed")
        return real_list(uri)

    store.list = flaky_list  # type: ignore[method-assign]
    seen: list[Any] = []
    post(store, prefix, "step", n=1)
    with ProgressWatcher(store, prefix, seen.append, interval_s=0.01):
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [body["n"] for body in seen] == [1] and calls["n"] >= 3


def test_a_throttled_poster_posts_at_most_once_per_interval_and_always_when_final(tmp_path: Any) -> None:
    store = open_store(str(tmp_path))
    prefix = f"{tmp_path}/progress"
    poster = ThrottledPoster(store, prefix, "inputs", interval_s=3600)
    for n in range(100):
        poster(inputs=n)
    poster(final=True, inputs=100)
    assert [body["inputs"] for _uri, body in read_posts(store, prefix)] == [100]


@pytest.mark.parametrize("stage", ["preprocess", "infer"])
def test_both_stages_shard_jobs_post_inside_their_attempt_and_remove_it(stage: str, tmp_path: Any) -> None:
    from airflow_bigdata_ai.infer.jobs import InferenceJob
    from airflow_bigdata_ai.preprocess.process import PreprocessJob

    job_class = {"preprocess": PreprocessJob, "infer": InferenceJob}[stage]
    assert issubclass(job_class, ShardJob)
    assert job_class.summary_schema.names[0] in job_class.summary_ddl
    writer = ShardWriter(open_store(str(tmp_path)), str(tmp_path / "out"))
    job = object.__new__(job_class)  # the fields other than the writer do not matter here
    object.__setattr__(job, "writer", writer)
    job.post_progress("shard", shard=0, rows=5)
    posts = writer.store.list(job.progress_prefix)
    assert len(posts) == 1 and f"/attempts/{writer.attempt_id}/progress/" in posts[0].path
    assert job.watch_progress(lambda body: None, 1.0).consume  # the stage's driver is the posts' only reader
    job.remove_progress()
    assert writer.store.list(job.progress_prefix) == []
