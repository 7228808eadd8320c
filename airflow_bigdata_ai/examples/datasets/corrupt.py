"""Deterministic corruption of a fraction of an image folder, in several ways, with the expected reasons.

Tests use the returned mapping as the ground truth for quarantine counts: each kind below maps to
exactly one reason code of :mod:`airflow_bigdata_ai.preprocess.errors`.
"""

from __future__ import annotations

import io
import os
import random
import struct
import zlib

from PIL import Image

# kind == the reason code the preprocessing must report for it
KINDS = ("zero_bytes", "truncated", "undecodable", "wrong_channels", "decompression_bomb", "bad_label")
BAD_LABEL_FOLDER = "not_a_class"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny valid-looking PNG whose header claims ``width x height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _wrong_channels(data: bytes, path: str) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.load()
    is_jpeg = path.lower().endswith((".jpg", ".jpeg"))
    if len(image.getbands()) == 1:
        target = image.convert("RGB")
    else:
        target = image.convert("CMYK" if is_jpeg else "RGBA")
    out = io.BytesIO()
    target.save(out, "JPEG" if is_jpeg else "PNG", **({"quality": 95} if is_jpeg else {}))
    return out.getvalue()


def corrupt_folder(root: str, fraction: float = 0.05, kinds: tuple[str, ...] = KINDS, seed: int = 0) -> dict[str, str]:
    """Corrupt ``round(fraction * n)`` image files under ``root`` in place, kinds assigned round-robin.

    Returns ``{relative path after corruption: kind}``; ``bad_label`` files are moved into
    ``<root>/not_a_class/`` (so the source must be given its ``classes``).
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown corruption kinds {sorted(unknown)}; choose from {KINDS}")
    files = sorted(
        os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
        for d, _, names in os.walk(root)
        for f in names
        if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    count = round(fraction * len(files))
    chosen = sorted(random.Random(seed).sample(files, count))
    rng = random.Random(seed + 1)
    result: dict[str, str] = {}
    for index, rel in enumerate(chosen):
        kind = kinds[index % len(kinds)]
        path = os.path.join(root, rel)
        with open(path, "rb") as handle:
            data = handle.read()
        if kind == "zero_bytes":
            new = b""
        elif kind == "truncated":
            new = data[: int(len(data) * 0.6)]
        elif kind == "undecodable":
            new = b"NOTANIMAGE" + rng.randbytes(max(len(data) - 10, 16))
        elif kind == "wrong_channels":
            new = _wrong_channels(data, rel)
        elif kind == "decompression_bomb":
            new = bomb_png()
        else:  # bad_label: same bytes, moved outside the known classes
            new = data
            moved = f"{BAD_LABEL_FOLDER}/{rel.replace('/', '_')}"
            os.makedirs(os.path.join(root, BAD_LABEL_FOLDER), exist_ok=True)
            os.replace(path, os.path.join(root, moved))
            result[moved] = kind
            continue
        with open(path, "wb") as handle:
            handle.write(new)
        result[rel] = kind
    return result
