"""The smart-transportation image generator is deterministic and covers every class."""

from __future__ import annotations

import hashlib
import os

from PIL import Image

from airflow_bigdata_ai.examples.datasets.traffic import CLASSES, write_traffic_images


def _digest(folder: str) -> dict[str, str]:
    out = {}
    for label in sorted(os.listdir(folder)):
        for name in sorted(os.listdir(os.path.join(folder, label))):
            with open(os.path.join(folder, label, name), "rb") as handle:
                out[f"{label}/{name}"] = hashlib.sha256(handle.read()).hexdigest()
    return out


def test_same_seed_same_bytes_and_every_class(tmp_path):
    counts = write_traffic_images(str(tmp_path / "a"), count=25)
    write_traffic_images(str(tmp_path / "b"), count=25)
    assert counts == dict.fromkeys(CLASSES, 5)
    assert _digest(str(tmp_path / "a")) == _digest(str(tmp_path / "b"))
    sizes = set()
    for label in CLASSES:
        for name in os.listdir(tmp_path / "a" / label):
            with Image.open(tmp_path / "a" / label / name) as img:
                assert img.format == "JPEG" and img.mode == "RGB"
                sizes.add(img.size)
    assert len(sizes) > 10, "camera crops come in varied sizes"


def test_other_seed_differs(tmp_path):
    write_traffic_images(str(tmp_path / "a"), count=5, seed=0)
    write_traffic_images(str(tmp_path / "b"), count=5, seed=1)
    assert _digest(str(tmp_path / "a")) != _digest(str(tmp_path / "b"))
