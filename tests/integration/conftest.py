"""Integration tests share the session fixtures ``shared_cluster`` and ``attached``.

They are registered once, in ``tests/conftest.py`` (so system tests share the same cluster); this module
only re-exports the process bookkeeping helpers that integration tests import from here.
"""

from tests.support.cluster_fixtures import (
    SharedCluster,
    assert_nothing_left,
    cluster_processes,
    service_record,
    session_processes,
    still_alive,
    subprocess_env,
)

__all__ = [
    "SharedCluster",
    "assert_nothing_left",
    "cluster_processes",
    "service_record",
    "session_processes",
    "still_alive",
    "subprocess_env",
]
