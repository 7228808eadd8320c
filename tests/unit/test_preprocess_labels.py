"""Labels files without a cluster: anywhere in the store, validated on the driver before any Spark call."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_bigdata_ai.preprocess import SourceLayoutError, parse_labels, preprocess
from airflow_bigdata_ai.preprocess.labels import labels_uri
from airflow_bigdata_ai.preprocess.sources import SourceSpec
from airflow_bigdata_ai.shards import open_store, read_table
from tests.unit.test_preprocess_usercode import NoSpark

CLASSES = ["cat", "dog", "owl"]


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (4, 4), value).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def flat_images(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """12 images in nested folders that are not classes; their classes live in a CSV elsewhere."""
    root = tmp_path / "data" / "images"
    truth: dict[str, str] = {}
    for index in range(12):
        rel = f"batch{index % 2}/cam{index % 3}/img{index:02d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png(index * 10))
        truth[rel] = CLASSES[index % 3]
    return root, truth


def _write_labels(path: Path, truth: dict[str, str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("path,label\n" + "".join(f"{rel},{label}\n" for rel, label in truth.items()))
    return str(path)


def _labels_of(out: str, shardset: Any) -> dict[str, int]:
    table = read_table(open_store(out), shardset)
    return dict(zip(table.column("record_id").to_pylist(), table.column("label").to_pylist(), strict=True))


@pytest.mark.parametrize("where", ["sibling-uri", "other-folder", "relative-parent"])
def test_labels_file_outside_the_image_folder(flat_images, tmp_path, where):
    root, truth = flat_images
    if where == "sibling-uri":
        labels = "file://" + _write_labels(root.parent / "labels.csv", truth)
    elif where == "other-folder":
        labels = _write_labels(tmp_path / "meta" / "2026" / "labels.csv", truth)
    else:
        _write_labels(root.parent / "labels.csv", truth)
        labels = "../labels.csv"
    out = str(tmp_path / "out")
    shardset = preprocess({"uri": str(root), "labels": labels, "classes": CLASSES}, out, progress=None)
    assert _labels_of(out, shardset) == {rel: CLASSES.index(name) for rel, name in truth.items()}
    assert shardset.stats["labels_file"]["rows"] == 12 and len(shardset.stats["labels_file"]["sha256"]) == 64


def test_integer_labels_and_bad_values_stay_per_record(flat_images, tmp_path):
    root, truth = flat_images
    rows = {rel: str(CLASSES.index(name)) for rel, name in truth.items()}
    first = sorted(rows)[0]
    rows[first] = "x"  # one bad value: quarantined as bad_label, the rest committed
    del rows[sorted(rows)[1]]  # one image without a row: bad_label too
    labels = _write_labels(tmp_path / "labels.csv", rows)
    shardset = preprocess(
        {"uri": str(root), "labels": labels}, str(tmp_path / "o"), max_bad_fraction=0.5, progress=None
    )
    assert shardset.num_rows == 10 and shardset.stats["by_reason"] == {"bad_label": 2}


BAD_FILES = {
    "missing": (None, SourceLayoutError, "does not exist"),
    "empty": ("", SourceLayoutError, "is empty"),
    "no-header": ("batch0/cam0/img00.png,cat\n", SourceLayoutError, "needs the columns 'path' and 'label'"),
    "wrong-header": ("file,class\nbatch0/cam0/img00.png,cat\n", SourceLayoutError, "header 'file,class'"),
    "header-only": ("path,label\n", SourceLayoutError, "no rows"),
    "duplicates": (
        "path,label\nbatch0/cam0/img00.png,cat\nbatch1/cam1/img01.png,dog\n./batch0/cam0/img00.png,owl\n",
        SourceLayoutError,
        r"1 path\(s\) more than once: 'batch0/cam0/img00.png' \(lines 2 and 4\)",
    ),
    "absolute-path": (
        "path,label\n/etc/passwd,cat\n",
        SourceLayoutError,
        "line 2: path '/etc/passwd' must be relative",
    ),
    "names-without-classes": (
        "path,label\nbatch0/cam0/img00.png,cat\n",
        SourceLayoutError,
        "give the source 'classes'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_labels_files_fail_on_the_driver_before_any_spark_call(flat_images, tmp_path, case):
    root, _ = flat_images
    content, error, pattern = BAD_FILES[case]
    path = tmp_path / "meta" / "labels.csv"
    if content is not None:
        path.parent.mkdir(parents=True)
        path.write_text(content)
    source: dict[str, Any] = {"uri": str(root), "labels": str(path)}
    if case not in ("names-without-classes",):
        source["classes"] = CLASSES
    with pytest.raises(error, match=pattern) as info:
        preprocess(source, str(tmp_path / "out"), spark=NoSpark())
    assert str(path) in str(info.value)  # names the file


def test_labels_file_in_another_scheme_is_refused(flat_images, tmp_path):
    root, _ = flat_images
    with pytest.raises(SourceLayoutError, match="not in the store of the source"):
        preprocess({"uri": str(root), "labels": "s3://bucket/labels.csv"}, str(tmp_path / "o"), spark=NoSpark())


def test_labels_uri_forms():
    spec = SourceSpec("s3://raw/cameras/2026", labels="../labels/all.csv")
    assert str(labels_uri(spec)) == "s3://raw/cameras/labels/all.csv"
    assert str(labels_uri(SourceSpec("/data/images", labels="labels.csv"))) == "file:///data/images/labels.csv"
    assert str(labels_uri(SourceSpec("/data/images", labels="s3://b/l.csv"))) == "s3://b/l.csv"
    with pytest.raises(SourceLayoutError, match="points above"):
        labels_uri(SourceSpec("s3://raw/x", labels="../../labels.csv"))


def test_parse_labels_accepts_bom_spaces_extra_columns_and_backslashes():
    data = "\ufeffPath , Label ,note\n a\\b.png , 3 ,x\n\n./c.png,4,\n".encode()
    assert parse_labels(data, "labels.csv") == {"a/b.png": "3", "c.png": "4"}
