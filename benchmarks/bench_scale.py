"""Benchmark 8, scale: the whole pipeline at 1x, 10x and 100x the data, on the shared cluster.

Each point is one child process playing the task process: it preprocesses a folder of generated road-scene
JPEGs (Spark, the example's transform), trains the traffic CNN for one epoch (Ray Train, 1 worker x 2 CPUs)
and predicts every image (OpenVINO on a Ray actor pool). Meanwhile this process samples the resident memory
of the cluster's processes: the Spark driver (the JVM the cluster service runs) and the largest other
process of the cluster (executors, Python workers, Ray). Reported per point: each stage's throughput (images
per second of wall time, start-up included), the peak RSS of the task process, of the driver and of the
largest worker, and the bytes of the three references XCom would carry.

Goals: throughput at 100x within 15% of 10x for each stage; task-process and driver RSS within 20% from 10x
to 100x; XCom sizes constant.

    python -m benchmarks.bench_scale --state-dir D [--base 200] [--workdir W]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

FACTORS = (1, 10, 100)
SIZE = 32
TRANSFORM: list[dict[str, Any]] = [
    {"op": "convert", "mode": "RGB"},
    {"op": "resize", "size": [SIZE, SIZE]},
    {"op": "to_tensor", "dtype": "float32"},
    {"op": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
]
STAGES = ("preprocess", "train", "infer")


# -- the data: one generated folder, each point a hard-linked prefix of it ---------------------------------
def _render_range(out_dir: str, start: int, stop: int) -> None:
    from airflow_bigdata_ai.examples.datasets.traffic import CLASSES, render

    for label in CLASSES:
        os.makedirs(os.path.join(out_dir, label), exist_ok=True)
    for index in range(start, stop):
        path = os.path.join(out_dir, "{label}", "{label}_{index:06d}.jpg")
        image, label = render(index)
        final = path.format(label=label, index=index)
        if not os.path.exists(final):
            image.save(final + ".tmp", format="JPEG", quality=90)
            os.replace(final + ".tmp", final)


def generate(out_dir: str, count: int, processes: int = 2) -> None:
    """``count`` deterministic crops (image i depends only on i), rendered by ``processes`` processes."""
    step = -(-count // processes)
    with ProcessPoolExecutor(processes) as pool:
        list(
            pool.map(
                _render_range,
                [out_dir] * processes,
                range(0, count, step),
                [min(s + step, count) for s in range(0, count, step)],
            )
        )


def point_source(all_dir: str, point_dir: str, count: int) -> str:
    """The first ``count`` images of ``all_dir`` (by index), hard-linked into ``point_dir``."""
    for label in sorted(os.listdir(all_dir)):
        os.makedirs(os.path.join(point_dir, label), exist_ok=True)
        for name in os.listdir(os.path.join(all_dir, label)):
            if int(name.rsplit("_", 1)[1].split(".")[0]) < count:
                target = os.path.join(point_dir, label, name)
                if not os.path.exists(target):
                    os.link(os.path.join(all_dir, label, name), target)
    return point_dir


# -- one point, in the child ("task") process -------------------------------------------------------------
def run_point(state_dir: str, source: str, root: str, count: int) -> dict[str, Any]:
    from airflow_bigdata_ai.cluster import ClusterConfig, attach
    from airflow_bigdata_ai.examples.datasets.traffic import CLASSES
    from airflow_bigdata_ai.infer import InferOptions, run_inference
    from airflow_bigdata_ai.preprocess import preprocess
    from airflow_bigdata_ai.shards import open_store
    from airflow_bigdata_ai.train import RunKey, TrainConfig, train

    store = open_store(root)
    attached = attach(ClusterConfig(state_dir=state_dir, mode="remote"))
    seconds: dict[str, float] = {}
    try:
        started = time.perf_counter()
        shardset = preprocess(
            {"uri": source, "labels": "folders", "classes": list(CLASSES)},
            f"{root}/features/n={count}",
            spark=attached.spark(),
            transform=TRANSFORM,
            output_store=store,
            progress=None,
        )
        seconds["preprocess"] = time.perf_counter() - started
        attached.ray()
        started = time.perf_counter()
        ref = train(
            shardset,
            store,
            "airflow_bigdata_ai.examples.models.traffic:make_traffic_cnn",
            factory_kwargs={"size": SIZE},
            config=TrainConfig(
                epochs=1, batch_size=64, num_workers=1, resources_per_worker={"CPU": 2.0}, max_failures=0
            ),
            run=RunKey("bench_scale", "train", f"n={count}-{time.time_ns()}"),
        )
        seconds["train"] = time.perf_counter() - started
        started = time.perf_counter()
        result = run_inference(
            ref,
            shardset,
            f"{root}/predictions/n={count}",
            model_store=store,
            input_store=store,
            options=InferOptions(engine="ray", precision="f32"),
        )
        seconds["infer"] = time.perf_counter() - started
    finally:
        attached.close()
    return {
        "images": count,
        "rows": shardset.num_rows,
        "shards": shardset.num_shards,
        "shard_bytes": shardset.total_bytes,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "images_per_s": {k: round(shardset.num_rows / v, 1) for k, v in seconds.items()},
        "train_samples_per_s": round(ref.metrics["samples_per_s"], 1),
        "val_accuracy": round(ref.metrics["val_accuracy"], 4),
        "xcom_bytes": {
            "features": len(shardset.to_json()),
            "model": len(ref.to_json()),
            "predictions": len(result.shardset.to_json()),
        },
        "task_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


# -- memory of the cluster's processes, sampled from outside ----------------------------------------------
class ClusterMemory(threading.Thread):
    """Peak RSS of the Spark driver JVM (child of the cluster service) and of the largest other process."""

    def __init__(self, service_pid: int, interval_s: float = 0.5) -> None:
        super().__init__(name="cluster-memory", daemon=True)
        self.service_pid, self.interval_s = service_pid, interval_s
        self.driver_mib = 0.0
        self.worker_mib, self.worker_name = 0.0, ""
        self._done = threading.Event()

    def sample(self) -> None:
        import psutil

        try:
            service = psutil.Process(self.service_pid)
            children = service.children(recursive=True)
        except psutil.Error:
            return
        driver = next((c for c in service.children() if _name(c).startswith("java")), None)
        for proc in children:
            try:
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            if driver is not None and proc.pid == driver.pid:
                self.driver_mib = max(self.driver_mib, rss)
            elif rss > self.worker_mib:
                self.worker_mib, self.worker_name = rss, _describe(proc)

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def _name(proc: Any) -> str:
    try:
        return str(proc.name())
    except Exception:
        return ""


def _describe(proc: Any) -> str:
    """A short name: Ray's process title (``ray::RayTrainWorker``), else the executable and its main class."""
    try:
        cmd = proc.cmdline()
    except Exception:
        return _name(proc)
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    if cmd and "java" in os.path.basename(cmd[0]):
        return "java " + next((a for a in cmd if a.startswith("org.apache.spark")), "")
    return " ".join(os.path.basename(a) for a in cmd[:3])[:60]


