"""Preprocessing on the real shared cluster (Spark Connect) with real images, local and on S3 (loopback)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter
from typing import Any

import boto3
import numpy as np
import pytest
from PIL import Image

from airflow_bigdata_ai.examples.datasets.corrupt import corrupt_folder
from airflow_bigdata_ai.examples.datasets.digits import CLASSES, write_digits
from airflow_bigdata_ai.examples.datasets.traffic import write_traffic_images
from airflow_bigdata_ai.examples.transforms import digits_float
from airflow_bigdata_ai.preprocess import ImagePipeline, SourceError, TooManyBadRecords, preprocess
from airflow_bigdata_ai.shards import (
    ShardSet,
    decode_tensors,
    load_manifest,
    open_store,
    output_uri,
    read_table,
    tensor_spec,
)
from tests.support.s3server import s3_server

pytestmark = pytest.mark.integration

DIGITS_FN = "airflow_bigdata_ai.examples.transforms:digits_float"
TRAFFIC_PIPELINE = [
    {"op": "convert", "mode": "RGB"},
    {"op": "resize", "size": [48, 48]},
    {"op": "to_tensor", "dtype": "float32"},
    {"op": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("preprocess-data")
    paths = {"png": str(base / "digits-png"), "jpeg": str(base / "digits-jpeg"), "traffic": str(base / "traffic")}
    write_digits(paths["png"], "png")
    write_digits(paths["jpeg"], "jpeg")
    write_traffic_images(paths["traffic"], count=150)
    return paths


@pytest.fixture(scope="module")
def spark(attached: Any) -> Any:
    return attached.spark()


def brighter(image: Image.Image) -> np.ndarray:
    """Module-level user function in a module executors cannot import: must travel by value."""
    return np.minimum(np.asarray(image, dtype=np.uint16) + 10, 255).astype(np.uint8)[None]


def _checksums(store: Any, shardset: ShardSet) -> list[str]:
    return [s.sha256 for s in load_manifest(store, shardset).shards]


def _assert_samples_match(store: Any, shardset: ShardSet, root: str, fn: Any, column: str = "image") -> None:
    """Sampled tensors equal the same function applied in this process to the same files."""
    table = read_table(store, shardset)
    shape, dtype = tensor_spec(table.schema.field(column))  # type: ignore[misc]
    tensors = decode_tensors(table.column(column), shape, dtype)
    for index in np.random.default_rng(0).choice(table.num_rows, size=12, replace=False):
        record_id = table.column("record_id")[int(index)].as_py()
        with Image.open(os.path.join(root, record_id)) as image:
            image.load()
            np.testing.assert_array_equal(tensors[int(index)], fn(image))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_digits_on_cluster(spark, data, tmp_path, fmt):
    out = str(tmp_path / "out")
    shardset = preprocess(data[fmt], out, spark=spark, transform=DIGITS_FN, guards={"channels": [1]}, tag="t-digits")
    assert shardset.num_rows == 1797 and shardset.stats["quarantined"] == 0
    assert shardset.schema["image"] == "tensor<float32>[1,8,8]"
    store = open_store(out)
    _assert_samples_match(store, shardset, data[fmt], digits_float)
    labels = read_table(store, shardset).column("label").to_pylist()
    assert Counter(labels) == Counter(int(os.path.basename(os.path.dirname(p))) for p in _image_paths(data[fmt]))
    # the engine adds nothing: the same job in one process writes byte-identical shards
    local = preprocess(data[fmt], str(tmp_path / "local"), transform=DIGITS_FN, guards={"channels": [1]}, progress=None)
    assert _checksums(open_store(str(tmp_path / "local")), local) == _checksums(store, shardset)


def _image_paths(root: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


def test_larger_generated_images_builtin_pipeline(spark, data, tmp_path):
    out = str(tmp_path / "out")
    shardset = preprocess(data["traffic"], out, spark=spark, transform=TRAFFIC_PIPELINE, rows_per_shard=40)
    assert shardset.num_rows == 150 and shardset.num_shards == 4
    assert shardset.schema["image"] == "tensor<float32>[3,48,48]"
    _assert_samples_match(open_store(out), shardset, data["traffic"], ImagePipeline.from_spec(TRAFFIC_PIPELINE))


def test_five_percent_corrupted_exact_reasons_and_threshold(spark, data, tmp_path):
    root = str(tmp_path / "corrupt")
    shutil.copytree(data["jpeg"], root)
    expected = corrupt_folder(root, fraction=0.05, seed=3)
    assert len(expected) == 90
    source = {"uri": root, "classes": list(CLASSES)}
    out = str(tmp_path / "out")
    shardset = preprocess(
        source, out, spark=spark, transform=DIGITS_FN, guards={"channels": [1]}, max_bad_fraction=0.06
    )
    assert shardset.num_rows == 1797 - 90
    assert shardset.stats["by_reason"] == dict(sorted(Counter(expected.values()).items()))
    assert set(shardset.stats["by_reason"]) == {
        "zero_bytes", "truncated", "undecodable", "wrong_channels", "decompression_bomb", "bad_label",
    }  # fmt: skip
    store = open_store(out)
    report = json.loads(store.read_bytes(shardset.stats["quarantine_report"]["uri"]))
    assert {r["record_id"]: r["reason"] for r in report["records"]} == expected

    with pytest.raises(TooManyBadRecords) as info:
        preprocess(source, str(tmp_path / "strict"), spark=spark, transform=DIGITS_FN, guards={"channels": [1]})
    message = str(info.value)
    assert "90 of 1797 inputs (5.01%) were quarantined, above max_bad_fraction=1.00%" in message
    assert (
        "bad_label=15, decompression_bomb=15, truncated=15, undecodable=15, wrong_channels=15, zero_bytes=15" in message
    )
    assert "Examples: file://" in message and "quarantine.json" in message


def test_user_function_from_non_installed_module(spark, data, tmp_path):
    out = str(tmp_path / "out")
    shardset = preprocess(data["png"], out, spark=spark, transform=brighter, rows_per_shard=600)
    assert shardset.num_rows == 1797 and shardset.schema["image"] == "tensor<uint8>[1,8,8]"
    _assert_samples_match(open_store(out), shardset, data["png"], brighter)


def test_second_session_in_the_same_process(spark, shared_cluster, data, tmp_path):
    """Operators attach their own session while the process may hold another (regression: DATAFRAME_NOT_FOUND)."""
    from airflow_bigdata_ai.cluster import attach

    with attach(shared_cluster.config) as other:
        shardset = preprocess(data["png"], str(tmp_path / "out"), spark=other.spark(), transform=DIGITS_FN)
    assert shardset.num_rows == 1797
    assert spark.range(2).count() == 2


def test_missing_source_fails_as_infrastructure(spark, tmp_path):
    with pytest.raises(SourceError, match="does not exist or is empty"):
        preprocess(str(tmp_path / "missing"), str(tmp_path / "out"), spark=spark)


def test_s3_source_and_output_match_local_checksums(spark, data, tmp_path):
    local_out = str(tmp_path / "local")
    local = preprocess(data["png"], local_out, spark=spark, transform=DIGITS_FN)
    with s3_server("images", "shards") as options:
        client = boto3.client("s3", **options.client_kwargs())
        for path in _image_paths(data["png"]):
            client.upload_file(path, "images", "digits/" + os.path.relpath(path, data["png"]))
        dataset = output_uri("s3://shards/root", "dag", "prep", "2026-11-24")
        remote = preprocess("s3://images/digits", dataset, spark=spark, transform=DIGITS_FN, s3_options=options)
        s3_store = open_store("s3://shards", options)
        assert remote.num_rows == 1797
        assert _checksums(s3_store, remote) == _checksums(open_store(local_out), local)
        with pytest.raises(SourceError):
            preprocess("s3://images/nothing-here", dataset + "-x", spark=spark, s3_options=options)


def test_rerun_same_logical_date_identical_and_one_manifest(spark, data, tmp_path):
    root = str(tmp_path / "store")
    dataset = output_uri(root, "dag", "prep", "2026-11-24")
    store = open_store(root)
    first = preprocess(data["jpeg"], dataset, spark=spark, transform=DIGITS_FN, rows_per_shard=300)
    first_sums = _checksums(store, first)
    second = preprocess(data["jpeg"], dataset, spark=spark, transform=DIGITS_FN, rows_per_shard=300)
    assert _checksums(store, second) == first_sums and len(first_sums) == 6
    listing = [u.path for u in store.list(dataset)]
    assert len([p for p in listing if "/_manifests/" in p]) == 1
    assert len([p for p in listing if p.endswith("quarantine.json")]) == 1
    assert len([p for p in listing if p.endswith(".parquet")]) == 6


def test_interrupt_tag_cancels_only_this_job(spark, data, tmp_path):
    def slow(image: Image.Image) -> np.ndarray:
        time.sleep(0.02)
        return np.asarray(image, dtype=np.uint8)[None]

    errors: list[BaseException] = []

    def run() -> None:
        try:
            preprocess(data["png"], str(tmp_path / "out"), spark=spark, transform=slow, tag="abai-test-cancel")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(4)
    spark.interruptTag("abai-test-cancel")
    thread.join(60)
    assert not thread.is_alive() and errors, "the tagged job should have been interrupted"
    assert spark.range(3).count() == 3  # the shared session still works
