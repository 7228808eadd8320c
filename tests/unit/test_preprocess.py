"""Preprocessing core without Spark: decode guards, transforms, sources, quarantine, determinism."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from airflow_bigdata_ai.examples.datasets.corrupt import bomb_png, corrupt_folder
from airflow_bigdata_ai.examples.datasets.digits import CLASSES, write_digits
from airflow_bigdata_ai.examples.transforms import digits_float
from airflow_bigdata_ai.preprocess import (
    ImageGuards,
    ImagePipeline,
    InconsistentOutput,
    SettingsError,
    SourceError,
    SourceSpec,
    TooManyBadRecords,
    decode_image,
    list_units,
    preprocess,
)
from airflow_bigdata_ai.preprocess.errors import Quarantined
from airflow_bigdata_ai.shards import decode_tensors, load_manifest, open_store, read_table, tensor_spec
from airflow_bigdata_ai.shards.store import LocalStore


def _png(mode: str = "L", size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 7).save(out, "PNG")
    return out.getvalue()


def _reason(data: bytes, guards: ImageGuards | None = None) -> str:
    with pytest.raises(Quarantined) as info:
        decode_image(data, guards)
    return info.value.reason


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("digits") / "png")
    write_digits(root, "png", limit=240)
    return root


def test_decode_guards_give_reason_codes():
    good = _png()
    assert decode_image(good).size == (8, 8)
    assert _reason(b"") == "zero_bytes"
    assert _reason(good[: int(len(good) * 0.6)]) == "truncated"
    assert _reason(b"NOTANIMAGE" + bytes(range(200))) == "undecodable"
    assert _reason(bomb_png(30000, 30000)) == "decompression_bomb"
    # below Pillow's own limit, our header check still rejects it before decoding
    assert _reason(bomb_png(5000, 5000), ImageGuards(max_pixels=1_000_000)) == "decompression_bomb"
    assert _reason(_png("RGB"), ImageGuards(channels=(1,))) == "wrong_channels"
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(jpeg, "JPEG")
    assert _reason(jpeg.getvalue()[: len(jpeg.getvalue()) // 2]) == "truncated"


def test_builtin_pipeline_shapes_and_values():
    image = Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint32).reshape(48, 64, 3).astype(np.uint8), "RGB")
    pipe = ImagePipeline.from_spec(
        [
            {"op": "resize", "size": [32, 40]},
            {"op": "center_crop", "size": 24},
            {"op": "to_tensor", "dtype": "float32"},
            {"op": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        ]
    )
    out = pipe(image)
    assert out.shape == (3, 24, 24) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    gray = ImagePipeline.from_spec([{"op": "convert", "mode": "L"}, {"op": "crop", "box": [0, 0, 10, 5]}])(image)
    assert gray.shape == (1, 5, 10) and gray.dtype == np.uint8
    hwc = ImagePipeline.from_spec([{"op": "to_tensor", "layout": "HWC"}])(image)
    assert np.array_equal(hwc, np.asarray(image))
    with pytest.raises(ValueError, match="before to_tensor"):
        ImagePipeline.from_spec([{"op": "to_tensor"}, {"op": "resize", "size": 4}])
    with pytest.raises(ValueError, match="unknown transform op"):
        ImagePipeline.from_spec([{"op": "blur"}])


def test_listing_is_sorted_sharded_and_labelled(digits_root):
    units = list_units(SourceSpec(digits_root), LocalStore(digits_root), rows_per_shard=100).to_pylist()
    assert [u["record_id"] for u in units] == sorted(u["record_id"] for u in units)
    assert [u["shard"] for u in units] == [i // 80 for i in range(240)]  # 3 even shards of <= 100
    paired = list_units(SourceSpec(digits_root), LocalStore(digits_root), rows_per_shard=100, parallelism=2)
    assert paired.column("shard").to_pylist() == [i // 60 for i in range(240)]  # 4: a multiple of 2
    assert all(u["label"] == int(u["record_id"].split("/")[0]) for u in units)


def test_missing_source_raises_not_quarantines(tmp_path):
    with pytest.raises(SourceError, match="does not exist or is empty"):
        preprocess(str(tmp_path / "nope"), str(tmp_path / "out"), progress=None)
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("x")
    with pytest.raises(SourceError, match="no files ending"):
        preprocess(str(tmp_path / "txt"), str(tmp_path / "out"), progress=None)


def test_read_errors_raise_and_leave_nothing(digits_root, tmp_path):
    class FlakyStore(LocalStore):
        def read_bytes(self, uri):  # type: ignore[no-untyped-def]
            if str(uri).endswith("digit_0005.png"):
                raise OSError("simulated storage outage")
            return super().read_bytes(uri)

    out = str(tmp_path / "out")
    with pytest.raises(OSError, match="simulated storage outage"):
        preprocess(digits_root, out, source_store=FlakyStore(digits_root), progress=None)
    assert open_store(out).list(out) == []


def test_digits_rows_tensors_and_deterministic_rerun(digits_root, tmp_path):
    out = str(tmp_path / "out")
    events = []
    first = preprocess(digits_root, out, transform=digits_float, rows_per_shard=64, progress=events.append)
    assert first.num_rows == 240 and first.num_shards == 4
    assert events[-1].rows_done == 240 and events[-1].shards_done == 4
    assert first.schema["image"] == "tensor<float32>[1,8,8]"
    store = open_store(out)
    table = read_table(store, first)
    field = table.schema.field("image")
    shape, dtype = tensor_spec(field)  # type: ignore[misc]
    tensors = decode_tensors(table.column("image"), shape, dtype)
    for index in range(240):  # every row: shards reuse the tensor arrays of earlier shards
        record_id = table.column("record_id")[index].as_py()
        with Image.open(f"{digits_root}/{record_id}") as image:
            assert np.array_equal(tensors[index], digits_float(image))
        assert table.column("label")[index].as_py() == int(record_id.split("/")[0])

    first_sums = [s.sha256 for s in load_manifest(store, first).shards]
    second = preprocess(
        digits_root, out, transform="airflow_bigdata_ai.examples.transforms:digits_float", rows_per_shard=64,
        progress=None,
    )  # fmt: skip
    assert [s.sha256 for s in load_manifest(store, second).shards] == first_sums
    assert len([u for u in store.list(out) if "/_manifests/" in u.path]) == 1
    assert len([u for u in store.list(out) if u.path.endswith("quarantine.json")]) == 1


def test_corruption_counts_exact_and_threshold_message(tmp_path):
    root = str(tmp_path / "jpg")
    write_digits(root, "jpeg", limit=240)
    expected = corrupt_folder(root, fraction=0.05)  # 12 files, two of each kind
    assert Counter(expected.values()) == {k: 2 for k in expected.values()} and len(expected) == 12
    source = {"uri": root, "classes": list(CLASSES)}
    guards = {"channels": [1]}
    out = str(tmp_path / "out")
    with pytest.raises(TooManyBadRecords) as info:
        preprocess(source, out, guards=guards, progress=None)
    message = str(info.value)
    assert "12 of 240 inputs (5.00%) were quarantined, above max_bad_fraction=1.00%" in message
    assert "bad_label=2, decompression_bomb=2, truncated=2, undecodable=2, wrong_channels=2, zero_bytes=2" in message
    assert "Examples: file://" in message
    report = json.loads(open_store(out).read_bytes(info.value.report_uri))
    assert {r["record_id"]: r["reason"] for r in report["records"]} == expected
    assert not [u for u in open_store(out).list(out) if u.path.endswith(".parquet")]

    shardset = preprocess(source, out, guards=guards, max_bad_fraction=0.05, progress=None)
    assert shardset.num_rows == 240 - 12
    assert shardset.stats["by_reason"] == dict(sorted(Counter(expected.values()).items()))
    assert shardset.stats["inputs"] == 240 and shardset.stats["quarantined"] == 12
    report = json.loads(open_store(out).read_bytes(shardset.stats["quarantine_report"]["uri"]))
    assert {r["record_id"]: r["reason"] for r in report["records"]} == expected
    kept = set(read_table(open_store(out), shardset).column("record_id").to_pylist())
    assert not kept & set(expected)


def test_user_errors_are_quarantined_per_record(digits_root, tmp_path):
    def picky(image: Image.Image) -> np.ndarray:
        value = int(np.asarray(image).sum())
        if value % 7 == 0:
            raise ValueError("picky")
        size = 2 if value % 5 == 0 else 1
        return np.zeros((size,), np.float32)

    result = preprocess(digits_root, str(tmp_path / "o"), transform=picky, max_bad_fraction=1.0, progress=None)
    reasons = result.stats["by_reason"]
    assert set(reasons) <= {"transform_error", "bad_output"} and reasons.get("transform_error", 0) > 0
    assert result.num_rows + result.stats["quarantined"] == 240


def test_inconsistent_shapes_across_shards_fail(digits_root, tmp_path):
    def by_label(image: Image.Image) -> np.ndarray:
        return np.zeros((1 + int(np.asarray(image).sum()) % 2,), np.uint8)

    with pytest.raises(InconsistentOutput):
        preprocess(digits_root, str(tmp_path / "o"), transform=by_label, rows_per_shard=1, max_bad_fraction=1.0,
                   progress=None)  # fmt: skip


def test_labels_file_and_multi_output(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    rows = ["path,label"]
    for i in range(6):
        (root / f"img{i}.png").write_bytes(_png(size=(4, 3)))
        if i != 5:
            rows.append(f"img{i}.png,{'x' if i == 4 else i % 2}")
    (root / "labels.csv").write_text("\n".join(rows))
    result = preprocess(
        {"uri": str(root), "labels": "labels.csv"}, str(tmp_path / "o"),
        transform="airflow_bigdata_ai.examples.transforms:with_stats", output_spec=None, max_bad_fraction=0.5,
        progress=None,
    )  # fmt: skip
    assert result.stats["by_reason"] == {"bad_label": 2}
    assert result.stats["ok"] == 4
    table = read_table(open_store(str(tmp_path / "o")), result)
    assert table.column("label").to_pylist() == [0, 1, 0, 1]
    assert result.schema == {
        "record_id": "string", "label": "int64", "image": "tensor<uint8>[1,3,4]", "mean": "double", "width": "int64",
    }  # fmt: skip


def test_parquet_and_csv_sources(tmp_path):
    src = tmp_path / "tab"
    src.mkdir()
    images = []
    for i in range(5):
        out = io.BytesIO()
        Image.new("L", (8, 8), i * 10).save(out, "PNG")
        images.append(out.getvalue())
    images[3] = b""
    table = pa.table({"image": images, "label": [0, 1, 0, 1, 2]})
    pq.write_table(table.slice(0, 3), src / "a.parquet")
    pq.write_table(table.slice(3), src / "b.parquet")
    result = preprocess(
        {"uri": str(src), "format": "parquet", "image_column": "image", "label_column": "label"},
        str(tmp_path / "o1"), max_bad_fraction=0.5, progress=None,
    )  # fmt: skip
    assert (result.num_rows, result.num_shards, result.stats["by_reason"]) == (4, 2, {"zero_bytes": 1})
    got = read_table(open_store(str(tmp_path / "o1")), result)
    assert got.column("record_id").to_pylist() == ["a.parquet#0", "a.parquet#1", "a.parquet#2", "b.parquet#1"]

    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    (csv_dir / "rows.csv").write_text("x,y,label\n1,2,0\n3,4,1\n5,6,oops\n")
    result = preprocess(
        {"uri": str(csv_dir), "format": "csv", "label_column": "label"}, str(tmp_path / "o2"),
        transform="airflow_bigdata_ai.examples.transforms:row_features", max_bad_fraction=0.5, progress=None,
    )  # fmt: skip
    assert result.schema["features"] == "tensor<float32>[2]"
    assert (result.num_rows, result.stats["by_reason"]) == (2, {"bad_label": 1})


def test_transform_kwargs_reach_the_user_function(digits_root, tmp_path):
    result = preprocess(
        digits_root, str(tmp_path / "o"), transform="airflow_bigdata_ai.examples.transforms:rgb_64",
        transform_kwargs={"size": "16"}, progress=None,
    )  # fmt: skip
    assert result.schema["image"] == "tensor<uint8>[3,16,16]"
    with pytest.raises(SettingsError, match="transform_kwargs are for user functions"):
        preprocess(digits_root, str(tmp_path / "p"), transform_kwargs={"size": 3}, progress=None)


_FAULTS_SCRIPT = """
import resource, sys
import numpy as np
from airflow_bigdata_ai.preprocess.allocator import keep_large_allocations
if sys.argv[1] == "tuned":
    assert keep_large_allocations() and keep_large_allocations()
