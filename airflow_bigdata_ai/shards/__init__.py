"""Shard references (what XCom carries) and the shard store (where the data lives). No Airflow imports."""

from airflow_bigdata_ai.shards.dataset import (
    Manifest,
    ShardInfo,
    ShardWriter,
    current_shardset,
    iter_tables,
    load_manifest,
    output_uri,
    read_shard,
    read_table,
    sha256_hex,
    shard_uris,
)
from airflow_bigdata_ai.shards.errors import ChecksumMismatch, CommitConflict, InvalidReference, UnsafePath
from airflow_bigdata_ai.shards.ray_source import read_ray_dataset
from airflow_bigdata_ai.shards.refs import ModelRef, Producer, ShardSet
from airflow_bigdata_ai.shards.store import LocalStore, S3Options, S3Store, S3Unavailable, ShardStore, open_store
from airflow_bigdata_ai.shards.tensors import decode_tensors, encode_tensors, model_input, tensor_field, tensor_spec

__all__ = [
    "ChecksumMismatch",
    "CommitConflict",
    "InvalidReference",
    "LocalStore",
    "Manifest",
    "ModelRef",
    "Producer",
    "S3Options",
    "S3Store",
    "S3Unavailable",
    "ShardInfo",
    "ShardSet",
    "ShardStore",
    "ShardWriter",
    "UnsafePath",
    "current_shardset",
    "decode_tensors",
    "encode_tensors",
    "iter_tables",
    "load_manifest",
    "model_input",
    "open_store",
    "output_uri",
    "read_ray_dataset",
    "read_shard",
    "read_table",
    "sha256_hex",
    "shard_uris",
    "tensor_field",
    "tensor_spec",
]
