"""A really trained digits model and real digit shard sets for the inference tests (seconds on 2 cores)."""

from __future__ import annotations

import hashlib
import io
import itertools
from functools import lru_cache

import numpy as np
import pyarrow as pa

from airflow_bigdata_ai.shards import ModelRef, ShardSet, ShardStore, ShardWriter, encode_tensors, tensor_field
from airflow_bigdata_ai.shards.refs import Producer

FACTORY = "airflow_bigdata_ai.examples.models.digits:make_digits_cnn"
FACTORY_KWARGS = {"channels": 16}


def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 real digits as float32 [N, 1, 8, 8] in [0, 1] (what preprocess' digits_float makes)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[:, None], data.target.astype(np.int64)


@lru_cache(maxsize=1)
def trained_state_bytes(epochs: int = 5) -> bytes:
    """Train the CNN on the first 1,500 digits (deterministic); returns the saved state dict."""
    import torch

    from airflow_bigdata_ai.examples.models.digits import make_digits_cnn

    torch.manual_seed(0)
    images, labels = digits()
    x, y = torch.from_numpy(images[:1500]), torch.from_numpy(labels[:1500])
    model = make_digits_cnn(**FACTORY_KWARGS)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(64):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimiser.step()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def save_model(store: ShardStore, weights_uri: str) -> ModelRef:
    data = trained_state_bytes()
    store.write_bytes(weights_uri, data)
    return ModelRef(
        weights_uri=weights_uri,
        weights_sha256=hashlib.sha256(data).hexdigest(),
        model_factory=FACTORY,
        input_shape=[1, 8, 8],
        factory_kwargs=dict(FACTORY_KWARGS),
    )


def schema(with_label: bool = True) -> pa.Schema:
    fields = [pa.field("record_id", pa.string()), tensor_field("image", (1, 8, 8), "float32")]
    if with_label:
        fields.append(pa.field("label", pa.int64()))
    return pa.schema(fields)


def write_digits(
    store: ShardStore, dataset_uri: str, shards: int = 4, with_label: bool = True, limit: int | None = None
) -> ShardSet:
    """All digits (or the first ``limit``) split into ``shards`` shards, record ids ``d0000``..."""
    images, labels = digits()
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    writer = ShardWriter(store, dataset_uri)
    infos = []
    bounds = np.linspace(0, len(images), shards + 1).astype(int)
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        columns = {"record_id": [f"d{j:04d}" for j in range(lo, hi)], "image": encode_tensors(images[lo:hi])}
        if with_label:
            columns["label"] = pa.array(labels[lo:hi])
        infos.append(writer.write_table(i, pa.table(columns, schema=schema(with_label))))
    return writer.commit(infos, schema(with_label), Producer("dag", "digits", "run", None, 1))


def torch_logits(ref: ModelRef, store: ShardStore, images: np.ndarray) -> np.ndarray:
    import torch

    from airflow_bigdata_ai.infer.model import load_verified_model

    model = load_verified_model(ref, store)
    with torch.no_grad():
        return model(torch.from_numpy(np.array(images, dtype=np.float32))).numpy()
