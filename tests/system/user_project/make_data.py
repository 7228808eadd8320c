"""Stand-in for the user's own data: deterministic camera-like images of three patterns.

Writes, under ``<data>``::

    images/site_a/2026/<n>.png     RGBA and RGB PNGs, in nested folders
    images/site_b/cam1/<n>.png     grayscale (mode L) PNGs
    images/site_b/cam2/<n>.jpg     CMYK JPEGs
    labels.csv                     path,label (paths relative to images/), OUTSIDE the image folder

The classes are learnable from any colour mode (stripe orientation, not colour), so a small CNN reaches a
meaningful accuracy in a few epochs. A few files are broken on purpose (truncated, not an image, empty,
and one image missing from labels.csv): the pipeline must quarantine them, not fail.

Run it as ``python make_data.py <data folder> [count]``.
"""

from __future__ import annotations

import csv
import io
import os
import sys

import numpy as np
from PIL import Image

CLASSES = ("horizontal", "vertical", "checks")
# folder -> (PIL mode, file extension, PIL format)
SITES = {
    "site_a/2026": ("RGBA", ".png", "PNG"),
    "site_a/2025": ("RGB", ".png", "PNG"),
    "site_b/cam1": ("L", ".png", "PNG"),
    "site_b/cam2": ("CMYK", ".jpg", "JPEG"),
}
# path relative to images/ -> the reason code the pipeline must quarantine it with
BROKEN = {
    "site_a/2026/broken_truncated.png": "truncated",
    "site_b/cam1/not_an_image.png": "undecodable",
    "site_b/cam2/empty.jpg": "zero_bytes",
    "site_a/2025/unlabelled.png": "bad_label",
}


def pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image: stripes (horizontal / vertical) or a checkerboard, random colours and period."""
    period = int(rng.integers(3, 7))
    phase = int(rng.integers(0, period))
    idx = (np.arange(size) + phase) // period % 2
    if label == 0:
        mask = np.repeat(idx[:, None], size, axis=1)
    elif label == 1:
        mask = np.repeat(idx[None, :], size, axis=0)
    else:
        mask = (idx[:, None] + idx[None, :]) % 2
    dark = rng.integers(0, 90, size=3)
    light = rng.integers(165, 256, size=3)
    image = np.where(mask[..., None] == 1, light, dark).astype(np.float32)
    image += rng.normal(0.0, 12.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, mode: str, fmt: str) -> bytes:
    image = Image.fromarray(array, "RGB").convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return out.getvalue()


def make_data(data_dir: str, count: int = 240, seed: int = 7) -> dict[str, str]:
    """Write ``count`` good images plus the broken ones; return BROKEN (the expected quarantine)."""
    rng = np.random.default_rng(seed)
    images = os.path.join(data_dir, "images")
    rows: list[tuple[str, str]] = []
    sites = list(SITES.items())
    for n in range(count):
        folder, (mode, ext, fmt) = sites[n % len(sites)]
        label = int(rng.integers(0, len(CLASSES)))
        size = int(rng.integers(28, 49))  # sizes differ: the transform resizes
        rel = f"{folder}/img_{n:04d}{ext}"
        os.makedirs(os.path.join(images, folder), exist_ok=True)
        with open(os.path.join(images, rel), "wb") as handle:
            handle.write(_encode(pattern(label, size, rng), mode, fmt))
        rows.append((rel, CLASSES[label]))
    good_png = _encode(pattern(0, 40, rng), "RGB", "PNG")
    broken_bytes = {
        "truncated": good_png[: len(good_png) // 2],
        "undecodable": b"this is a text file, not an image\n",
        "zero_bytes": b"",
        "bad_label": good_png,
    }
    for rel, reason in BROKEN.items():
        with open(os.path.join(images, rel), "wb") as handle:
            handle.write(broken_bytes[reason])
        if reason != "bad_label":  # the unlabelled image has no row in labels.csv
            rows.append((rel, CLASSES[0]))
    with open(os.path.join(data_dir, "labels.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(sorted(rows))
    return dict(BROKEN)


if __name__ == "__main__":
    make_data(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 240)