def shard():  # outputs, stacked tensors, Parquet bytes, file bytes: several 15 MB blocks alive at once
    blocks = [np.ones(15_000_000, np.uint8) for _ in range(4)]
    return sum(int(b[::4096].sum()) for b in blocks)
shard()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    shard()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator")
def test_preprocess_workers_keep_large_blocks_instead_of_refaulting_them():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    default, tuned = faults("default"), faults("tuned")
    assert default > 10_000  # freed blocks went back to the kernel and were faulted in again
    assert tuned < default / 10


def test_listing_is_staged_one_file_per_shard_inside_the_attempt(tmp_path):
    from types import SimpleNamespace

    from airflow_bigdata_ai.preprocess.engine import stage_units, staged_units_uri
    from airflow_bigdata_ai.preprocess.sources import UNIT_SCHEMA
    from airflow_bigdata_ai.shards import ShardWriter

    store = open_store(str(tmp_path))
    job: Any = SimpleNamespace(writer=ShardWriter(store, f"{tmp_path}/out/ds=none"))
    shards = [2, 0, 1, 0, 2, 2]
    units = pa.table(
        {
            "record_id": [f"r{i}" for i in range(6)],
            "uri": [f"file:///x/{i}" for i in range(6)],
            "label": [0] * 6,
            "label_error": [None] * 6,
            "shard": shards,
        },
        schema=UNIT_SCHEMA,
    )
    assert stage_units(job, units) == 3
    for shard, expected in ((0, ["r1", "r3"]), (1, ["r2"]), (2, ["r0", "r4", "r5"])):
        uri = staged_units_uri(job, shard)
        assert f"/attempts/{job.writer.attempt_id}/" in str(uri)
        staged = pq.read_table(pa.BufferReader(store.read_bytes(uri)))
        assert staged.column("record_id").to_pylist() == expected
        assert set(staged.column("shard").to_pylist()) == {shard}


