"""An S3 API server on loopback (moto's ThreadedMotoServer) for tests that talk real HTTP to S3."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from airflow_bigdata_ai.shards import S3Options


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def s3_server(*buckets: str) -> Iterator[S3Options]:
    """Start moto on 127.0.0.1, create ``buckets``, yield options that reach it, stop it afterwards."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = S3Options(
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        import boto3

        client = boto3.client("s3", **options.client_kwargs())
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield options
    finally:
        server.stop()
