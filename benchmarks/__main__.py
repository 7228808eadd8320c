"""One harness for the benchmarks of issue 7: ``python -m benchmarks [--fast] [--only name,...]``.

Each benchmark runs its variants in the same run on the same data, in a child process of its own (a crash
or a leaked engine in one cannot spoil the next), and reports medians of several repetitions and ratios:

1. cluster     attach to the running shared cluster vs cold-start a fresh Ray-on-Spark cluster (goal >= 30x)
2. handoff     XCom bytes of a ShardSet for 1..10,000 shards; Ray reading the shards vs a JPEG glue pipeline
               (goal >= 6x) and vs arrays already in the process (goal: within 1.2x)
3. preprocess  SparkPreprocessOperator vs one plain Python process, cold and warm (bench_preprocess.py; 1.4x/1.7x)
4. train       RayTrainOperator's path vs a plain torch loop, s/epoch (benchmarks/bench_train.py; goal <= 1.15x)
5. infer       torch eager vs OpenVINO f32/bf16/int8 and the FP32 ceiling (benchmarks/bench_infer.py)
6. e2e         smart_transportation_cv on the shared cluster vs every task starting its own cluster (>= 1.5x)
7. backfill    digits_e2e backfilled through the real scheduler at max_active_runs 1 and 3: dates per hour
               (goal: 3 at once >= serial; no run slower than 3x alone; benchmarks/bench_backfill.py)
8. scale       preprocess, train (1 epoch) and infer at 1x, 10x, 100x the images: throughput, peak RSS of the
               task process, the Spark driver and the largest worker, XCom bytes (benchmarks/bench_scale.py;
               goals: 100x within 15% of 10x, task and driver RSS within 20%, XCom constant)
9. remote      a no-op stage's driver as a job of the cluster service vs in the task's process: submit to first
               work and end to end (benchmarks/bench_remote.py; goal: at most 2 s more per task)

Writes ``benchmarks/results/latest.json``, ``latest.md`` and ``docs/_static/benchmarks.png``. Without
``--state-dir`` it starts a shared cluster of its own (in the work dir) and stops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

BENCHMARKS = ("cluster", "handoff", "preprocess", "train", "infer", "e2e", "backfill", "scale", "remote")
TITLES = {
    "cluster": "1. Cluster: attach vs cold start",
    "handoff": "2. Handoff: shards into Ray",
    "preprocess": "3. Preprocessing",
    "train": "4. Training (s/epoch)",
    "infer": "5. Inference (ResNet-18)",
    "e2e": "6. End to end (smart_transportation_cv)",
    "backfill": "7. Backfill throughput (digits_e2e, real scheduler)",
    "scale": "8. Scale (1x, 10x, 100x images)",
    "remote": "9. Remote drivers: per-task overhead of the cluster service",
}
XCOM_SHARDS = (1, 10, 100, 1000, 10000)
DAG_ID = "smart_transportation_cv"
E2E_VARIANTS_ENV = "AIRFLOW_BIGDATA_AI_BENCH_E2E_VARIANTS"  # set by --e2e-variants, read by the e2e child
DAG_DATE = "2026-11-23"


@dataclass
class Ctx:
    fast: bool
    state_dir: str
    workdir: str


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def row(
    variant: str,
    samples: list[float],
    unit: str,
    ratio: float | None = None,
    goal: str | None = None,
    met: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    return {
        "variant": variant,
        "median": median(samples),
        "unit": unit,
        "samples": [round(s, 4) for s in samples],
        "ratio": ratio,
        "goal": goal,
        "met": met,
        "note": note,
    }


# -- 1. cluster ------------------------------------------------------------------------------------------
def _touch_engines(attached: Any) -> None:
    """What a task does first: a Spark Connect round trip and a Ray connection."""
    import ray

    attached.spark().sql("SELECT 1").collect()
    attached.ray()
    ray.cluster_resources()


def bench_cluster(ctx: Ctx) -> dict[str, Any]:
    from airflow_bigdata_ai.cluster import ClusterConfig, attach, ensure_cluster, stop_cluster

    shared = ClusterConfig(state_dir=ctx.state_dir, mode="remote")
    attach_reps, cold_reps = (5, 1) if ctx.fast else (10, 2)

    def attach_once() -> float:
        start = time.perf_counter()
        handle = attach(shared)
        _touch_engines(handle)
        elapsed = time.perf_counter() - start
        handle.close()
        return elapsed

    attach_once()  # imports and first connections are not what a task pays each time
    attach_s = [attach_once() for _ in range(attach_reps)]
    cold_s, stop_s = [], []
    for rep in range(cold_reps):
        config = ClusterConfig(
            state_dir=os.path.join(ctx.workdir, "cold", str(rep)), idle_timeout_s=600.0, start_timeout_s=900.0
        )
        start = time.perf_counter()
        try:
            ensure_cluster(config)
            handle = attach(config)
            _touch_engines(handle)
            cold_s.append(time.perf_counter() - start)
            handle.close()
        finally:
            stopped = time.perf_counter()
            stop_cluster(config)
            stop_s.append(time.perf_counter() - stopped)
    ratio = median(cold_s) / median(attach_s)
    return {
        "rows": [
            row("attach to the shared cluster (Spark Connect query + ray.init)", attach_s, "s"),
            row(
                "cold-start a Ray-on-Spark cluster for the task",
                cold_s,
                "s",
                ratio,
                ">= 30x",
                ratio >= 30,
                note=f"plus {median(stop_s):.1f} s to stop it (not counted)",
            ),
        ],
        "detail": {"stop_s": stop_s, "attach_reps": attach_reps, "cold_reps": cold_reps},
    }


# -- 2. handoff ------------------------------------------------------------------------------------------
def _handoff_images(count: int, size: int) -> tuple[Any, Any]:
    """Road-scene crops as CHW uint8 pixels, and their labels."""
    import numpy as np
    from PIL import Image

    from airflow_bigdata_ai.examples.datasets.traffic import CLASSES, render

    pixels = np.empty((count, 3, size, size), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    for index in range(count):
        image, label = render(index)
        resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        pixels[index] = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)
        labels[index] = CLASSES.index(label)
    return pixels, labels


def xcom_bytes(root: str) -> dict[int, int]:
    """JSON size of the ShardSet reference XCom carries, for 1..10,000 committed shards."""
    import pyarrow as pa

    from airflow_bigdata_ai.shards import Producer, ShardWriter, open_store
    from airflow_bigdata_ai.shards.dataset import encode_parquet

    store = open_store(root)
    table = pa.table({"record_id": ["r0"], "label": [0]})
    blob = encode_parquet(table)
    sizes = {}
    for count in XCOM_SHARDS:
        writer = ShardWriter(store, f"{root}/xcom/n={count}")
        shards = [writer.write_bytes(writer.shard_path(i), blob, 1) for i in range(count)]
        ref = writer.commit(shards, table.schema, Producer("bench", "handoff", "xcom"))
        sizes[count] = len(json.dumps(ref.to_dict()).encode())
    return sizes


def bench_handoff(ctx: Ctx) -> dict[str, Any]:
    import numpy as np
    import ray
    import ray.data
    from PIL import Image

    from airflow_bigdata_ai.cluster import ClusterConfig, attach
    from airflow_bigdata_ai.examples.sample_data import write_image_shardset
    from airflow_bigdata_ai.preprocess.core import DEFAULT_ROWS_PER_SHARD
    from airflow_bigdata_ai.shards import decode_tensors, model_input, open_store, read_ray_dataset

    count, size, reps = (400, 32, 3) if ctx.fast else (3000, 64, 5)
    # shards as SparkPreprocessOperator cuts them by default (full: 6 of <= 512 rows); fast: 4 small ones
    shards = 4 if ctx.fast else -(-count // DEFAULT_ROWS_PER_SHARD)
    root = os.path.join(ctx.workdir, "handoff")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    sizes = xcom_bytes(root)

    pixels, labels = _handoff_images(count, size)
    images = (pixels.astype(np.float32) / 255.0 - 0.5) / 0.25  # what a normalising float32 transform writes
    store = open_store(root)
    # what SparkPreprocessOperator leaves behind: tensor shards + manifest (the same writer, same format)
    start = time.perf_counter()
    shardset = write_image_shardset(store, f"{root}/shards/ds=none", images, labels, num_shards=shards)
    write_shards_s = time.perf_counter() - start
    pixel_shardset = write_image_shardset(store, f"{root}/pixels/ds=none", pixels, labels, num_shards=shards)
    # what the glue pipeline's Spark stage leaves behind: one JPEG file per image
    jpeg_dir = os.path.join(root, "jpeg")
    start = time.perf_counter()
    for index in range(count):
        folder = os.path.join(jpeg_dir, f"part-{index % shards:05d}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(pixels[index].transpose(1, 2, 0)).save(
            os.path.join(folder, f"{index:07d}.jpg"), "JPEG", quality=95
        )
    write_jpeg_s = time.perf_counter() - start
    shape = (3, size, size)

    def consume(dataset: Any) -> int:
        rows = 0
        for batch in dataset.iter_batches(batch_size=256, batch_format="numpy"):
            rows += len(batch["image"])
        return rows

    def ours() -> int:
        # the RayTrainOperator path: the provider's ShardSet reader, tensors decoded where they are consumed
        rows = 0
        dataset = read_ray_dataset(store, shardset, ["image", "label"])
        for batch in dataset.iter_batches(batch_size=256, batch_format="pyarrow"):
            rows += len(decode_tensors(batch.column("image"), shape, "float32"))
        return rows

    def ours_uint8() -> int:
        # uint8 pixel shards (4x fewer bytes), scaled to float32 by the consumer as training and inference do
        rows = 0
        dataset = read_ray_dataset(store, pixel_shardset, ["image", "label"])
        for batch in dataset.iter_batches(batch_size=256, batch_format="pyarrow"):
            rows += len(model_input(decode_tensors(batch.column("image"), shape, "uint8")))
        return rows

    def glue() -> int:
        def normalise(batch: dict[str, Any]) -> dict[str, Any]:
            pixels = np.asarray(batch["image"], dtype=np.float32).transpose(0, 3, 1, 2)
            return {"image": (pixels / 255.0 - 0.5) / 0.25}

        ds = ray.data.read_images(jpeg_dir, mode="RGB", include_paths=False)
        return consume(ds.map_batches(normalise, batch_format="numpy"))

    def in_memory() -> int:
        return consume(ray.data.from_numpy(images).map_batches(lambda b: {"image": b["data"]}, batch_format="numpy"))

    handle = attach(ClusterConfig(state_dir=ctx.state_dir, mode="remote"))
    handle.ray()
    # Ray worker nodes autoscale down after 3 min idle and take tens of seconds to come back: hold both up
    # (a tiny memory reservation on each) so every variant is measured on the same warm nodes.
    from ray.util.placement_group import placement_group, remove_placement_group

    keep_warm = placement_group([{"memory": 1024}] * 2, strategy="STRICT_SPREAD")
    ray.get(keep_warm.ready(), timeout=900)
    variants: dict[str, Callable[[], int]] = {
        "ours": ours,
        "ours_uint8": ours_uint8,
        "glue": glue,
        "in_memory": in_memory,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for fn in variants.values():  # warm-up: Ray workers scale up from zero on first use
            assert fn() == count
        for _ in range(reps):  # interleaved, so background load hits every variant alike
            for name, fn in variants.items():
                start = time.perf_counter()
                assert fn() == count
                times[name].append(time.perf_counter() - start)
    finally:
        remove_placement_group(keep_warm)
        handle.close()
    ours_s, uint8_s, glue_s, mem_s = (median(times[n]) for n in ("ours", "ours_uint8", "glue", "in_memory"))
    mb = images.nbytes / 1e6
    flat = max(sizes.values()) <= 1.05 * min(sizes.values())  # only the digits of the counts grow
    return {
        "rows": [
            row(
                f"XCom bytes of the ShardSet, 1 shard .. {XCOM_SHARDS[-1]} shards",
                [float(v) for v in sizes.values()],
                "bytes",
                max(sizes.values()) / min(sizes.values()),
                "constant (max/min <= 1.05)",
                flat,
                note=", ".join(f"{k}: {v}" for k, v in sizes.items()),
            ),
            row(
                f"Ray reads our float32 Parquet shards ({count} x {shape}, {mb:.0f} MB)",
                times["ours"],
                "s",
                glue_s / ours_s,
                None,
                None,
                note=f"glue / ours {glue_s / ours_s:.2f}x, ours / upper bound {ours_s / mem_s:.2f}x",
            ),
            row(
                f"Ray reads uint8 pixel shards ({pixels.nbytes / 1e6:.0f} MB), scaled to float32 by the consumer",
                times["ours_uint8"],
                "s",
            ),
            row(
                "glue: Ray reads + decodes JPEG files written by the first engine",
                times["glue"],
                "s",
                glue_s / uint8_s,
                ">= 6x (glue / ours uint8)",
                glue_s / uint8_s >= 6,
            ),
            row(
                "upper bound: float32 arrays already in the process (ray.data.from_numpy)",
                times["in_memory"],
                "s",
                uint8_s / mem_s,
                "<= 1.2x (ours uint8 / upper bound)",
                uint8_s / mem_s <= 1.2,
            ),
        ],
        "detail": {
            "xcom_bytes": {str(k): v for k, v in sizes.items()},
            "images": count,
            "shape": list(shape),
            "shards": shards,
            "write_shards_s": write_shards_s,
            "write_jpeg_s": write_jpeg_s,
            "ours_mb_per_s": mb / ours_s,
        },
    }


# -- 3. preprocessing (bench_preprocess.py) ----------------------------------------------------------------
def bench_preprocess(ctx: Ctx) -> dict[str, Any]:
    from benchmarks import bench_preprocess as bp

    # full: photo-sized images with the operator's defaults (512-row shards at most, one task per core), so the
    # task's fixed cost (job start, listing, commit: ~0.3 s warm) does not decide the ratio; fast: tiny, several shards
    count, size, repeat, rows = ("120", "640x480", "2", "40") if ctx.fast else ("2400", "1024x768", "3", "512")
    cold_wait = "0" if ctx.fast else "75"  # fast: the first round is not forced cold
    data_dir = os.path.join(ctx.workdir, "preprocess")
    res = bp.main(
        [
            "--count",
            count,
            "--size",
            size,
            "--repeat",
            repeat,
            "--rows-per-shard",
            rows,
            "--data-dir",
            data_dir,
            "--cold-wait-s",
            cold_wait,
        ]
    )
    n = res["images"]
    workers = f"Spark Python workers alive before each round: {res['python_workers_before']}"
    first = []
    if "first_ratio" in res:  # the cluster's first Spark job: reported, no goal
        first.append(
            row(
                "SparkPreprocessOperator, first run on the cluster as found (new cluster: JVM not yet compiled)",
                [res["first_images_per_s"]],
                "img/s",
                res["first_ratio"],
                note=f"machine CPU s {res['first_machine_cpu_s']}",
            )
        )
    return {
        "rows": [
            row(f"one plain Python process ({n} JPEGs {res['image_size']})", [res["baseline_images_per_s"]], "img/s"),
            *first,
            row(
                f"SparkPreprocessOperator, cold: the run after {res['cold_wait_s']:g} s idle (fresh Python workers)",
                [res["cold_images_per_s"]],
                "img/s",
                res["cold_ratio"],
                ">= 1.4x",
                res["cold_ratio"] >= 1.4,
                note=f"{workers}; operator wall s per round {res['operator_wall_s']}",
            ),
            row(
                "SparkPreprocessOperator, warm: the next rounds, seconds apart",
                [res["operator_images_per_s"]],
                "img/s",
                res["warm_ratio"],
                ">= 1.7x",
                res["warm_ratio"] >= 1.7,
                note=(
                    f"median of {len(res['ratios']) - 1 or 1} warm rounds; all rounds' ratios {res['ratios']}; "
                    f"machine CPU s per round {res['operator_machine_cpu_s']}, executors' shard CPU s "
                    f"{res['operator_shard_cpu_s']}"
                ),
            ),
        ],
        "detail": res,
    }


# -- 4. training (bench_train.py) --------------------------------------------------------------------------
def bench_train(ctx: Ctx) -> dict[str, Any]:
    from benchmarks import bench_train as bt

    rows, epochs, rounds = ("1500", "3", "1") if ctx.fast else ("8000", "4", "3")
    res = bt.main(["--rows", rows, "--epochs", epochs, "--rounds", rounds, "--state-dir", ctx.state_dir])
    steady = f"median of steady epochs 2..{epochs}"
    pairs = f"median of {res['rounds']} alternating (plain, Ray) pairs, ratios {res['pair_ratios']}"
    one, ddp, bf16 = res["layouts"]["1x2cpu"], res["layouts"]["2x1cpu"], res["layouts"]["1x2cpu-bf16"]
    return {
        "rows": [
            row(f"plain torch loop, one process, 2 threads ({rows} rows)", res["plain_rounds"], "s/epoch"),
            row(
                "RayTrainOperator path, 1 worker x 2 CPUs (Ray Data + TorchTrainer + checkpoints)",
                [r["s_per_epoch"] for r in one["rounds"]],
                "s/epoch",
                one["ratio"],
                "<= 1.15x",
                one["ratio"] <= 1.15,
                note=(
                    f"{steady}; {pairs}; rank 0's steady epoch: {_split(one)}; "
                    f"Ray nodes alive before/after each round: {[r['ray_nodes'] for r in one['rounds']]}"
                ),
            ),
            row(
                "same, its first epoch against the plain loop's steady epoch",
                [one["first_epoch_s"]],
                "s",
                round(one["first_epoch_s"] / res["plain_s_per_epoch"], 3),
                "<= 1.5x",
                one["first_epoch_s"] / res["plain_s_per_epoch"] <= 1.5,
            ),
            row(
                "same, 2 DDP workers x 1 CPU (gloo; the operator's default layout)",
                [ddp["s_per_epoch"]],
                "s/epoch",
                ddp["ratio"],
                "<= 1.15x",
                ddp["ratio"] <= 1.15,
                note=f"{steady}; first epoch {ddp['first_epoch_s']} s; rank 0's steady epoch: {_split(ddp)}",
            ),
            row(
                'same as 1 worker x 2 CPUs with precision="bf16" (autocast, channels-last), speedup over f32',
                [bf16["s_per_epoch"]],
                "s/epoch",
                bf16["speedup_vs_f32"],
                ">= 1.3x at accuracy within 1 point",
                bf16["speedup_vs_f32"] >= 1.3 and abs(bf16["accuracy_points_vs_f32"]) <= 1.0,
                note=(
                    f"{steady}; val accuracy {bf16['val_accuracy']:.2%} vs f32 {one['val_accuracy']:.2%}; "
                    f"native bf16: {bf16['bf16_native']}"
                ),
            ),
        ],
        "detail": res,
    }


def _split(layout: dict[str, Any]) -> str:
    parts = layout.get("time_split") or {}
    return ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.2f} s" for k, v in parts.items()) or "n/a"


# -- 5. inference (bench_infer.py) -------------------------------------------------------------------------
def bench_infer(ctx: Ctx) -> dict[str, Any]:
    from benchmarks import bench_infer as bi

    argv = ["--json", os.path.join(ctx.workdir, "bench_infer.json")] + (["--fast"] if ctx.fast else [])
    res = bi.main(argv)
    resnet = res["results"][0]
    rows = [row("FP32 ceiling (large float32 matmul, best BLAS)", [res["fp32_ceiling_gflops"]], "GFLOP/s")]
    for method, data in resnet["methods"].items():
        goal = bi.GOALS.get(method)
        rows.append(
            row(
                f"{resnet['model']} batch {resnet['batch']}: {method.replace('_', ' ')}",
                [data["images_per_s"]],
                "img/s",
                None if goal is None else data["x_torch"],
                None if goal is None else f">= {goal}x (vs torch eager)",
                None if goal is None else data["x_torch"] >= goal,
                note=f"{data['gflops']:.1f} GFLOP/s = {data['pct_fp32_ceiling']:.0f}% of the FP32 ceiling",
            )
        )
    return {"rows": rows, "detail": res}


# -- 6. end to end -------------------------------------------------------------------------------------------
def _dag_env(ctx: Ctx, home: str, scale: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "SPARK_REMOTE"))}
    bin_dir = os.path.dirname(sys.executable)
    env.update(
        {
            "AIRFLOW_HOME": os.path.join(home, "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(ctx.workdir, "e2e", "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # each run gets a copy of the migrated template database: name it, or airflow.cfg's path wins
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{os.path.join(home, 'airflow', 'airflow.db')}",
            "AIRFLOW_BIGDATA_AI_HOME": os.path.join(ctx.workdir, "e2e", "home"),
            "AIRFLOW_BIGDATA_AI_STATE_DIR": ctx.state_dir,
            "AIRFLOW_BIGDATA_AI_EXAMPLE_SCALE": scale,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
            "NO_PROXY": "localhost,127.0.0.1",
            "no_proxy": "localhost,127.0.0.1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    return env


def _task_durations(db: str) -> dict[str, Any]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT task_id, state, duration FROM task_instance WHERE dag_id = ?", (DAG_ID,)).fetchall()
    return {task: {"state": state, "seconds": round(duration or 0.0, 2)} for task, state, duration in rows}


def bench_e2e(ctx: Ctx) -> dict[str, Any]:
    from airflow_bigdata_ai.cluster import ClusterConfig, ensure_cluster, stop_cluster

    scale = "tiny"
    shared_reps, per_task_reps = (1, 1)  # a per-task run is ~3 cold starts: one of each fits the budget
    if os.environ.get(E2E_VARIANTS_ENV, "shared,per_task") == "shared":
        per_task_reps = 0  # the suite's smoke run: the per-task variant alone costs ~220 s (3 cold starts)
    root = os.path.join(ctx.workdir, "e2e")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "dags"))
    shutil.copy(os.path.join(REPO, "dags_examples", f"{DAG_ID}.py"), os.path.join(root, "dags"))
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    template = os.path.join(root, "template")
    env = _dag_env(ctx, template, scale)
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    os.environ.update({k: env[k] for k in ("AIRFLOW_BIGDATA_AI_HOME", "AIRFLOW_BIGDATA_AI_EXAMPLE_SCALE")})
    from airflow_bigdata_ai.examples.datasets.examples import example_scale, prepare_traffic_source

    prepare_traffic_source(DAG_DATE, example_scale().traffic_images)  # same crops for every run, made once
    ensure_cluster(ClusterConfig(state_dir=ctx.state_dir, mode="remote"))

    runs: list[dict[str, Any]] = []

    def run_dag(variant: str, index: int) -> float:
        home = os.path.join(root, f"{variant}-{index}")
        shutil.copytree(template, home)
        env = _dag_env(ctx, home, scale)
        if variant == "per_task":
            per_task_root = os.path.join(home, "per_task")
            os.makedirs(per_task_root)
            env["AIRFLOW_BIGDATA_AI_PER_TASK_ROOT"] = per_task_root
            env["AIRFLOW_BIGDATA_AI_STATE_DIR"] = os.path.join(per_task_root, "no-shared-cluster")
            env["PYTHONPATH"] = os.path.join(REPO, "benchmarks", "per_task_cluster") + os.pathsep + env["PYTHONPATH"]
        log_path = os.path.join(home, "dags_test.log")
        start = time.perf_counter()
        try:
            with open(log_path, "w") as log:
                code = subprocess.run(
                    [airflow, "dags", "test", DAG_ID, DAG_DATE, "--conf", json.dumps({"keep_cluster": True})],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=1500,
                ).returncode
            elapsed = time.perf_counter() - start
        finally:
            if variant == "per_task":  # a failed task skips its post-execute hook: stop what is left
                clusters = os.path.join(home, "per_task", "clusters")
                for dirpath, _dirs, files in os.walk(clusters):
                    if "service.json" in files or "endpoint.json" in files:
                        stop_cluster(ClusterConfig(state_dir=dirpath))
        tasks = _task_durations(os.path.join(home, "airflow", "airflow.db"))
        entry: dict[str, Any] = {"variant": variant, "seconds": elapsed, "exit_code": code, "tasks": tasks}
        if variant == "per_task":
            with open(os.path.join(home, "per_task", "per_task_clusters.jsonl")) as handle:
                entry["clusters"] = [json.loads(line) for line in handle]
        runs.append(entry)
        failed = [t for t, v in tasks.items() if v["state"] != "success"]
        if code != 0 or failed or not tasks:
            with open(log_path) as handle:
                tail = handle.read()[-3000:]
            raise RuntimeError(f"{variant} run {index} failed (exit {code}, tasks {failed}):\n{tail}")
        print(f"e2e {variant} run {index}: {elapsed:.1f} s {tasks}", flush=True)
        return elapsed

    shared_s: list[float] = []
    per_task_s: list[float] = []
    for index in range(max(shared_reps, per_task_reps)):  # alternate the variants
        if index < shared_reps:
            shared_s.append(run_dag("shared", index))
        if index < per_task_reps:
            per_task_s.append(run_dag("per_task", index))
    shared_row = row(f"`airflow dags test` on the shared cluster (scale {scale})", shared_s, "s")
    if not per_task_s:
        return {"rows": [shared_row], "detail": {"scale": scale, "runs": runs, "per_task": "skipped"}}
    ratio = median(per_task_s) / median(shared_s)
    cold = [c["seconds"] for r in runs for c in r.get("clusters", []) if c["event"] == "cold_start"]
    return {
        "rows": [
            shared_row,
            row(
                "same DAG, every task starts and stops its own cluster",
                per_task_s,
                "s",
                ratio,
                ">= 1.5x",
                ratio >= 1.5,
                note=f"{len(cold)} per-task cold starts, median {median(cold):.1f} s" if cold else "",
            ),
        ],
        "detail": {"scale": scale, "runs": runs},
    }


# -- 7. backfill (bench_backfill.py) -------------------------------------------------------------------------
def bench_backfill(ctx: Ctx) -> dict[str, Any]:
    from benchmarks import bench_backfill as bb

    return bb.bench_backfill(ctx, REPO, row)


# -- 8. scale (bench_scale.py) -------------------------------------------------------------------------------
def bench_scale(ctx: Ctx) -> dict[str, Any]:
    from benchmarks import bench_scale as bs

    return bs.report(ctx, row)


# -- 9. remote drivers (bench_remote.py) ----------------------------------------------------------------------
def bench_remote(ctx: Ctx) -> dict[str, Any]:
    from benchmarks import bench_remote as br

    return br.report(ctx, row)


RUNNERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "cluster": bench_cluster,
    "handoff": bench_handoff,
    "preprocess": bench_preprocess,
    "train": bench_train,
    "infer": bench_infer,
    "e2e": bench_e2e,
    "backfill": bench_backfill,
    "scale": bench_scale,
    "remote": bench_remote,
}


# -- machine, report, plot -------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    from importlib import metadata

    cpu = platform.processor()
    flags: list[str] = []
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                wanted = ("avx512_bf16", "avx512_vnni", "amx")
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(wanted)]
    mem_gib = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 2**20
    versions = {"python": platform.python_version()}
    for dist in ("apache-airflow", "pyspark", "ray", "torch", "openvino", "nncf", "numpy", "pyarrow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "os": platform.platform(),
        "versions": versions,
        "load_avg_1m_start": round(os.getloadavg()[0], 2),
    }


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if unit == "bytes":
        return f"{value:,.0f} B"
    text = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{text} {unit}".strip()


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| benchmark | variant | median | ratio | goal | met? |",
        "|---|---|---|---|---|---|",
    ]
    for name in BENCHMARKS:
        entry = report["benchmarks"].get(name)
        if entry is None:
            continue
        if "error" in entry:
            lines.append(f"| {TITLES[name]} | FAILED: {entry['error'].splitlines()[-1][:120]} | | | | no |")
            continue
        for r in entry["rows"]:
            met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            variant = r["variant"] + (f" ({r['note']})" if r.get("note") else "")
            lines.append(
                f"| {TITLES[name]} | {variant.replace('|', '/')} | {fmt(r['median'], r['unit'])} "
                f"| {ratio} | {r['goal'] or ''} | {met} |"
            )
    m = report["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". Mode: {'fast' if report['fast'] else 'full'}; load average {m['load_avg_1m_start']} at start, "
        f"{report['load_avg_1m_end']} at end; {report['seconds']:.0f} s in all; {report['finished']}.",
    ]
    if report.get("assembled_from"):
        lines[-1] = lines[-1].split(" Mode:")[0] + (
            f" Mode: {'fast' if report['fast'] else 'full'}; each benchmark's variants ran together in one run, "
            f"benchmarks ran in separate (partly concurrent) runs on a shared machine (1-minute load average "
            f"15-100 during the runs); report assembled {report['finished']}."
        )
    return "\n".join(lines) + "\n"


def csv_rows(report: dict[str, Any]) -> list[list[str]]:
    """The same table as :func:`markdown`, for the docs' ``csv-table``."""
    rows = []
    for name in BENCHMARKS:
        entry = report["benchmarks"].get(name)
        if entry is None:
            continue
        if "error" in entry:
            rows.append([TITLES[name], "FAILED: " + entry["error"].splitlines()[0][:120], "", "", "", "no"])
            continue
        for r in entry["rows"]:
            variant = r["variant"] + (f" ({r['note']})" if r.get("note") else "")
            rows.append(
                [
                    TITLES[name],
                    variant,
                    fmt(r["median"], r["unit"]),
                    "" if r["ratio"] is None else f"{r['ratio']:.2f}x",
                    r["goal"] or "",
                    "" if r["met"] is None else ("yes" if r["met"] else "no"),
                ]
            )
    return rows


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, ratios, goals, colors = [], [], [], []
    for name in BENCHMARKS:
        entry = report["benchmarks"].get(name)
        if not entry or "error" in entry:
            continue
        for r in entry["rows"]:
            if r["ratio"] is None or r["unit"] == "bytes":
                continue
            goal = float("".join(c for c in r["goal"].split("x")[0] if c.isdigit() or c == ".")) if r["goal"] else None
            lower_better = (r["goal"] or "").startswith("<=")
            labels.append(f"{name}: {r['variant'][:38]}")
            ratios.append(r["ratio"])
            goals.append(goal)
            colors.append("tab:gray" if r["met"] is None else "tab:green" if r["met"] else "tab:red")
            if lower_better:
                labels[-1] += " (lower is better)"
    fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(19, 5.5), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    ys = list(range(len(labels)))
    ax.barh(ys, ratios, color=colors)
    with_goal = [(g, y) for g, y in zip(goals, ys, strict=True) if g is not None]
    ax.scatter([g for g, _ in with_goal], [y for _, y in with_goal], marker="|", s=400, color="black", label="goal")
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    if ratios:  # a report whose benchmarks all failed has no ratio to put on a log axis
        ax.set_xscale("log")
    ax.set_xlabel("ratio (green: goal met, red: missed, gray: no goal)")
    ax.legend(loc="lower right")
    ax.set_title("Ratios against their goals")
    handoff = report["benchmarks"].get("handoff", {})
    xcom = handoff.get("detail", {}).get("xcom_bytes")
    if xcom:
        xs = [int(k) for k in xcom]
        ax2.plot(xs, list(xcom.values()), marker="o")
        ax2.set_xscale("log")
        ax2.set_ylim(0, max(xcom.values()) * 1.5)
        ax2.set_xlabel("shards in the dataset")
        ax2.set_ylabel("XCom bytes of the ShardSet reference")
        ax2.set_title("XCom carries a reference, not data")
    plot_scale(ax3, report["benchmarks"].get("scale", {}).get("detail", {}).get("points"))
    m = report["machine"]
    mode = "fast" if report["fast"] else "full"
    fig.suptitle(f"airflow-bigdata-ai benchmarks ({mode}) on {m['cpu']}, {m['cores']} cores")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scale(ax: Any, points: list[dict[str, Any]] | None) -> None:
    """Benchmark 8: each stage's throughput against the data size (flat is the goal), log-log."""
    if not points:
        ax.set_axis_off()
        return
    images = [p["images"] for p in points]
    for stage in ("preprocess", "train", "infer"):
        ax.plot(images, [p["images_per_s"][stage] for p in points], marker="o", label=stage)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("images in the run (1x, 10x, 100x)")
    ax.set_ylabel("images per second of wall time")
    ax.legend(loc="lower right")
    ax.set_title("Throughput as the data grows")


