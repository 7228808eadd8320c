"""Ready-made transforms, importable by path (``"airflow_bigdata_ai.examples.transforms:digits_float"``).

Installed with the package, so they ship nothing; a user's own module beside the DAG is written the same way and
travels with each job (docs/user-code.rst).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def digits_float(image: Image.Image) -> np.ndarray:
    """Grayscale 8x8 digit -> float32 [1, 8, 8] in [0, 1] (what the training example consumes)."""
    array = np.asarray(image.convert("L").resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float32)
    return (array / np.float32(255.0))[None, :, :]


def rgb_64(image: Image.Image, size: int | str = 64) -> np.ndarray:
    """Any image -> uint8 CHW [3, size, size] (RGB, bilinear resize); ``size`` may come from a template."""
    side = int(size)
    resized = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(resized).transpose(2, 0, 1))


def with_stats(image: Image.Image) -> dict[str, object]:
    """Several outputs from one record: a tensor plus scalar columns."""
    array = np.asarray(image.convert("L"), dtype=np.uint8)
    return {"image": array[None, :, :], "mean": float(array.mean()), "width": int(image.width)}


def row_features(row: dict[str, object]) -> np.ndarray:
    """Tabular rows: every numeric column except the label, as float32 features."""
    return np.asarray([float(v) for k, v in sorted(row.items()) if isinstance(v, (int, float))], dtype=np.float32)
