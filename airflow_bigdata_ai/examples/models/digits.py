"""A small CNN for 1x8x8 digit images: big enough for >= 95% on digits, small enough for a 2-core CI box."""

from __future__ import annotations

from torch import nn


def make_digits_cnn(num_classes: int = 10, channels: int = 32, in_channels: int = 1) -> nn.Module:
    """Two 3x3 conv blocks and a linear head; input (N, in_channels, 8, 8), output logits (N, num_classes)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels * 2, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Linear(channels * 2 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def make_wide_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 64, size: int = 32) -> nn.Module:
    """A heavier CNN for benchmarks on larger generated images (size divisible by 4)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, width * 2, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(width * 2 * (size // 4) ** 2, num_classes),
    )


__all__ = ["make_digits_cnn", "make_wide_cnn"]