def test_shard_count_is_the_fewest_even_shards_rounded_up_to_the_parallelism():
    from airflow_bigdata_ai.preprocess.sources import shard_count

    assert shard_count(2400, 512) == 5
    assert shard_count(2400, 512, parallelism=2) == 6
    assert shard_count(2400, 512, parallelism=4) == 8
    assert shard_count(2400, 2400, parallelism=6) == 6
    assert shard_count(3, 512, parallelism=8) == 3  # never an empty shard
    assert shard_count(1, 512) == 1


def test_each_task_gets_a_contiguous_run_of_shards_and_every_shard_once():
    from airflow_bigdata_ai.preprocess.engine import task_shards

    assert [list(task_shards(t, 6, 2)) for t in range(2)] == [[0, 1, 2], [3, 4, 5]]
    runs = [list(task_shards(t, 7, 3)) for t in range(3)]
    assert sorted(s for run in runs for s in run) == list(range(7)) and {len(r) for r in runs} == {2, 3}


def test_array_pool_hands_a_written_shards_array_to_the_next_shard():
    from airflow_bigdata_ai.preprocess.process import ArrayPool

    pool = ArrayPool(keep=2)
    first = pool.take(400, (3, 4, 4), "uint8")
    pool.give(first)
    again = pool.take(399, (3, 4, 4), "uint8")  # shards differ by a row at most
    assert again.shape == (399, 3, 4, 4) and np.shares_memory(again, first)
    assert not np.shares_memory(pool.take(10, (3, 4, 4), "float32"), first)  # other dtype: a new array
    pool.give(again)
    assert pool.take(401, (3, 4, 4), "uint8").shape == (401, 3, 4, 4)  # too small: a new array
    for _ in range(3):
        pool.give(np.empty((5, 2), np.uint8))
    assert len(pool.free) == 2


