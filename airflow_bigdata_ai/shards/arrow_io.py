"""Arrow readers over bytes held in memory, safe at interpreter exit.

``pq.read_table(pa.BufferReader(data))`` wraps the Python ``bytes`` in a buffer that Arrow's thread pool may
release after the call returned. If that last release happens while Python is finalizing, the pool thread
needs the GIL, is ended by ``pthread_exit`` inside a destructor and the process aborts with "terminate
called without an active exception" (exit -6) after its work is done: 6 in 300 runs of a script that reads
eight shards and exits (pyarrow 26, Python 3.11), once in CI in the user's notebook snippet. A copy into
Arrow's own memory needs no GIL to be freed; the memcpy is small next to the Parquet decode.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from airflow_bigdata_ai.shards.store import BytesLike


def arrow_buffer(data: BytesLike) -> pa.Buffer:
    """The bytes copied into an Arrow-allocated buffer (nothing in it refers back to a Python object)."""
    buffer = pa.allocate_buffer(len(data))
    memoryview(buffer).cast("B")[:] = memoryview(data).cast("B")
    return buffer


def parquet_table(data: BytesLike, columns: Sequence[str] | None = None) -> pa.Table:
    """A whole Parquet file held in memory, as a table."""
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(arrow_buffer(data)), columns=list(columns) if columns else None)
