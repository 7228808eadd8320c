"""The teardown's wait for other jobs on the shared cluster (the cluster side is in test_admission.py)."""

from __future__ import annotations

from airflow_bigdata_ai.cluster.usage import wait_until_unused


def test_waits_until_the_other_jobs_are_gone_and_says_for_whom() -> None:
    answers = [["Ray job a.train r1 (running)"], ["Ray job a.train r1 (running)"], []]
    said: list[str] = []
    left = wait_until_unused(lambda: answers.pop(0), timeout_s=30, poll_s=0.01, say=said.append)
    assert left == [] and answers == []
    assert said and "in use by 1 job(s): Ray job a.train r1 (running)" in said[0]


def test_gives_up_after_its_timeout_and_returns_who_is_still_there() -> None:
    left = wait_until_unused(lambda: ["Spark job 3 (abai-b-prep-r-1)"], timeout_s=0.05, poll_s=0.01, say=lambda _: None)
    assert left == ["Spark job 3 (abai-b-prep-r-1)"]


def test_an_idle_cluster_is_not_waited_for() -> None:
    said: list[str] = []
    assert wait_until_unused(lambda: [], timeout_s=30, say=said.append) == [] and said == []