def test_running_tasks_post_progress_that_the_driver_tails_and_sums(digits_root, tmp_path, monkeypatch):
    from airflow_bigdata_ai.preprocess import engine
    from airflow_bigdata_ai.preprocess.process import PreprocessJob
    from airflow_bigdata_ai.shards.dataset import ShardWriter

    out = str(tmp_path / "out")
    job = PreprocessJob(SourceSpec(digits_root), LocalStore(digits_root), ShardWriter(open_store(out), out))
    monkeypatch.setattr(engine, "PROGRESS_WRITE_S", 0.0)
    first, second = engine._TaskProgress(job, 0, 240, 4), engine._TaskProgress(job, 1, 240, 4)
    for _ in range(5):
        first()
    for _ in range(3):
        second()
    posts = job.writer.store.list(job.progress_prefix)
    assert len(posts) == 8
    assert all(f"/attempts/{job.writer.attempt_id}/progress/" in uri.path for uri in posts)
    seen: list[dict[str, int]] = []
    with job.watch_progress(engine._RunningInputs(seen.append), interval_s=60):
        pass  # leaving the block polls once
    assert seen[-1] == {"running": 8, "total": 240, "shards": 4}
    assert len(seen) == 8  # each post handed over once
    assert job.writer.store.list(job.progress_prefix) == []  # the driver consumed them
    job.remove_progress()  # nothing left to remove: still fine
    assert job.writer.store.list(job.progress_prefix) == []


