"""scikit-learn's digits (1,797 real 8x8 handwritten digits, shipped with the package) as image files.

Written as ``<root>/<label>/digit_<index>.<ext>`` so folder-labelled sources work out of the box, and
byte-identical on every call (fixed encoder settings, no metadata), so checksums can be compared.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg")}
CLASSES = tuple(str(d) for d in range(10))


def digits_arrays(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 8, 8] scaled 0..255, labels int64 [N])."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def write_digits(root: str, fmt: str = "png", limit: int | None = None, jpeg_quality: int = 95) -> list[str]:
    """Write the digits under ``root`` in ``fmt`` ("png" or "jpeg"); returns relative paths, sorted."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {sorted(FORMATS)}")
    pil_format, ext = FORMATS[fmt]
    images, labels = digits_arrays(limit)
    written = []
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        rel = f"{label}/digit_{index:04d}{ext}"
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image = Image.fromarray(pixels, mode="L")
        if pil_format == "JPEG":
            image.save(path, pil_format, quality=jpeg_quality, optimize=False)
        else:
            image.save(path, pil_format, optimize=False, compress_level=6)
        written.append(rel)
    return sorted(written)
