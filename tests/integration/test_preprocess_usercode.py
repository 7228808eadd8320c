"""A user's own code and data on the real shared cluster: a module the executors cannot import (written at
test time into a DAGs folder that only this process has on sys.path), edited between two runs in the same
session (Spark reuses its Python workers), and a labels CSV outside the image folder on S3 (loopback moto).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from airflow_bigdata_ai.examples.datasets.digits import write_digits
from airflow_bigdata_ai.preprocess import SourceLayoutError, preprocess
from airflow_bigdata_ai.shards import decode_tensors, open_store, read_table, tensor_spec
from tests.support.s3server import s3_server

pytestmark = pytest.mark.integration

HELPER = """
import numpy as np


def gray(image, size):
    return np.asarray(image.convert("L").resize((size, size)), dtype=np.int16)
"""

MODULE = """
import os

from {helper} import gray

OFFSET = {offset}


def shifted(image, size: int = 4):
    return {{"image": (gray(image, size) + OFFSET)[None], "pid": os.getpid()}}
"""


@pytest.fixture(scope="module")
def spark(attached: Any) -> Any:
    return attached.spark()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("usercode-it") / "digits")
    write_digits(root, "png", limit=32)
    return root


@pytest.fixture
def dags(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """A DAGs folder on this process's sys.path only (the executors never see it)."""
    folder = tmp_path / "dags"
    folder.mkdir()
    suffix = uuid.uuid4().hex[:8]
    module, helper = f"it_transforms_{suffix}", f"it_helpers_{suffix}"
    (folder / f"{helper}.py").write_text(HELPER)
    (folder / f"{module}.py").write_text(MODULE.format(helper=helper, offset=1))
    sys.path.insert(0, str(folder))
    try:
        yield folder, module, helper
    finally:
        sys.path.remove(str(folder))
        for name in (module, helper):
            sys.modules.pop(name, None)


def _column(out: str, shardset: Any, name: str) -> Any:
    table = read_table(open_store(out), shardset).sort_by("record_id")
    if name != "image":
        return table.column(name).to_pylist()
    shape, dtype = tensor_spec(table.schema.field(name))  # type: ignore[misc]
    return decode_tensors(table.column(name), shape, dtype)


def test_module_from_a_dags_folder_runs_on_the_executors_and_an_edit_takes_effect(spark, images, dags, tmp_path):
    folder, module, helper = dags
    first_out, second_out = str(tmp_path / "first"), str(tmp_path / "second")
    first = preprocess(images, first_out, spark=spark, transform=f"{module}:shifted", transform_kwargs={"size": "4"})
    assert first.num_rows == 32 and first.schema["image"] == "tensor<int16>[1,4,4]"
    assert os.getpid() not in set(_column(first_out, first, "pid"))  # it ran on the executors

    (folder / f"{module}.py").write_text(MODULE.format(helper=helper, offset=9))
    second = preprocess(images, second_out, spark=spark, transform=f"{module}:shifted", transform_kwargs={"size": "4"})
    diff = _column(second_out, second, "image") - _column(first_out, first, "image")
    assert np.all(diff == 8), "the executors ran the old copy of the module"
    reused = set(_column(first_out, first, "pid")) & set(_column(second_out, second, "pid"))
    assert reused, "no Python worker was reused: the test no longer covers stale copies in reused workers"
    assert second.stats["code"][module] != first.stats["code"][module]
    assert second.stats["code"][helper] == first.stats["code"][helper]


def _upload(client: Any, root: str, bucket: str, prefix: str, flat: bool) -> dict[str, str]:
    """Upload the digits; ``flat`` hides the class folders (nested non-class folders instead)."""
    truth: dict[str, str] = {}
    for index, path in enumerate(sorted(str(p) for p in Path(root).rglob("*.png"))):
        label = os.path.basename(os.path.dirname(path))
        rel = f"cam{index % 2}/day{index % 3}/{index:03d}.png" if flat else os.path.relpath(path, root)
        client.upload_file(path, bucket, f"{prefix}/{rel}")
        truth[rel] = label
    return truth


def test_labels_csv_outside_the_image_prefix_on_s3(spark, images, tmp_path):
    classes = [str(d) for d in range(10)]
    with s3_server("raw", "meta", "shards") as options:
        client = boto3.client("s3", **options.client_kwargs())
        truth = _upload(client, images, "raw", "cams/2026-11-24", flat=True)
        rows = "".join(f"{rel},{label}\n" for rel, label in truth.items())
        client.put_object(Bucket="meta", Key="labels/2026-11-24.csv", Body=f"path,label\n{rows}".encode())
        source = {"uri": "s3://raw/cams/2026-11-24", "labels": "s3://meta/labels/2026-11-24.csv", "classes": classes}
        out = "s3://shards/root/prep/ds=2026-11-24"
        shardset = preprocess(source, out, spark=spark, transform="airflow_bigdata_ai.examples.transforms:digits_float",
                              s3_options=options)  # fmt: skip
        table = read_table(open_store("s3://shards", options), shardset)
        got = dict(zip(table.column("record_id").to_pylist(), table.column("label").to_pylist(), strict=True))
        assert got == {rel: int(label) for rel, label in truth.items()}
        assert shardset.stats["labels_file"]["uri"] == "s3://meta/labels/2026-11-24.csv"

        client.put_object(Bucket="meta", Key="labels/bad.csv", Body=b"file,class\n")
        with pytest.raises(SourceLayoutError, match=r"labels file s3://meta/labels/bad.csv has the header"):
            preprocess({**source, "labels": "s3://meta/labels/bad.csv"}, out + "-bad", spark=spark, s3_options=options)
