"""A compact CNN for road-user camera crops (3x48x48): car, bus, truck, bicycle, pedestrian.

Sized for a 2-core machine: a few epochs on a thousand crops train in well under a minute, and the
convolutions are large enough that OpenVINO's bf16/int8 paths have real work to accelerate.
"""

from __future__ import annotations

from torch import nn


def make_traffic_cnn(num_classes: int = 5, width: int = 16, size: int = 48) -> nn.Module:
    """Three conv blocks (conv-BN-ReLU-pool) and a linear head; input (N, 3, size, size)."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, width),
        *block(width, width * 2),
        *block(width * 2, width * 4),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(width * 4 * (size // 8) ** 2, num_classes),
    )