def _service_pid(state_dir: str) -> int:
    with open(os.path.join(state_dir, "endpoint.json")) as handle:
        return int(json.load(handle)["pid"])


def measure(state_dir: str, workdir: str, base: int) -> dict[str, Any]:
    all_dir = os.path.join(workdir, "images")
    started = time.perf_counter()
    generate(all_dir, base * FACTORS[-1])
    generate_s = time.perf_counter() - started
    points = []
    for factor in FACTORS:
        count = base * factor
        source = point_source(all_dir, os.path.join(workdir, f"point-{factor}x"), count)
        memory = ClusterMemory(_service_pid(state_dir))
        memory.start()
        out = os.path.join(workdir, f"point-{factor}x.json")
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_scale", "--point", str(count), "--state-dir", state_dir,
             "--source", source, "--root", os.path.join(workdir, "store"), "--out", out],
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            capture_output=True,
            text=True,
        )  # fmt: skip
        memory.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"scale point {factor}x failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        with open(out) as handle:
            result = json.load(handle)
        result |= {
            "factor": factor,
            "driver_peak_rss_mib": round(memory.driver_mib, 1),
            "largest_worker_peak_rss_mib": round(memory.worker_mib, 1),
            "largest_worker": memory.worker_name,
        }
        print(f"scale {factor}x: {json.dumps(result)}", flush=True)
        points.append(result)
    return {"base": base, "generate_s": round(generate_s, 1), "points": points, **verdicts(points)}


