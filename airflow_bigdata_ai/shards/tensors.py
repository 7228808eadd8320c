"""Tensors in Parquet: one ``binary`` cell per record, shape and dtype in the field's schema metadata.

Plain binary columns survive every engine we use (Spark Arrow UDFs, Ray Data, pyarrow) unchanged,
and the metadata lets any reader rebuild the exact array without guessing.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

SHAPE_KEY = b"tensor_shape"
DTYPE_KEY = b"tensor_dtype"
ALLOWED_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")


def tensor_field(name: str, shape: tuple[int, ...] | list[int], dtype: str | np.dtype[Any]) -> pa.Field:
    dtype_name = np.dtype(dtype).name
    if dtype_name not in ALLOWED_DTYPES:
        raise ValueError(f"tensor dtype {dtype_name!r} not supported; use one of {ALLOWED_DTYPES}")
    return pa.field(
        name,
        pa.binary(),
        nullable=False,
        metadata={SHAPE_KEY: json.dumps([int(d) for d in shape]).encode(), DTYPE_KEY: dtype_name.encode()},
    )


def tensor_spec(field: pa.Field) -> tuple[tuple[int, ...], np.dtype[Any]] | None:
    """(shape, dtype) of a tensor column, or None for an ordinary column."""
    meta = field.metadata or {}
    if SHAPE_KEY not in meta or DTYPE_KEY not in meta:
        return None
    dtype_name = meta[DTYPE_KEY].decode()
    if dtype_name not in ALLOWED_DTYPES:
        raise ValueError(f"column {field.name!r} declares unsupported tensor dtype {dtype_name!r}")
    shape = tuple(int(d) for d in json.loads(meta[SHAPE_KEY]))
    return shape, np.dtype(dtype_name)


def encode_tensors(batch: np.ndarray) -> pa.Array:
    """(N, *shape) array -> binary array of N cells (C-order bytes)."""
    batch = np.ascontiguousarray(batch)
    n = batch.shape[0]
    width = batch[0].nbytes if n else 0
    flat = batch.reshape(n, -1).view(np.uint8).reshape(-1) if n else np.empty(0, np.uint8)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32) if n else np.zeros(1, np.int32)
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(flat)])


def decode_tensors(cells: Any, shape: tuple[int, ...], dtype: np.dtype[Any] | str) -> np.ndarray:
    """Binary cells (pyarrow array/chunked array, or a sequence of bytes) -> (N, *shape) array."""
    dtype = np.dtype(dtype)
    if isinstance(cells, pa.ChunkedArray):
        cells = cells.combine_chunks()
    if isinstance(cells, pa.Array):
        values = cells.buffers()[2]
        offsets = np.frombuffer(cells.buffers()[1], dtype=np.int32)[cells.offset : cells.offset + len(cells) + 1]
        raw = np.frombuffer(values, dtype=np.uint8)[offsets[0] : offsets[-1]] if len(cells) else b""
        data = np.frombuffer(bytes(raw), dtype=dtype) if len(cells) else np.empty(0, dtype)
    else:
        data = np.frombuffer(b"".join(bytes(c) for c in cells), dtype=dtype)
    expected = int(np.prod(shape)) if shape else 1
    count = data.size // expected if expected else 0
    if data.size != count * expected:
        raise ValueError(f"tensor bytes do not divide into shape {shape} of {dtype}")
    return data.reshape((count, *shape))


def model_input(array: np.ndarray) -> np.ndarray:
    """Decoded shard tensors -> what every model of this provider is fed: float32, uint8 pixels scaled to [0, 1].

    The one rule for training and inference alike: uint8 shards (4x smaller than float32) are normalised by
    the consumer, so a model trained on them predicts the same shards correctly.
    """
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    return array.astype(np.float32, copy=False)


def schema_summary(schema: pa.Schema) -> dict[str, str]:
    """Column -> type string for the ShardSet reference; tensors read ``tensor<float32>[1,8,8]``."""
    summary: dict[str, str] = {}
    for field in schema:
        spec = tensor_spec(field)
        if spec is None:
            summary[field.name] = str(field.type)
        else:
            shape, dtype = spec
            summary[field.name] = f"tensor<{dtype.name}>[{','.join(str(d) for d in shape)}]"
    return summary
