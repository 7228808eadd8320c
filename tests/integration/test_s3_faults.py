"""S3 faults (503 SlowDown, reset connections, stalls) between the stores and a real S3 API server.

boto3 talks real HTTP to moto on loopback through ``tests/support/s3faults.py``, a proxy that answers the
requests a test arms with a fault. What must hold: transient faults are retried and the result is exact;
persistent ones fail with :class:`S3Unavailable` naming the object and the endpoint, within the configured
timeouts; and the preprocessing's reading of source images never turns an S3 fault into a quarantined
("corrupt") record. No cluster: the executor-side function (``PreprocessJob.build_shard``) runs in this process.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from airflow_bigdata_ai.preprocess import preprocess
from airflow_bigdata_ai.preprocess.core import prepare
from airflow_bigdata_ai.shards import S3Options
from airflow_bigdata_ai.shards.store import S3Store, S3Unavailable
from tests.support.s3faults import S3FaultProxy, s3_fault_proxy
from tests.support.s3server import s3_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

READ_TIMEOUT_S = 1.0
"""Short, so a stall costs a second per attempt; the proxy stalls for STALL_S."""
STALL_S = 4.0
IMAGES = 6


def _png(index: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (index * 30, 60, 90)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server() -> Iterator[S3Options]:
    with s3_server("data") as options:
        seed = S3Store("s3://data", options)
        seed.write_bytes("s3://data/blob.bin", bytes(range(256)) * 4096)  # 1 MiB
        for index in range(IMAGES):
            seed.write_bytes(f"s3://data/images/img_{index}.png", _png(index))
        yield options


@pytest.fixture
def proxy(server: S3Options) -> Iterator[S3FaultProxy]:
    with s3_fault_proxy(server) as running:
        yield running


@pytest.fixture
def options(proxy: S3FaultProxy, server: S3Options) -> S3Options:
    """The test's client settings: through the proxy, short timeouts, 4 attempts."""
    return replace(proxy.options(server), read_timeout_s=READ_TIMEOUT_S, connect_timeout_s=1.0, max_attempts=4)


# -- (a) the store retries transient faults ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["slowdown", "reset", "reset_body", "stall"])
def test_store_retries_transient_fault_and_reads_exact_bytes(proxy: S3FaultProxy, options: S3Options, fault: str):
    store = S3Store("s3://data", options)
    expected = bytes(range(256)) * 4096
    rule = proxy.inject(fault, r"/blob\.bin", times=2, stall_s=STALL_S)
    start = time.monotonic()
    assert store.read_bytes("s3://data/blob.bin") == expected
    assert rule.fired == 2 and proxy.requests("GET", r"/blob\.bin") == 3
    if fault == "stall":  # two read timeouts of 1 s (measured 2.2 s in all), not two 4 s stalls
        assert time.monotonic() - start < STALL_S


def test_store_retries_writes_listings_and_heads(proxy: S3FaultProxy, options: S3Options):
    store = S3Store("s3://data", options)
    proxy.inject("slowdown", r"/written\.bin", method="PUT", times=2)
    proxy.inject("reset", r"list-type=2", method="GET", times=1)
    proxy.inject("slowdown", r"/written\.bin", method="HEAD", times=1)
    store.write_bytes("s3://data/out/written.bin", b"payload")
    assert [u.name for u in store.list("s3://data/out")] == ["written.bin"]
    assert store.exists("s3://data/out/written.bin")
    assert proxy.requests("PUT", r"/written\.bin") == 3


# -- (b) a persistent fault fails clearly, in bounded time -----------------------------------------------