def verdicts(points: list[dict[str, Any]]) -> dict[str, Any]:
    """100x against 10x: throughput per stage (ratio 100x/10x), RSS growth, XCom sizes."""
    ten, hundred = points[-2], points[-1]
    throughput = {s: round(hundred["images_per_s"][s] / ten["images_per_s"][s], 3) for s in STAGES}
    growth = {
        k: round(hundred[k] / ten[k], 3)
        for k in ("task_peak_rss_mib", "driver_peak_rss_mib", "largest_worker_peak_rss_mib")
        if ten[k]
    }
    xcom = {k: sorted({p["xcom_bytes"][k] for p in points}) for k in ten["xcom_bytes"]}
    return {"throughput_100x_vs_10x": throughput, "rss_100x_vs_10x": growth, "xcom_bytes_seen": xcom}


def report(ctx: Any, row: Any) -> dict[str, Any]:
    """Rows for ``python -m benchmarks``: each goal at 100x against 10x, the three points in the notes."""
    res = measure(ctx.state_dir, os.path.join(ctx.workdir, "scale"), 20 if ctx.fast else 100)
    points = res["points"]

    def curve(get: Any, unit: str) -> str:
        return ", ".join(f"{p['factor']}x: {get(p):,.0f}{unit}" for p in points)

    epoch = f"; steady epoch {curve(lambda p: p['train_samples_per_s'], ' samples/s')}"
    rows = []
    for stage in STAGES:
        ratio = res["throughput_100x_vs_10x"][stage]
        rows.append(
            row(
                f"{stage} throughput at 100x ({points[-1]['images']:,} images) against 10x",
                [points[-1]["images_per_s"][stage]],
                "img/s",
                ratio,
                ">= 0.85x (within 15%)",
                ratio >= 0.85,
                note=curve(lambda p, s=stage: p["images_per_s"][s], " img/s") + (epoch if stage == "train" else ""),
            )
        )
    for key, what, goal in (
        ("task_peak_rss_mib", "peak RSS of the task process", 1.2),
        ("driver_peak_rss_mib", "peak RSS of the Spark driver (cluster service JVM)", 1.2),
        ("largest_worker_peak_rss_mib", "peak RSS of the largest cluster worker process", None),
    ):
        ratio = res["rss_100x_vs_10x"].get(key)
        worker = f"; largest at 100x: {points[-1]['largest_worker']}" if key.startswith("largest") else ""
        rows.append(
            row(
                f"{what} at 100x against 10x",
                [points[-1][key]],
                "MiB",
                ratio,
                None if goal is None else f"<= {goal}x",
                None if goal is None or ratio is None else ratio <= goal,
                note=curve(lambda p, k=key: p[k], " MiB") + worker,
            )
        )
    sizes = [p["xcom_bytes"][k] for p in points for k in p["xcom_bytes"]]
    per_ref = "; ".join(f"{k}: {v}" for k, v in res["xcom_bytes_seen"].items())
    spread = max(max(v) / min(v) for v in res["xcom_bytes_seen"].values())
    rows.append(
        row(
            "XCom bytes of the features, model and predictions references, 1x..100x",
            [float(s) for s in sizes],
            "bytes",
            round(spread, 3),
            "constant (max/min <= 1.05)",
            spread <= 1.05,
            note=per_ref,
        )
    )
    return {"rows": rows, "detail": res}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", required=True, help="the running shared cluster's state dir")
    parser.add_argument("--base", type=int, default=100, help="images at 1x")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--point", type=int, help=argparse.SUPPRESS)  # child mode: one point
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        result = run_point(args.state_dir, args.source, args.root, args.point)
        with open(args.out, "w") as handle:
            json.dump(result, handle)
        return result
    import tempfile

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    result = measure(args.state_dir, workdir, args.base)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
