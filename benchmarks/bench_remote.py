"""Benchmark 9: what a task pays when its driver runs on the cluster service instead of in its own process.

Side by side, alternating, on the same shared cluster:

- **in process** (embedded): attach to the cluster and run the no-op driver here, as an operator does when the
  task is the driver; and, for scale, the attach a real stage adds (a Spark Connect query and ``ray.init``);
- **remote**: submit the no-op driver through the Jobs API and wait for its recorded result, as an operator does
  with a ``jobs_url`` connection: submit -> first work (the driver's own clock: it ran), and end to end.

Goal (issue 14): the remote path costs at most 2 s more per task than the in-process one.
"""

from __future__ import annotations

import os
import time
from typing import Any


def report(ctx: Any, row: Any) -> dict[str, Any]:
    from airflow_bigdata_ai.cluster import ClusterConfig, attach
    from airflow_bigdata_ai.cluster.config import StatePaths, read_token
    from airflow_bigdata_ai.jobs import ClusterJobRunner, InProcessRunner, JobsClient, StageRequest, StoreSpec
    from airflow_bigdata_ai.shards import open_store

    config = ClusterConfig(state_dir=ctx.state_dir, mode="remote")
    store_root = os.path.join(ctx.workdir, "remote-store")
    reps = 3 if ctx.fast else 10

    def request(label: str, rep: int) -> StageRequest:
        submission = f"abai-bench-remote-{label}-{rep}-{time.time_ns()}"
        return StageRequest("noop", submission, StoreSpec(store_root), {}, task_key=submission)

    def in_process(rep: int) -> tuple[float, float]:
        start = time.perf_counter()
        handle = attach(config)
        InProcessRunner(handle, lambda *a: None).run(request("local", rep))
        noop = time.perf_counter() - start
        handle.spark().sql("SELECT 1").collect()  # what a real stage adds to its start
        handle.ray()
        engines = time.perf_counter() - start
        handle.close()
        return noop, engines

    endpoint = attach(config).endpoint
    runner = ClusterJobRunner(
        JobsClient(endpoint.jobs_url, read_token(StatePaths(ctx.state_dir).token)), open_store(store_root)
    )

    def remote(rep: int) -> tuple[float, float]:
        start_wall, start = time.time(), time.perf_counter()
        result = runner.run(request("remote", rep), lambda line: None)
        return float(result["started_at"]) - start_wall, time.perf_counter() - start

    in_process(-1), remote(-1)  # imports, first connections and the job agent's warm-up are not per task
    local_noop: list[float] = []
    local_engines: list[float] = []
    first_work: list[float] = []
    remote_e2e: list[float] = []
    for rep in range(reps):  # alternating, so both see the same machine
        noop, engines = in_process(rep)
        local_noop.append(noop)
        local_engines.append(engines)
        started, total = remote(rep)
        first_work.append(started)
        remote_e2e.append(total)
    overhead = [r - n for r, n in zip(remote_e2e, local_noop, strict=True)]
    med = sorted(overhead)[len(overhead) // 2]
    return {
        "rows": [
            row("in process: attach + no-op driver (the task is the driver)", local_noop, "s"),
            row("in process: attach + Spark Connect query + ray.init (a real stage's start)", local_engines, "s"),
            row("remote: submit -> the driver's first work (Jobs API, head node)", first_work, "s"),
            row(
                "remote: no-op driver end to end (submit, run, result read back)",
                remote_e2e,
                "s",
                sorted(remote_e2e)[reps // 2] / sorted(local_engines)[reps // 2],
                note="ratio: against the in-process attach of a real stage",
            ),
            row(
                "remote overhead per task (end to end - in process, pair by pair)",
                overhead,
                "s",
                None,
                "<= 2 s",
                med <= 2.0,
            ),
        ],
        "detail": {"reps": reps, "jobs_url": endpoint.jobs_url},
    }
