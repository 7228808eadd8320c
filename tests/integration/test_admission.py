"""Concurrent jobs on the real shared cluster: admitted whole or queued, never deadlocked (issue 15).

Before admission control, three trainings started together with ``cache_data=False`` (the path of every
ShardSet over 512 MiB) each got their Ray Train workers and left no CPU for the Ray Data reads that feed
them: all three hung. Here they run in three processes at once and must all finish, one after another.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from airflow_bigdata_ai.cluster.admission import AdmissionRefused, AdmissionTimeout, admission_queue, admitted
from airflow_bigdata_ai.examples.sample_data import write_digits_shardset
from airflow_bigdata_ai.shards import ModelRef, open_store
from airflow_bigdata_ai.train import RunKey, TrainConfig, train
from tests.integration.conftest import subprocess_env

pytestmark = pytest.mark.integration

FACTORY = "airflow_bigdata_ai.examples.models.digits:make_digits_cnn"
SETTINGS: dict[str, Any] = {"epochs": 2, "batch_size": 64, "lr": 5e-3, "num_workers": 2, "cache_data": False}

DRIVER = textwrap.dedent(
    """
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from airflow_bigdata_ai.cluster import ClusterConfig, attach
    from airflow_bigdata_ai.shards import ShardSet, open_store
    from airflow_bigdata_ai.train import RunKey, TrainConfig, train

    state_dir, root, shardset, factory, settings, name = sys.argv[1:7]
    attach(ClusterConfig(state_dir=state_dir, mode="remote")).ray()
    ref = train(ShardSet.from_json(shardset), open_store(root), factory, config=TrainConfig(**json.loads(settings)),
                run=RunKey("admission_it", "train", name, "2026-01-01"))
    print("MODELREF " + ref.to_json())
    """
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    root = str(tmp_path_factory.mktemp("admission-store"))
    return root, write_digits_shardset(open_store(root), f"{root}/digits/prep/ds=2026-01-01")


def test_three_uncached_trainings_at_once_all_finish(shared_cluster: Any, digits: tuple[str, Any]) -> None:
    root, shardset = digits
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                DRIVER,
                shared_cluster.config.state_dir,
                root,
                shardset.to_json(),
                FACTORY,
                json.dumps(SETTINGS),
                f"run{i}",
            ],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=900)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.monotonic() - started
    sys.stderr.write(f"\n[admission] three uncached trainings at once finished in {elapsed:.0f} s\n")
    for code, out, err in outputs:
        assert code == 0, err[-4000:]
        ref = ModelRef.from_json(out.split("MODELREF ", 1)[1])
        assert ref.metrics["val_accuracy"] > 0.8, ref.metrics
    logs = "\n".join(err for _code, _out, err in outputs)
    # 3 trainings x 3 CPUs on a 4-CPU cluster: at least two of them waited, and said for what and behind whom
    assert logs.count("waiting for the shared cluster: training (2 workers x 1 CPUs + data 1) needs 3 CPUs") >= 2
    assert "admission_it.train run" in logs and "job(s) ahead" in logs
    assert logs.count("admitted to the shared cluster after") >= 2


def test_a_job_that_can_never_fit_fails_at_once_and_a_wait_times_out(attached: Any, digits: tuple[str, Any]) -> None:
    attached.ray()
    root, shardset = digits
    import ray

    capacity = ray.get(admission_queue().snapshot.remote())["capacity"]
    started = time.monotonic()
    with pytest.raises(AdmissionRefused, match=rf"needs {capacity + 1:g} CPUs but the shared cluster has at most"):
        train(
            shardset,
            open_store(root),
            FACTORY,
            config=TrainConfig(**{**SETTINGS, "num_workers": int(capacity)}),
            run=RunKey("admission_it", "train", "too_big", "2026-01-01"),
        )
    assert time.monotonic() - started < 10
    with admitted(capacity, "admission_it.holder", "a job holding every CPU", 60):
        with pytest.raises(AdmissionTimeout, match=r"needs 3 CPUs; .* held by other jobs \(admission_it.holder\)"):
            train(
                shardset,
                open_store(root),
                FACTORY,
                config=TrainConfig(**{**SETTINGS, "admission_timeout_s": 3}),
                run=RunKey("admission_it", "train", "timeout", "2026-01-01"),
            )
    assert ray.get(admission_queue().snapshot.remote())["in_use"] == 0