def test_each_task_of_the_one_job_plan_lists_the_source_and_writes_its_run_of_shards(digits_root, tmp_path):
    import shutil

    from airflow_bigdata_ai.preprocess import engine
    from airflow_bigdata_ai.preprocess.process import PreprocessJob
    from airflow_bigdata_ai.shards.dataset import ShardWriter

    out = str(tmp_path / "out")
    job = PreprocessJob(SourceSpec(digits_root), LocalStore(digits_root), ShardWriter(open_store(out), out))
    task_fn = engine._list_and_process_partition(job, rows_per_shard=64, tasks=2)
    rows = pa.Table.from_batches(list(task_fn(iter([pa.record_batch({"id": [1]})])))).to_pylist()
    listing, shards = rows[0], [r for r in rows if r["kind"] == "shard"]
    assert (listing["kind"], listing["inputs"], listing["shard"]) == ("listing", 240, 4)
    assert [r["shard"] for r in shards] == [2, 3] and sum(r["inputs"] for r in shards) == 120  # task 1 of 2

    changed = tmp_path / "changed"
    shutil.copytree(digits_root, changed)
    next(p for p in changed.rglob("*.png")).unlink()
    job.source, job.source_store = SourceSpec(str(changed)), LocalStore(str(changed))
    other = next(iter(engine._list_and_process_partition(job, 64, 2)(iter([pa.record_batch({"id": [0]})]))))
    assert other.to_pylist()[0]["sha256"] != listing["sha256"]  # the driver refuses differing listings


def test_executor_errors_come_back_with_their_type_and_first_line():
    from airflow_bigdata_ai.preprocess import SourceLayoutError
    from airflow_bigdata_ai.preprocess.engine import _reraise_executor_error
    from airflow_bigdata_ai.usercode import UserCodeError

    def spark_error(line: str) -> Exception:  # what a Spark PythonException's text looks like
        return RuntimeError(
            f"[PYTHON_EXCEPTION] An exception was thrown from the Python worker.\nTraceback:\n{line}\n  at"
        )

    cases = [
        (
            "airflow_bigdata_ai.preprocess.errors.SourceLayoutError: source /x has no files ending in ('.png',)",
            SourceLayoutError,
        ),
        ("airflow_bigdata_ai.preprocess.errors.SourceError: source /x does not exist or is empty", SourceError),
        ("airflow_bigdata_ai.usercode.UserCodeError: cannot import module 'm' for 'm:f'", UserCodeError),
    ]
    for line, error in cases:
        with pytest.raises(error) as info:
            _reraise_executor_error(spark_error(line))
        assert type(info.value) is error and str(info.value) == line.split("Error: ", 1)[1]
    _reraise_executor_error(RuntimeError("something else"))  # anything else: the caller re-raises it as is
