"""A writer killed with SIGKILL halfway publishes nothing; the rerun publishes one complete manifest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from airflow_bigdata_ai.shards import current_shardset, load_manifest, open_store, output_uri, read_table
from tests.unit.shard_helpers import write_shardset

WRITER = textwrap.dedent(
    """
    import sys, time
    from airflow_bigdata_ai.shards import ShardWriter, open_store
    from tests.unit.shard_helpers import SCHEMA, shard_table
    store = open_store(sys.argv[1])
    writer = ShardWriter(store, sys.argv[2])
    infos = []
    for i in range(40):
        infos.append(writer.write_table(i, shard_table(i, 50)))
        print(i, flush=True)
        time.sleep(0.05)
    writer.commit(infos, SCHEMA)
    """
)


def _kill_writer_halfway(root: str, dataset: str) -> None:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, root, dataset], stdout=subprocess.PIPE, text=True, cwd=repo)
    assert proc.stdout is not None
    for line in proc.stdout:
        if int(line) >= 10:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_halfway_publishes_nothing_and_rerun_publishes_one_manifest(tmp_path):
    root = str(tmp_path / "root")
    store = open_store(root)
    dataset = output_uri(root, "dag", "killed", "2026-11-24")
    _kill_writer_halfway(root, dataset)
    assert any("/attempts/" in u.path for u in store.list(dataset)), "the writer did stage shards"
    assert current_shardset(store, dataset) is None, "nothing may be published by a killed writer"

    ref = write_shardset(store, dataset, shards=6, rows=7)
    assert current_shardset(store, dataset) == ref
    manifests = [u for u in store.list(dataset) if "/_manifests/" in u.path]
    assert len(manifests) == 1
    assert read_table(store, ref).num_rows == 42
    staged = {u.path.split("/attempts/")[1].split("/")[0] for u in store.list(dataset) if "/attempts/" in u.path}
    assert staged == {load_manifest(store, ref).attempt_id}, "the killed attempt's staging is cleaned up"


def test_sigkill_during_rerun_keeps_the_previous_version_readable(tmp_path):
    root = str(tmp_path / "root")
    store = open_store(root)
    dataset = output_uri(root, "dag", "killed", "2026-11-24")
    before = write_shardset(store, dataset, shards=2, rows=3)
    _kill_writer_halfway(root, dataset)
    assert current_shardset(store, dataset) == before
    assert read_table(store, before).num_rows == 6
