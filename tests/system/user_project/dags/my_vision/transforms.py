"""My preprocessing: runs on the Spark executors, once per image."""

from __future__ import annotations

import numpy as np
from PIL import Image

CODE_VERSION = 1  # written into every row, so the output says which version of this code made it


def prepare(image: Image.Image, size: int = 32) -> dict[str, object]:
    """Any mode (RGBA, L, CMYK, ...) -> a normalised 3 x size x size float32 tensor, plus the code version."""
    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    pixels = (np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) - 128.0) / 64.0
    return {"image": np.ascontiguousarray(pixels), "code_version": CODE_VERSION}
