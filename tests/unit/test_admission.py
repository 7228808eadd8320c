"""The shared cluster's admission queue: all of a job's CPUs or a place in line, first come first served."""

from __future__ import annotations

import pytest

from airflow_bigdata_ai.cluster.admission import AdmissionQueue, _describe_wait
from airflow_bigdata_ai.train.config import TrainConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_three_trainings_on_four_cpus_run_one_at_a_time_in_arrival_order():
    queue = AdmissionQueue(4, lease_s=60, clock=Clock())
    need = TrainConfig().cpus_needed()  # 2 workers x 1 CPU + 1 for Ray Data
    assert need == 3 and TrainConfig().describe_need() == "training (2 workers x 1 CPUs + data 1)"
    states = [queue.request(f"t{i}", need, f"dag.train run{i}")["state"] for i in range(3)]
    assert states == ["granted", "waiting", "waiting"]
    assert queue.poll("t2")["ahead"] == 1 and queue.poll("t1")["ahead"] == 0
    assert queue.poll("t1")["holders"] == ["dag.train run0"]
    queue.release("t0")
    assert queue.poll("t1")["state"] == "granted" and queue.poll("t2")["state"] == "waiting"
    queue.release("t1")
    assert queue.poll("t2")["state"] == "granted"


def test_a_small_job_never_overtakes_a_waiting_large_one():
    queue = AdmissionQueue(4, clock=Clock())
    assert queue.request("infer", 2, "infer")["state"] == "granted"
    assert queue.request("train", 3, "train")["state"] == "waiting"  # 2 free, needs 3
    assert queue.request("small", 1, "small")["state"] == "waiting"  # would fit, but the training came first
    queue.release("infer")
    assert queue.poll("train")["state"] == "granted" and queue.poll("small")["state"] == "granted"


def test_a_job_larger_than_the_cluster_is_refused_at_once_with_the_figures():
    queue = AdmissionQueue(4, clock=Clock())
    refused = queue.request("big", 5, "big")
    assert refused == {"state": "refused", "capacity": 4.0, "cpus": 5}
    assert queue.snapshot()["waiting"] == []


def test_a_dead_holder_loses_its_cpus_when_its_lease_runs_out():
    clock = Clock()
    queue = AdmissionQueue(4, lease_s=60, clock=clock)
    queue.request("dead", 3, "killed task")
    queue.request("live", 3, "next task")
    for _ in range(4):  # the live waiter keeps renewing; the SIGKILLed holder does not
        clock.now += 20
        status = queue.poll("live")
    assert status["state"] == "granted"
    assert queue.poll("dead") == {"state": "unknown"}


def test_a_holder_too_slow_to_renew_keeps_its_cpus_while_its_driver_lives():
    """8 jobs on 2 cores: renewals timed out, the queue gave a live training's CPUs to the next one, and the
    doubled load stalled everything. A stale lease is dropped only when the holder's Ray driver is gone."""
    clock, live = Clock(), {"driver-a", "driver-b"}
    queue = AdmissionQueue(4, lease_s=60, clock=clock, live_drivers=lambda: set(live))
    queue.request("slow", 3, "dag.train run1", driver="driver-a")
    queue.request("next", 3, "dag.train run2", driver="driver-b")
    for _ in range(10):  # 200 s without a single renewal from the holder
        clock.now += 20
        assert queue.poll("next")["state"] == "waiting"
    assert queue.poll("slow")["state"] == "granted"
    live.discard("driver-a")  # now its process is gone
    clock.now += 61
    assert queue.poll("next")["state"] == "granted"
    assert queue.poll("slow") == {"state": "unknown"}


def test_when_liveness_cannot_be_told_the_lease_decides():
    def broken() -> set[str]:
        raise RuntimeError("GCS unavailable")

    clock = Clock()
    queue = AdmissionQueue(4, lease_s=60, clock=clock, live_drivers=broken)
    queue.request("holder", 3, "a", driver="driver-a")
    queue.request("waiter", 3, "b", driver="driver-b")
    for _ in range(4):
        clock.now += 20
        status = queue.poll("waiter")
    assert status["state"] == "granted"


def test_a_retry_of_the_same_task_takes_over_the_place_of_its_dead_attempt():
    """A SIGKILLed task keeps its lease for up to 60 s; its retry (same dag.task run) must not wait for it."""
    queue = AdmissionQueue(4, lease_s=60, clock=Clock())
    assert queue.request("attempt1#a", 3, "dag.train run1")["state"] == "granted"
    assert queue.request("other#b", 1, "dag.infer run1")["state"] == "granted"
    retry = queue.request("attempt2#c", 3, "dag.train run1")
    assert retry["state"] == "granted" and retry["replaced"] == ["attempt1#a"]
    assert queue.snapshot()["granted"] == ["dag.infer run1", "dag.train run1"]
    assert queue.request("attempt2#c", 3, "dag.train run1")["replaced"] == []  # asking again replaces nothing


def test_the_wait_message_says_what_it_waits_for_how_long_and_how_many_are_ahead():
    queue = AdmissionQueue(4, clock=Clock())
    queue.request("a", 3, "digits_e2e.train 2026-11-01")
    status = queue.request("b", 3, "digits_e2e.train 2026-11-02")
    text = _describe_wait("training (2 workers x 1 CPUs + data 1)", 3, status, 3600)
    assert "needs 3 CPUs" in text and "3 of 4 CPUs are held" in text
    assert "digits_e2e.train 2026-11-01" in text and "0 job(s) ahead" in text and "at most 3600 s" in text


@pytest.mark.parametrize("bad", [{"data_cpus": 0}, {"admission_timeout_s": 0}])
def test_training_admission_settings_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)
