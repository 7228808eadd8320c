"""Small ShardSets for tests, demos and benchmarks, written straight to the store (no Spark needed).

Digits come from scikit-learn's bundled copy (no download). Larger sets are generated deterministically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from airflow_bigdata_ai.shards.dataset import ShardWriter
from airflow_bigdata_ai.shards.refs import Producer, ShardSet
from airflow_bigdata_ai.shards.tensors import encode_tensors, tensor_field

if TYPE_CHECKING:
    from airflow_bigdata_ai.shards.store import ShardStore


def write_image_shardset(
    store: ShardStore,
    dataset_uri: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_shards: int = 4,
    prefix: str = "r",
) -> ShardSet:
    """(N, C, H, W) images + (N,) labels -> a committed ShardSet with record_id / image / label columns."""
    schema = pa.schema(
        [
            pa.field("record_id", pa.string(), nullable=False),
            tensor_field("image", images.shape[1:], images.dtype),
            pa.field("label", pa.int64(), nullable=False),
        ]
    )
    writer = ShardWriter(store, dataset_uri)
    shards = []
    for index, rows in enumerate(np.array_split(np.arange(len(images)), num_shards)):
        table = pa.Table.from_arrays(
            [
                pa.array([f"{prefix}{i:07d}" for i in rows], pa.string()),
                encode_tensors(images[rows]),
                pa.array(labels[rows].astype(np.int64), pa.int64()),
            ],
            schema=schema,
        )
        shards.append(writer.write_table(index, table))
    return writer.commit(shards, schema, Producer(dag_id="sample", task_id="write"))


def write_digits_shardset(store: ShardStore, dataset_uri: str, *, num_shards: int = 4) -> ShardSet:
    """sklearn's 1,797 8x8 digits as float32 1x8x8 in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return write_image_shardset(store, dataset_uri, images, digits.target, num_shards=num_shards, prefix="d")


def synthetic_images(n: int, size: int = 32, num_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic learnable images: a class-dependent bright square plus noise, float32 1xSxS."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = rng.normal(0.0, 0.3, (n, 1, size, size)).astype(np.float32)
    cell = size // 4
    for cls in range(num_classes):
        idx = labels == cls
        row, col = divmod(cls % 16, 4)
        images[idx, 0, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] += 1.0
    return images, labels