# -- orchestration -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def shared_cluster(state_dir: str | None, workdir: str) -> Iterator[tuple[str, float | None]]:
    """The given running cluster (remote), or one of our own for the duration of the run."""
    from airflow_bigdata_ai.cluster import ClusterConfig, ensure_cluster, stop_cluster

    if state_dir:
        ensure_cluster(ClusterConfig(state_dir=state_dir, mode="remote"))
        yield state_dir, None
        return
    own = ClusterConfig(state_dir=os.path.join(workdir, "shared-cluster"), idle_timeout_s=3600.0, start_timeout_s=900.0)
    start = time.perf_counter()
    try:
        ensure_cluster(own)
        yield own.state_dir, time.perf_counter() - start
    finally:
        stop_cluster(own)


def child_env(state_dir: str, workdir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "SPARK_REMOTE"))}
    env.update(
        {
            "AIRFLOW_BIGDATA_AI_STATE_DIR": state_dir,
            "AIRFLOW_BIGDATA_AI_HOME": os.path.join(workdir, "home"),
            "AIRFLOW_HOME": os.path.join(workdir, "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
            "NO_PROXY": "localhost,127.0.0.1",
            "no_proxy": "localhost,127.0.0.1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    return env


def stop_leftover_clusters(ctx: Ctx) -> None:
    """Clusters a benchmark started under the work dir (cold starts, per-task clusters) that are still up."""
    from airflow_bigdata_ai.cluster import ClusterConfig, stop_cluster

    shared = os.path.abspath(ctx.state_dir)
    for dirpath, _dirs, files in os.walk(ctx.workdir):
        if os.path.abspath(dirpath) != shared and ("service.json" in files or "endpoint.json" in files):
            stop_cluster(ClusterConfig(state_dir=dirpath))


def run_child(name: str, ctx: Ctx, timeout_s: float) -> dict[str, Any]:
    out = os.path.join(ctx.workdir, f"{name}.json")
    argv = [sys.executable, "-m", "benchmarks", "--child", name, "--state-dir", ctx.state_dir]
    argv += ["--workdir", ctx.workdir, "--child-out", out] + (["--fast"] if ctx.fast else [])
    log_path = os.path.join(ctx.workdir, f"{name}.log")
    start = time.perf_counter()
    print(f"== {TITLES[name]} ...", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            argv,
            env=child_env(ctx.state_dir, ctx.workdir),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout ends the child and what it started
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = -1
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stop_leftover_clusters(ctx)
    elapsed = time.perf_counter() - start
    if code == 0 and os.path.exists(out):
        with open(out) as handle:
            entry: dict[str, Any] = json.load(handle)
    else:
        with open(log_path, errors="replace") as handle:
            tail = handle.read()[-4000:]
        entry = {"error": f"exit code {code} after {elapsed:.0f} s; log {log_path}:\n{tail}"}
    entry["seconds"] = elapsed
    for r in entry.get("rows", []):
        ratio = f"  ratio {r['ratio']:.2f}x" if r["ratio"] else ""
        print(f"   {r['variant']}: {fmt(r['median'], r['unit'])}{ratio}")
    if "error" in entry:
        print(f"   FAILED: {entry['error'][-1500:]}", flush=True)
    print(f"   ({elapsed:.0f} s)", flush=True)
    return entry


class _Skip(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fast", action="store_true", help="tiny sizes, one or few repetitions (< 3-5 minutes)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--state-dir", help="use this running shared cluster instead of starting one")
    parser.add_argument("--out-dir", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--plot", default=os.path.join(REPO, "docs", "_static", "benchmarks.png"))
    parser.add_argument("--workdir", help="scratch space (default: a fresh temporary directory, removed after)")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other benchmarks' entries of an existing latest.json"
    )
    parser.add_argument(
        "--assemble",
        help="comma-separated work dirs of earlier runs: build the report from their per-benchmark results",
    )
    parser.add_argument(
        "--e2e-variants",
        choices=("shared,per_task", "shared"),
        default="shared,per_task",
        help="'shared' skips the every-task-starts-its-own-cluster run (the test suite's smoke run does)",
    )
    parser.add_argument("--child", choices=BENCHMARKS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one benchmark, in this (child) process; it inherits the parent's E2E_VARIANTS_ENV
        ctx = Ctx(args.fast, args.state_dir, args.workdir)
        entry = RUNNERS[args.child](ctx)
        with open(args.child_out, "w") as handle:
            json.dump(entry, handle, indent=1, default=str)
        return 0

    os.environ[E2E_VARIANTS_ENV] = args.e2e_variants  # the children inherit it (a child has no such flag)
    selected = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {','.join(BENCHMARKS)}")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    workdir = args.workdir or tempfile.mkdtemp(prefix="abai-bench-")
    os.makedirs(workdir, exist_ok=True)
    machine = machine_info()
    started = time.perf_counter()
    report: dict[str, Any] = {"fast": args.fast, "machine": machine, "benchmarks": {}}
    if args.assemble:  # results measured by earlier (possibly interrupted) runs, e.g. one benchmark at a time
        report["assembled_from"] = args.assemble.split(",")
        for name in selected:
            for folder in report["assembled_from"]:
                path = os.path.join(folder, f"{name}.json")
                if os.path.exists(path):
                    with open(path) as handle:
                        report["benchmarks"][name] = json.load(handle)
                    break
    try:
        if args.assemble:
            raise _Skip
        with shared_cluster(args.state_dir, workdir) as (state_dir, start_s):
            report["shared_cluster"] = {"own": args.state_dir is None, "cold_start_s": start_s}
            ctx = Ctx(args.fast, state_dir, workdir)
            for name in selected:
                report["benchmarks"][name] = run_child(name, ctx, 1800)
    except _Skip:
        pass
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["seconds"] = time.perf_counter() - started
    previous = os.path.join(args.out_dir, "latest.json")
    if args.merge and os.path.exists(previous):
        with open(previous) as handle:
            old = json.load(handle)
        if old.get("fast") == args.fast:
            merged = {k: v for k, v in old.get("benchmarks", {}).items() if k not in report["benchmarks"]}
            report["benchmarks"] = {
                n: {**merged, **report["benchmarks"]}[n] for n in BENCHMARKS if n in {**merged, **report["benchmarks"]}
            }
            report["seconds"] += old.get("seconds", 0.0)
    report["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "latest.json"), "w") as handle:
        json.dump(report, handle, indent=1, default=str)
    table = markdown(report)
    with open(os.path.join(args.out_dir, "latest.md"), "w") as handle:
        handle.write(table)
    with open(os.path.join(args.out_dir, "latest.csv"), "w", newline="") as handle:
        csv.writer(handle).writerows(csv_rows(report))
    if args.plot:
        plot(report, args.plot)
    print("\n" + table)
    return 1 if any("error" in e for e in report["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
