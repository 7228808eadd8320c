"""Guarded image decoding and the built-in transforms.

Decoding is where corrupt data shows up, so every failure is mapped to a stable reason code here.
Decompression bombs are rejected from the header (``Image.open`` is lazy) before any pixel is decoded,
against :attr:`ImageGuards.max_pixels` alone: Pillow's own ``Image.MAX_IMAGE_PIXELS`` is a process-wide
global (other libraries change it or set it to ``None``) and only *warns* between 1x and 2x its limit, so
a 144-megapixel PNG of ~140 KB would otherwise be decoded into ~430 MB of RGB.
The built-in pipeline is plain data (a list of dicts), so it can be templated, logged and pickled.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from airflow_bigdata_ai.preprocess.errors import (
    DECOMPRESSION_BOMB,
    TRUNCATED,
    UNDECODABLE,
    WRONG_CHANNELS,
    ZERO_BYTES,
    Quarantined,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_MAX_PIXELS = 64_000_000
"""64 megapixels (8000 x 8000): 192 MB decoded as RGB, far above any training image, far below a bomb."""
_TRUNCATION_HINTS = ("truncat", "broken data stream", "unexpected end", "premature end")


@dataclass(frozen=True)
class ImageGuards:
    """Limits checked on every image before it reaches user code.

    ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, 64 megapixels) caps width x height, read from the
    header before any pixel is decoded; it is the only cap (Pillow's global limit is not consulted), so a
    deployment with larger legitimate images raises it here. ``channels`` lists the accepted band counts
    (``None`` accepts any), e.g. ``(1,)`` for a grayscale dataset.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")

    @classmethod
    def coerce(cls, value: ImageGuards | Mapping[str, Any] | None) -> ImageGuards:
        if value is None:
            return cls()
        if isinstance(value, ImageGuards):
            return value
        data = dict(value)
        if isinstance(data.get("max_pixels"), str):  # a templated value renders as a string
            data["max_pixels"] = int(data["max_pixels"].replace("_", ""))
        if data.get("channels") is not None:
            data["channels"] = tuple(int(c) for c in data["channels"])
        return cls(**data)


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    if isinstance(exc, EOFError) or any(hint in text for hint in _TRUNCATION_HINTS):
        return TRUNCATED
    return UNDECODABLE


def _open_header(data: bytes) -> Image.Image:
    """The lazy image (header read, no pixel decoded), whatever Pillow's global ``MAX_IMAGE_PIXELS`` says.

    ``Image.open`` refuses above twice that global with a message that names neither the dimensions nor
    our cap, and refuses images a deployment allowed with a larger ``max_pixels``; under
    ``warnings.simplefilter("error")`` it raises its warning too. In those cases the header is read again
    through the format's own plugin, which applies no limit, so :attr:`ImageGuards.max_pixels` decides.
    """
    try:
        return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        pass
    Image.init()
    prefix = data[:16]
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        verdict = accept(prefix) if accept is not None else True
        if not verdict or isinstance(verdict, str):  # a string is Pillow's "looks like it, but unsupported"
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # as Image.open does: not this format
    raise UnidentifiedImageError("no plugin reads this header")


def decode_image(data: bytes, guards: ImageGuards | None = None) -> Image.Image:
    """Decode ``data`` fully, or raise :class:`Quarantined` with a reason code. Never returns a lazy image."""
    guards = guards or ImageGuards()
    if len(data) == 0:
        raise Quarantined(ZERO_BYTES, "file is empty")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global some libraries flip; it would hide truncation
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated images cannot be detected")
    try:
        image = _open_header(data)
    except UnidentifiedImageError as exc:
        raise Quarantined(UNDECODABLE, f"not a recognised image ({len(data)} bytes)") from exc
    except Exception as exc:
        raise Quarantined(_classify(exc), f"{type(exc).__name__}: {exc}") from None
    width, height = image.size  # from the header: nothing is decoded yet
    if width <= 0 or height <= 0:
        raise Quarantined(UNDECODABLE, f"invalid size {width}x{height}")
    if width * height > guards.max_pixels:
        pixels = width * height
        detail = f"{width}x{height} = {pixels} pixels exceeds max_pixels={guards.max_pixels} (from the header)"
        raise Quarantined(DECOMPRESSION_BOMB, detail)
    if guards.channels is not None:
        bands = len(image.getbands())
        if bands not in guards.channels:
            raise Quarantined(WRONG_CHANNELS, f"mode {image.mode} has {bands} channels, expected {guards.channels}")
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise Quarantined(DECOMPRESSION_BOMB, str(exc)) from None
    except Exception as exc:
        raise Quarantined(_classify(exc), f"{type(exc).__name__}: {exc}") from None
    return image


# -- built-in transforms ------------------------------------------------------------------------------

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
_OPS = ("convert", "resize", "center_crop", "crop", "to_tensor", "normalize")


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = (int(s) for s in size)
    return height, width


@dataclass(frozen=True)
class ImagePipeline:
    """A list of built-in steps applied in order; callable on a decoded image, returns an array.

    Steps (dicts): ``{"op": "convert", "mode": "RGB"}``, ``{"op": "resize", "size": [h, w],
    "resample": "bilinear"}``, ``{"op": "center_crop", "size": [h, w]}``, ``{"op": "crop", "box":
    [left, top, right, bottom]}``, ``{"op": "to_tensor", "layout": "CHW", "dtype": "uint8"}`` (float
    dtypes scale to [0, 1]), ``{"op": "normalize", "mean": [...], "std": [...]}`` (per channel, CHW).
    Without a ``to_tensor`` step the pipeline ends with a CHW uint8 tensor.
    """

    steps: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        seen_tensor = False
        for step in self.steps:
            op = step.get("op")
            if op not in _OPS:
                raise ValueError(f"unknown transform op {op!r}; built-ins are {_OPS}")
            if op in ("convert", "resize", "center_crop", "crop") and seen_tensor:
                raise ValueError(f"image op {op!r} must come before to_tensor")
            if op == "normalize" and not seen_tensor:
                raise ValueError("normalize must come after to_tensor")
            if op == "resize" and step.get("resample", "bilinear") not in _RESAMPLE:
                raise ValueError(f"unknown resample {step.get('resample')!r}; use one of {sorted(_RESAMPLE)}")
            seen_tensor = seen_tensor or op == "to_tensor"

    @classmethod
    def from_spec(cls, spec: Sequence[Mapping[str, Any]] | ImagePipeline) -> ImagePipeline:
        if isinstance(spec, ImagePipeline):
            return spec
        return cls(tuple(dict(s) for s in spec))

    def to_spec(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.steps]

    def __call__(self, image: Image.Image) -> np.ndarray:
        array: np.ndarray | None = None
        for step in self.steps:
            op = step["op"]
            if op == "convert":
                image = image.convert(step["mode"])
            elif op == "resize":
                height, width = _hw(step["size"])
                image = image.resize((width, height), _RESAMPLE[step.get("resample", "bilinear")])
            elif op == "center_crop":
                height, width = _hw(step["size"])
                left = (image.width - width) // 2
                top = (image.height - height) // 2
                image = image.crop((left, top, left + width, top + height))
            elif op == "crop":
                left, top, right, bottom = (int(v) for v in step["box"])
                image = image.crop((left, top, right, bottom))
            elif op == "to_tensor":
                array = to_tensor(image, step.get("layout", "CHW"), step.get("dtype", "uint8"))
            elif op == "normalize":
                assert array is not None
                mean = np.asarray(step["mean"], dtype=array.dtype).reshape(-1, 1, 1)
                std = np.asarray(step["std"], dtype=array.dtype).reshape(-1, 1, 1)
                array = (array - mean) / std
        return array if array is not None else to_tensor(image, "CHW", "uint8")


def to_tensor(image: Image.Image, layout: str = "CHW", dtype: str = "uint8") -> np.ndarray:
    """Image -> array with an explicit channel axis (grayscale gets C=1)."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if layout == "CHW":
        array = array.transpose(2, 0, 1)
    elif layout != "HWC":
        raise ValueError(f"layout must be CHW or HWC, got {layout!r}")
    target = np.dtype(dtype)
    if target.kind == "f":
        return np.ascontiguousarray(array, dtype=target) / target.type(255.0)
    return np.ascontiguousarray(array.astype(target, copy=False))
