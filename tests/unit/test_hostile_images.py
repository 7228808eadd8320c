"""Hostile images: decompression bombs are refused from their header, and the worker's memory stays bounded.

Real Pillow, no cluster. The bombs are small files that claim (and, for the PNGs, really encode) huge
one-colour images: decoding one would cost hundreds of MB to GBs, so the refusal must come from the header,
against the explicit ``ImageGuards.max_pixels`` cap, never from Pillow's process-wide ``MAX_IMAGE_PIXELS``
(which only warns between 1x and 2x its limit, and which other libraries change).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_bigdata_ai.preprocess import ImageGuards, SettingsError, decode_image
from airflow_bigdata_ai.preprocess.errors import DECOMPRESSION_BOMB, Quarantined
from airflow_bigdata_ai.preprocess.images import DEFAULT_MAX_PIXELS

# Peak RSS (ru_maxrss) of a fresh process that runs preprocess() in-process on 4 good 640x480 JPEGs,
# measured on the 2-core / 24 GiB machine type: 127 MiB, imports included. With the four bombs below added:
# 130 MiB, all four quarantined. With Pillow alone (the header check removed): 887 MiB, and the 144- and
# 100-megapixel bombs were decoded and kept as good records (Pillow only warns below 2x its limit); with
# the cap removed and Pillow's limit bypassed too, the 60000x60000 PNG took the process to 23.7 GB RSS
# until the kernel killed it.
RSS_GROWTH_CAP_MIB = 64
"""How much the bombs may add to the good-images baseline's peak RSS."""
RSS_ABSOLUTE_CAP_MIB = 320
"""The worker's peak RSS with the bombs, imports included (baseline ~128 MiB)."""


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def one_colour_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A grayscale PNG of one colour: a real, decodable stream of ``rows`` rows (all of them by default).

    Zero rows deflate ~1000:1, so 12000x12000 (144 megapixels) is ~140 KB; 60000x60000 with its first
    5,000 rows is ~300 KB and still a decoder's 3.6 GB allocation.
    """
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0 + one byte per pixel
    idat = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is rewritten to claim ``width x height`` (at most 65535 each)."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, "JPEG", quality=90)
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def good_jpeg(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), (shade, 20, 30)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _quarantined(data: bytes, guards: ImageGuards | None = None) -> Quarantined:
    with pytest.raises(Quarantined) as info:
        decode_image(data, guards)
    return info.value


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {
        "png_60000.png": one_colour_png(60000, 60000, rows=5000),
        "png_12000.png": one_colour_png(12000, 12000),
        "jpeg_65000.jpg": jpeg_claiming(65000, 65000),
        "jpeg_10000.jpg": jpeg_claiming(10000, 10000),
    }


def test_default_cap_is_64_megapixels():
    assert ImageGuards().max_pixels == DEFAULT_MAX_PIXELS == 64_000_000


@pytest.mark.parametrize(
    ("name", "dims"),
    [
        ("png_60000.png", "60000x60000"),  # above Pillow's 2x limit: Pillow refuses, with its own message
        ("png_12000.png", "12000x12000"),  # between 1x and 2x: Pillow would only warn, then decode
        ("jpeg_65000.jpg", "65000x65000"),
        ("jpeg_10000.jpg", "10000x10000"),
    ],
)
def test_bomb_is_quarantined_with_dimensions_and_cap(bombs: dict[str, bytes], name: str, dims: str):
    assert len(bombs[name]) < 400_000
    error = _quarantined(bombs[name])
    assert error.reason == DECOMPRESSION_BOMB
    assert dims in error.detail and f"max_pixels={DEFAULT_MAX_PIXELS}" in error.detail


def test_cap_holds_whatever_pillows_global_says(bombs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch):
    """Libraries set ``Image.MAX_IMAGE_PIXELS = None`` to silence Pillow: the header check must not care."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for data in bombs.values():
        assert _quarantined(data).reason == DECOMPRESSION_BOMB


