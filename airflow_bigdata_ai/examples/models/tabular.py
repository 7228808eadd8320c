"""A small MLP for tabular features (the warehouse example: scikit-learn's breast-cancer table)."""

from __future__ import annotations

from torch import nn


def make_tabular_mlp(in_features: int = 30, num_classes: int = 2, hidden: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )
