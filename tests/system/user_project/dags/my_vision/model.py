"""My model: built by the Ray Train workers, and again by inference to load the trained weights."""

from __future__ import annotations

from torch import nn

HIDDEN = 16  # width of the classifier's hidden layer


def make_model(num_classes: int = 3, width: int = 8) -> nn.Module:
    """A small CNN for any image size; ``num_classes`` and ``width`` come from the DAG's ``factory_kwargs``."""
    return nn.Sequential(
        nn.Conv2d(3, width, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, width * 2, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width * 2, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, num_classes),
    )
