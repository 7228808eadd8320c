"""Deterministic road-scene crops for the smart-transportation example (no downloads needed).

Each image is a camera crop of one road user — car, bus, truck, bicycle or pedestrian — drawn
procedurally with varied pose, colour, lighting, blur and noise, at camera-crop sizes, saved as JPEG
in one sub-folder per class. Image ``i`` depends only on ``(seed, i)``, so any machine regenerates the
same files byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("bicycle", "bus", "car", "pedestrian", "truck")
_PALETTE = [(200, 30, 30), (30, 60, 180), (230, 230, 230), (20, 20, 20), (240, 200, 40), (40, 140, 60), (120, 120, 130)]


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    rng: np.random.Generator

    def colour(self) -> tuple[int, int, int]:
        base = _PALETTE[int(self.rng.integers(len(_PALETTE)))]
        jitter = self.rng.integers(-25, 26, 3)
        return tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(base, jitter, strict=True))  # type: ignore[return-value]


def _background(scene: Scene) -> Image.Image:
    w, h = scene.width, scene.height
    sky = np.linspace(150, 220, h // 2)[:, None] * np.ones((1, w))
    road_level = int(scene.rng.integers(90, 140))
    road = np.full((h - h // 2, w), road_level, dtype=float)
    gray = np.vstack([sky, road])
    rgb = np.stack([gray * 0.85, gray * 0.9, gray], axis=-1).astype(np.uint8)
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    lane_y = int(h * scene.rng.uniform(0.75, 0.9))
    for x in range(int(scene.rng.integers(0, 12)), w, 24):
        draw.rectangle([x, lane_y, x + 12, lane_y + 2], fill=(235, 235, 210))
    return img


def _wheel(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(15, 15, 15))
    draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=(150, 150, 150))


def _car(draw: ImageDraw.ImageDraw, s: Scene, x0: float, y0: float, w: float, h: float) -> None:
    body = s.colour()
    draw.rounded_rectangle([x0, y0 + h * 0.45, x0 + w, y0 + h * 0.85], radius=h * 0.1, fill=body)
    draw.polygon(
        [
            (x0 + w * 0.2, y0 + h * 0.45),
            (x0 + w * 0.32, y0 + h * 0.15),
            (x0 + w * 0.68, y0 + h * 0.15),
            (x0 + w * 0.82, y0 + h * 0.45),
        ],
        fill=body,
    )
    draw.polygon(
        [
            (x0 + w * 0.27, y0 + h * 0.43),
            (x0 + w * 0.35, y0 + h * 0.2),
            (x0 + w * 0.65, y0 + h * 0.2),
            (x0 + w * 0.76, y0 + h * 0.43),
        ],
        fill=(170, 200, 230),
    )
    for cx in (x0 + w * 0.22, x0 + w * 0.78):
        _wheel(draw, cx, y0 + h * 0.85, h * 0.14)


def _bus(draw: ImageDraw.ImageDraw, s: Scene, x0: float, y0: float, w: float, h: float) -> None:
    draw.rounded_rectangle([x0, y0 + h * 0.05, x0 + w, y0 + h * 0.85], radius=h * 0.06, fill=s.colour())
    n = 5
    for i in range(n):
        wx = x0 + w * (0.06 + i * 0.18)
        draw.rectangle([wx, y0 + h * 0.15, wx + w * 0.13, y0 + h * 0.42], fill=(170, 200, 230))
    draw.rectangle([x0 + w * 0.9, y0 + h * 0.45, x0 + w * 0.97, y0 + h * 0.8], fill=(60, 60, 60))
    for cx in (x0 + w * 0.18, x0 + w * 0.82):
        _wheel(draw, cx, y0 + h * 0.86, h * 0.1)


def _truck(draw: ImageDraw.ImageDraw, s: Scene, x0: float, y0: float, w: float, h: float) -> None:
    draw.rectangle([x0, y0 + h * 0.05, x0 + w * 0.68, y0 + h * 0.8], fill=s.colour())  # cargo box
    cab = s.colour()
    draw.rectangle([x0 + w * 0.7, y0 + h * 0.35, x0 + w, y0 + h * 0.8], fill=cab)
    draw.rectangle([x0 + w * 0.78, y0 + h * 0.42, x0 + w * 0.95, y0 + h * 0.58], fill=(170, 200, 230))
    for cx in (x0 + w * 0.15, x0 + w * 0.32, x0 + w * 0.85):
        _wheel(draw, cx, y0 + h * 0.84, h * 0.12)


def _bicycle(draw: ImageDraw.ImageDraw, s: Scene, x0: float, y0: float, w: float, h: float) -> None:
    r = min(w * 0.22, h * 0.25)
    frame = s.colour()
    back, front, wy = (x0 + w * 0.25, y0 + h * 0.75), (x0 + w * 0.75, y0 + h * 0.75), y0 + h * 0.75
    for cx, cy in (back, front):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(15, 15, 15), width=max(2, int(r / 5)))
    seat, bar = (x0 + w * 0.42, y0 + h * 0.45), (x0 + w * 0.7, y0 + h * 0.42)
    width = max(2, int(r / 4))
    draw.line([back, (x0 + w * 0.5, wy), seat, back], fill=frame, width=width)
    draw.line([(x0 + w * 0.5, wy), bar, front], fill=frame, width=width)
    draw.ellipse([seat[0] - r * 0.3, seat[1] - r * 1.6, seat[0] + r * 0.3, seat[1] - r * 1.0], fill=(230, 190, 160))
    draw.line([seat, (seat[0] + r * 0.2, seat[1] - r * 1.0)], fill=s.colour(), width=width * 2)


def _pedestrian(draw: ImageDraw.ImageDraw, s: Scene, x0: float, y0: float, w: float, h: float) -> None:
    cx = x0 + w / 2
    head = h * 0.09
    draw.ellipse([cx - head, y0 + h * 0.05, cx + head, y0 + h * 0.05 + 2 * head], fill=(230, 190, 160))
    draw.rounded_rectangle([cx - w * 0.16, y0 + h * 0.25, cx + w * 0.16, y0 + h * 0.6], radius=4, fill=s.colour())
    legs = s.colour()
    stride = w * float(s.rng.uniform(0.02, 0.15))
    lw = max(2, int(w * 0.08))
    draw.line([(cx - w * 0.06, y0 + h * 0.6), (cx - w * 0.06 - stride, y0 + h * 0.95)], fill=legs, width=lw)
    draw.line([(cx + w * 0.06, y0 + h * 0.6), (cx + w * 0.06 + stride, y0 + h * 0.95)], fill=legs, width=lw)


_DRAW: dict[str, tuple[Callable[..., None], float]] = {  # painter, typical width/height of the object
    "bicycle": (_bicycle, 1.5),
    "bus": (_bus, 2.4),
    "car": (_car, 2.0),
    "pedestrian": (_pedestrian, 0.45),
    "truck": (_truck, 2.2),
}


def render(index: int, seed: int = 0) -> tuple[Image.Image, str]:
    """Image ``index`` of the set and its class; pure function of ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    label = CLASSES[index % len(CLASSES)]
    painter, aspect = _DRAW[label]
    height = int(rng.integers(72, 161))
    width = int(np.clip(height * aspect * rng.uniform(0.8, 1.25), 48, 320))
    scene = Scene(width, height, rng)
    img = _background(scene)
    draw = ImageDraw.Draw(img)
    scale = rng.uniform(0.7, 0.95)
    ow, oh = width * scale, height * scale
    x0 = rng.uniform(0, width - ow)
    y0 = rng.uniform(0, height - oh)
    painter(draw, scene, x0, y0, ow, oh)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # pose: facing left or right
    img = img.rotate(float(rng.uniform(-6, 6)), resample=Image.Resampling.BILINEAR, fillcolor=(120, 120, 120))
    arr = np.asarray(img).astype(np.float32) * rng.uniform(0.55, 1.35)  # lighting
    arr += rng.normal(0, rng.uniform(2, 12), arr.shape)  # sensor noise
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    blur = float(rng.uniform(0, 1.4))
    if blur > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return img, label


def write_traffic_images(out_dir: str, count: int = 1000, seed: int = 0, quality: int = 90) -> dict[str, int]:
    """Write ``count`` JPEG crops into ``out_dir/<class>/``; returns images per class. Idempotent."""
    counts = dict.fromkeys(CLASSES, 0)
    for label in CLASSES:
        os.makedirs(os.path.join(out_dir, label), exist_ok=True)
    for index in range(count):
        img, label = render(index, seed)
        path = os.path.join(out_dir, label, f"{label}_{index:06d}.jpg")
        if not os.path.exists(path):
            tmp = path + ".tmp"
            img.save(tmp, format="JPEG", quality=quality)
            os.replace(tmp, path)
        counts[label] += 1
    return counts
