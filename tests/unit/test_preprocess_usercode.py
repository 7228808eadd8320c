"""User code in preprocessing without a cluster: modules from a DAGs folder, edits, missing modules, kwargs, specs.

The user's module is written at test time into a folder that only this process has on ``sys.path``; a
subprocess without that folder plays the executor.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from airflow_bigdata_ai.examples.datasets.digits import write_digits
from airflow_bigdata_ai.preprocess import SettingsError, normalise_output_spec, preprocess
from airflow_bigdata_ai.preprocess.core import prepare
from airflow_bigdata_ai.shards import decode_tensors, open_store, read_table, tensor_spec
from airflow_bigdata_ai.usercode import UserCodeError

HELPER = """
import numpy as np


def gray(image, size):
    return np.asarray(image.convert("L").resize((size, size)), dtype=np.int16)
"""

MODULE = """
from {helper} import gray

OFFSET = {offset}


def shifted(image, size: int = 4):
    return (gray(image, size) + OFFSET)[None]
"""


class NoSpark:
    """A ``spark`` argument that fails the test on first use: the error must come before any Spark call."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Spark was used ({name}) before the configuration was checked")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("usercode") / "digits")
    write_digits(root, "png", limit=24)
    return root


@pytest.fixture
def dags(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A DAGs folder on this process's sys.path only, holding a transform module and the helper it imports."""
    folder = tmp_path / "dags"
    folder.mkdir()
    suffix = uuid.uuid4().hex[:8]
    module, helper = f"prep_transforms_{suffix}", f"prep_helpers_{suffix}"
    (folder / f"{helper}.py").write_text(HELPER)
    (folder / f"{module}.py").write_text(MODULE.format(helper=helper, offset=1))
    sys.path.insert(0, str(folder))
    try:
        yield folder, module
    finally:
        sys.path.remove(str(folder))
        for name in (module, helper):
            sys.modules.pop(name, None)


def _first_pixels(out: str, shardset: Any) -> np.ndarray:
    table = read_table(open_store(out), shardset)
    shape, dtype = tensor_spec(table.schema.field("image"))  # type: ignore[misc]
    return decode_tensors(table.column("image"), shape, dtype)


def test_edited_module_takes_effect_on_the_next_run_in_the_same_process(images, dags, tmp_path):
    folder, module = dags
    first = preprocess(images, str(tmp_path / "a"), transform=f"{module}:shifted", progress=None)
    (folder / f"{module}.py").write_text(MODULE.format(helper=module.replace("transforms", "helpers"), offset=7))
    second = preprocess(images, str(tmp_path / "b"), transform=f"{module}:shifted", progress=None)
    diff = _first_pixels(str(tmp_path / "b"), second) - _first_pixels(str(tmp_path / "a"), first)
    assert np.all(diff == 6)  # stale code would give 0
    assert second.stats["transform"] == f"{module}:shifted"
    assert set(second.stats["code"]) == {module, module.replace("transforms", "helpers")}
    assert second.stats["code"][module] != first.stats["code"][module]


_EXECUTOR = """
import json, pickle, sys
job = pickle.loads(sys.stdin.buffer.read())
from airflow_bigdata_ai.preprocess.engine import run_local
rows = run_local(job, 64)
print(json.dumps([r["kind"] for r in rows] + [sum(r["rows"] or 0 for r in rows if r["kind"] == "shard")]))
"""


def test_the_job_carries_the_user_module_to_a_process_that_cannot_import_it(images, dags, tmp_path):
    _, module = dags
    prepared = prepare(images, str(tmp_path / "out"), transform=f"{module}:shifted", transform_kwargs={"size": "3"})
    assert prepared.job.transform_kwargs == {"size": 3}
    again = prepare(images, str(tmp_path / "out"), transform=prepared.job.transform)  # a UserCallable as is
    assert again.job.transform == prepared.job.transform
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", _EXECUTOR], input=pickle.dumps(prepared.job), capture_output=True, env=env,
        cwd=str(tmp_path), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout) == ["shard", 24]