def test_the_configured_cap_decides_not_pillows(monkeypatch: pytest.MonkeyPatch):
    """A deployment that allows larger images gets them, even above Pillow's (global) 2x limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # Pillow alone refuses > 2 MP, warns > 1 MP
    large = one_colour_png(2000, 1500)  # 3 MP
    assert decode_image(large, ImageGuards(max_pixels=4_000_000)).size == (2000, 1500)
    error = _quarantined(large, ImageGuards(max_pixels=2_500_000))
    assert error.reason == DECOMPRESSION_BOMB and "2000x1500" in error.detail and "max_pixels=2500000" in error.detail


def test_warnings_as_errors_do_not_turn_a_bomb_or_a_good_image_into_undecodable(monkeypatch: pytest.MonkeyPatch):
    """Under ``-W error`` Pillow *raises* its DecompressionBombWarning from ``Image.open``."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(one_colour_png(1200, 1000), ImageGuards(max_pixels=2_000_000)).size == (1200, 1000)
        assert _quarantined(one_colour_png(1200, 1000), ImageGuards(max_pixels=1_000_000)).reason == DECOMPRESSION_BOMB


def test_max_pixels_is_validated_and_coerced():
    assert ImageGuards.coerce({"max_pixels": "16_000_000"}).max_pixels == 16_000_000  # a rendered template
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_pixels"):
            ImageGuards(max_pixels=bad)  # type: ignore[arg-type]
    assert issubclass(SettingsError, ValueError)


_WORKER = textwrap.dedent(
    """
    import json, resource, sys
    from airflow_bigdata_ai.preprocess import preprocess

    source, output = sys.argv[1], sys.argv[2]
    steps = [{"op": "convert", "mode": "RGB"}, {"op": "resize", "size": [64, 64]}, {"op": "to_tensor"}]
    ref = preprocess({"uri": source, "labels": "none"}, output, transform=steps, max_bad_fraction=1.0,
                     parallelism=1, progress=None)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with open("/proc/self/status") as status:
        hwm_kib = int(status.read().split("VmHWM:")[1].split()[0])
    print(json.dumps({"peak_mib": peak_kib / 1024, "vm_hwm_mib": hwm_kib / 1024, "ok": ref.stats["ok"],
                      "by_reason": ref.stats["by_reason"]}))
    """
)
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def _peak_rss(source: Path, output: Path) -> dict[str, Any]:
    """Run the real in-process preprocessing (list, read, decode, transform, write, commit) in a fresh
    process, so that its peak RSS is this workload's alone.

    Through a small launcher process: Linux carries the old address space's high-water mark across
    ``execve`` into ``ru_maxrss``, so a worker started straight from this pytest process reports pytest's
    own peak (435 MiB seen late in the unit suite, against 130 MiB for the worker itself). The launcher's
    child starts from the launcher's ~10 MiB instead. ``VmHWM`` (per address space) is the cross-check.
    """
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, sys.executable, "-c", _WORKER, str(source),
         f"file://{output}/dag/prep/ds=2026-11-30"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_worker_peak_rss_with_bombs_stays_under_cap(bombs: dict[str, bytes], tmp_path: Path):
    good_dir, mixed_dir = tmp_path / "good", tmp_path / "mixed"
    for folder in (good_dir, mixed_dir):
        folder.mkdir()
        for index in range(4):
            (folder / f"good_{index}.jpg").write_bytes(good_jpeg(40 * index))
    for name, data in bombs.items():
        (mixed_dir / name).write_bytes(data)

    baseline = _peak_rss(good_dir, tmp_path / "out-good")
    with_bombs = _peak_rss(mixed_dir, tmp_path / "out-mixed")

    assert baseline["ok"] == 4 and baseline["by_reason"] == {}
    assert with_bombs["ok"] == 4, "the good images beside the bombs are kept"
    assert with_bombs["by_reason"] == {DECOMPRESSION_BOMB: len(bombs)}
    growth = with_bombs["peak_mib"] - baseline["peak_mib"]
    print(f"peak RSS: baseline {baseline['peak_mib']:.0f} MiB, with bombs {with_bombs['peak_mib']:.0f} MiB")
    assert growth < RSS_GROWTH_CAP_MIB, f"bombs added {growth:.0f} MiB to the peak RSS ({baseline} -> {with_bombs})"
    assert with_bombs["peak_mib"] < RSS_ABSOLUTE_CAP_MIB, with_bombs
    assert abs(with_bombs["peak_mib"] - with_bombs["vm_hwm_mib"]) < 16, "ru_maxrss is this worker's own peak"