@pytest.mark.parametrize("fault", ["slowdown", "reset", "reset_body", "stall"])
def test_persistent_fault_raises_s3_unavailable_naming_key_and_endpoint(
    proxy: S3FaultProxy, options: S3Options, fault: str
):
    store = S3Store("s3://data", options)
    proxy.inject(fault, r"/blob\.bin", times=None, stall_s=STALL_S)
    start = time.monotonic()
    with pytest.raises(S3Unavailable) as info:
        store.read_bytes("s3://data/blob.bin")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "s3://data/blob.bin" in message and options.endpoint_url in message and "4 attempts" in message
    # bounded: 4 attempts of at most connect + read timeout each, plus backoff (botocore's is capped at 20 s)
    assert elapsed < 4 * (options.connect_timeout_s + READ_TIMEOUT_S) + 10, elapsed


def test_missing_object_is_not_called_unavailable(options: S3Options):
    """``NoSuchKey`` is an answer, not an outage: callers (the labels file check) map it themselves."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        S3Store("s3://data", options).read_bytes("s3://data/nope.bin")
    assert not isinstance(info.value, S3Unavailable)


# -- (c) the preprocessing's record reading never quarantines an S3 fault -------------------------------


def _job(options: S3Options, tmp_path: Path):  # type: ignore[no-untyped-def]
    prepared = prepare(
        {"uri": "s3://data/images", "labels": "none"}, f"file://{tmp_path}/out/dag/prep/ds=2026-11-30",
        source_store=S3Store("s3://data/images", options), transform=[{"op": "to_tensor"}],
    )  # fmt: skip
    units = prepared.job.list_units(rows_per_shard=512).to_pylist()
    assert len(units) == IMAGES
    return prepared.job, units


@pytest.mark.parametrize("read_ahead", [1, 8])
def test_transient_faults_while_reading_records_are_retried_not_quarantined(
    proxy: S3FaultProxy, options: S3Options, tmp_path: Path, read_ahead: int
):
    job, units = _job(options, tmp_path)
    job.read_ahead = read_ahead  # 8: the threaded prefetch used for object stores
    proxy.inject("slowdown", r"img_1\.png", times=2)
    proxy.inject("reset", r"img_2\.png", times=1)
    proxy.inject("reset_body", r"img_3\.png", times=2)
    proxy.inject("stall", r"img_4\.png", times=1, stall_s=STALL_S)
    built = job.build_shard(0, units)
    assert built.bad == [] and built.inputs == IMAGES
    assert built.columns is not None and len(built.columns) == IMAGES


@pytest.mark.parametrize("fault", ["slowdown", "reset_body"])
def test_persistent_fault_while_reading_records_fails_the_shard_not_a_record(
    proxy: S3FaultProxy, options: S3Options, tmp_path: Path, fault: str
):
    job, units = _job(options, tmp_path)
    proxy.inject(fault, r"img_3\.png", times=None)
    with pytest.raises(S3Unavailable, match=r"s3://data/images/img_3\.png"):
        job.build_shard(0, units)


def test_preprocess_run_with_a_dead_object_raises_and_commits_nothing(
    proxy: S3FaultProxy, options: S3Options, tmp_path: Path
):
    """The whole in-process run: an outage is an error for Airflow to retry, not a 1-in-6 'bad record'."""
    proxy.inject("reset_body", r"img_5\.png", times=None)
    output = f"file://{tmp_path}/out/dag/prep/ds=2026-11-30"
    with pytest.raises(S3Unavailable):
        preprocess(
            {"uri": "s3://data/images", "labels": "none"}, output, transform=[{"op": "to_tensor"}],
            source_store=S3Store("s3://data/images", options), max_bad_fraction=1.0, progress=None,
        )  # fmt: skip
    assert not list((tmp_path / "out").rglob("_manifests/*")), "nothing is committed"
    proxy.clear()
    ref = preprocess(
        {"uri": "s3://data/images", "labels": "none"}, output, transform=[{"op": "to_tensor"}],
        source_store=S3Store("s3://data/images", options), max_bad_fraction=0.0, progress=None,
    )  # fmt: skip
    assert ref.stats["ok"] == IMAGES and ref.stats["quarantined"] == 0