def test_missing_module_fails_before_any_spark_call_naming_module_and_path(images, tmp_path):
    with pytest.raises(UserCodeError) as info:
        preprocess(images, str(tmp_path / "o"), spark=NoSpark(), transform="abai_no_such_module:prepare")
    message = str(info.value)
    assert "'abai_no_such_module'" in message and "sys.path" in message
    with pytest.raises(UserCodeError, match="has no attribute 'nope'"):
        preprocess(
            images, str(tmp_path / "o"), spark=NoSpark(), transform="airflow_bigdata_ai.examples.transforms:nope"
        )


def sized(image: Image.Image, size: int = 4, scale: float = 1.0, gray: bool = False) -> np.ndarray:
    """Uses its kwargs as numbers directly, as a user would write it."""
    resized = image.convert("L" if gray else "RGB").resize((size, size))
    array = np.asarray(resized, dtype=np.float32) * scale
    return array[None] if gray else array.transpose(2, 0, 1)


def test_templated_kwargs_are_converted_to_the_parameter_types(images, tmp_path):
    kwargs = {"size": "6", "scale": "0.5", "gray": "false"}  # what {{ params.x }} renders to
    shardset = preprocess(images, str(tmp_path / "o"), transform=sized, transform_kwargs=kwargs, progress=None)
    assert shardset.num_rows == 24 and shardset.schema["image"] == "tensor<float32>[3,6,6]"
    assert shardset.stats["transform_kwargs"] == {"size": 6, "scale": 0.5, "gray": False}
    with pytest.raises(UserCodeError, match=r"parameter 'size'.*expects int, got 'six'"):
        preprocess(images, str(tmp_path / "p"), spark=NoSpark(), transform=sized, transform_kwargs={"size": "six"})


def test_output_spec_in_the_documented_json_form_matches(images, tmp_path):
    spec = json.loads('{"image": ["tensor", [3, 8, 8], "float32"]}')  # as docs, JSON and templates give it
    shardset = preprocess(
        images, str(tmp_path / "o"), transform=sized, transform_kwargs={"size": 8}, output_spec=spec, progress=None
    )
    assert shardset.num_rows == 24 and shardset.stats["quarantined"] == 0


def test_output_specs_are_normalised():
    tensor = ("tensor", (3, 64, 64), "float32")
    for form in (
        ["tensor", [3, 64, 64], "float32"],
        ("tensor", (3, 64, 64), "float32"),
        ["tensor", ["3", "64", "64"], "f4"],
        ["tensor", [3, 64, 64], np.float32],
        "tensor<float32>[3,64,64]",
    ):
        assert normalise_output_spec({"image": form}) == {"image": tensor}
    assert normalise_output_spec({"n": ["scalar", "float64"], "w": "int", "s": ("scalar", "str")}) == {
        "n": ("scalar", "double"), "w": ("scalar", "int64"), "s": ("scalar", "string"),
    }  # fmt: skip
    assert normalise_output_spec({"v": ["tensor", 5, "uint8"]}) == {"v": ("tensor", (5,), "uint8")}
    assert normalise_output_spec(None) is None
    for bad in (["tensor", [3], "str"], ["scalar", "float32"], ["matrix", [3]], ["tensor", [3, "x"], "f4"]):
        with pytest.raises(SettingsError, match="output_spec"):
            normalise_output_spec({"image": bad})


def test_bad_settings_are_settings_errors_before_any_spark_call(images, tmp_path):
    cases: list[dict[str, Any]] = [
        {"transform": [{"op": "blur"}]},
        {"transform": 42},
        {"guards": {"max_pixel": 3}},
        {"rows_per_shard": 0},
        {"max_bad_fraction": 2.0},
        {"output_spec": {"image": ["tensor", [3], "text"]}},
    ]
    for kwargs in cases:
        with pytest.raises(SettingsError):
            preprocess(images, str(tmp_path / "o"), spark=NoSpark(), **kwargs)
    with pytest.raises(SettingsError, match="source"):
        preprocess({"uri": images, "fromat": "images"}, str(tmp_path / "o"), spark=NoSpark())
