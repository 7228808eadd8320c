"""Property-based test of the shard commit protocol (Hypothesis ``RuleBasedStateMachine``).

Hypothesis interleaves the steps of several attempts at one output on a real local store: start an
attempt (a second one of the same input is a concurrent attempt: a zombie and its retry), write a shard,
crash (the attempt stops, leaving staged shards and a temp file), publish (finish and commit), rerun (a
whole attempt at once), abort and cleanup. After every step it checks what the protocol promises:

* at most one current manifest per output, and it is the one the model expects (the last successful
  publish); a publish succeeds exactly when no other attempt published since the attempt started;
* the published manifest references only existing shards whose checksums match;
* cleanup never deletes a referenced shard, nor a shard of an attempt that may still publish, and it
  removes everything of the attempts that can no longer publish (staging and temp files included);
* reruns of the same input give the same shard checksums.

Sequential steps model concurrency exactly here: what matters is the order in which attempts reach the
store, and Hypothesis explores those orders (and shrinks a failure to the shortest one).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import pyarrow as pa
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from airflow_bigdata_ai.shards import (
    CommitConflict,
    ShardInfo,
    ShardSet,
    ShardWriter,
    current_shardset,
    load_manifest,
    open_store,
    output_uri,
    read_table,
)
from airflow_bigdata_ai.shards.commits import cleanup_output
from airflow_bigdata_ai.shards.store import TEMP_PREFIX
from tests.unit.shard_helpers import SCHEMA, shard_table

SHARDS = 3
INPUTS = 2
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
"""Memory-backed when the machine has it: the store fsyncs every file and directory it writes, which on a
loaded disk costs more than the whole protocol; the protocol's logic is the same on either."""


def input_table(input_id: int, index: int) -> pa.Table:
    """Shard ``index`` of input ``input_id``: deterministic, so a rerun must reproduce its bytes."""
    return shard_table(10 * input_id + index, rows=2 + input_id)


@dataclass
class Attempt:
    """The model's view of one live attempt."""

    writer: ShardWriter
    input_id: int
    base: int  # the generation published when it started
    written: dict[int, ShardInfo] = field(default_factory=dict)


class CommitProtocol(RuleBasedStateMachine):
    """Model: the generation (number of successful publishes), the published reference and its input,
    the live attempts, and which attempts may still have files in the store."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="commit-protocol-", dir=FAST_TMP)
        self.store = open_store(f"file://{self.tmp}")
        self.dataset = output_uri(str(self.store.root), "dag", "task", "2026-11-24")
        self.base_path = self.store.resolve(self.dataset).path
        self.generation = 0
        self.published: ShardSet | None = None
        self.published_input: int | None = None
        self.live: dict[str, Attempt] = {}
        self.crashed: dict[str, int] = {}  # attempt id -> the generation it started from
        self.expected: dict[tuple[int, int], str] = {}  # (input, shard index) -> sha256 of its first write

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------------
    def _files(self) -> list[str]:
        """Every file of the output, relative to its directory."""
        return [u.path[len(self.base_path) + 1 :] for u in self.store.list(self.dataset)]

    def _files_of(self, attempt_id: str) -> list[str]:
        return [p for p in self._files() if attempt_id in p]

    def _check_rerun(self, input_id: int, index: int, info: ShardInfo) -> None:
        known = self.expected.setdefault((input_id, index), info.sha256)
        assert info.sha256 == known, f"input {input_id} shard {index}: a rerun wrote different bytes"

    def _write(self, attempt: Attempt, index: int) -> bool:
        """Write one shard; False when the attempt learnt it was superseded (it then aborts, as callers do)."""
        try:
            info = attempt.writer.write_table(index, input_table(attempt.input_id, index))
        except CommitConflict:
            assert attempt.base < self.generation, "a write of a current attempt was refused"
            event("write: superseded attempt refused")
            self._drop(attempt, abort=True)
            return False
        self._check_rerun(attempt.input_id, index, info)
        attempt.written[index] = info
        return True

    def _drop(self, attempt: Attempt, *, abort: bool) -> None:
        self.live.pop(attempt.writer.attempt_id, None)
        if abort:
            attempt.writer.abort()
            assert not self._files_of(attempt.writer.attempt_id), "an aborted attempt left files"

    def _doomed(self, base: int) -> bool:
        return base < self.generation

    def _after_cleanup(self) -> None:
        """Whatever can no longer publish is gone; what may still publish is untouched (the invariants)."""
        for attempt_id, base in list(self.crashed.items()):
            if self._doomed(base):
                assert not self._files_of(attempt_id), f"cleanup left files of dead attempt {attempt_id}"
                del self.crashed[attempt_id]
        for attempt in self.live.values():
            if self._doomed(attempt.base):
                assert not self._files_of(attempt.writer.attempt_id), "cleanup left a superseded attempt's files"
                attempt.written.clear()  # its staging is gone: it can only lose now

    # -- rules -------------------------------------------------------------------------------------
    def _pick(self, data: st.DataObject) -> Attempt:
        """One live attempt, chosen by position in start order (ids are random, positions replay)."""
        return self.live[data.draw(st.sampled_from(list(self.live)), label="attempt")]

    @initialize(input_id=st.integers(0, INPUTS - 1), live=st.integers(0, 2))
    def zombie_and_retry(self, input_id: int, live: int) -> None:
        """Most examples begin with attempts of one input already running side by side."""
        for _ in range(live):
            self._start(input_id)

    @rule(input_id=st.integers(0, INPUTS - 1))
    def start_attempt(self, input_id: int) -> None:
        self._start(input_id)

    def _start(self, input_id: int) -> Attempt:
        writer = ShardWriter(self.store, self.dataset)
        assert writer.base_generation == self.generation
        attempt = self.live[writer.attempt_id] = Attempt(writer, input_id, self.generation)
        return attempt

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def concurrent_attempt(self, data: st.DataObject) -> None:
        """A second live attempt of the same task and input (the retry of a zombie)."""
        self._start(self._pick(data).input_id)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), index=st.integers(0, SHARDS - 1))
    def write_shard(self, data: st.DataObject, index: int) -> None:
        self._write(self._pick(data), index)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), partial=st.binary(max_size=64))
    def crash(self, data: st.DataObject, partial: bytes) -> None:
        """The attempt's process dies mid-write: staged shards plus a temp file stay behind."""
        attempt = self._pick(data)
        attempt_id = attempt.writer.attempt_id
        self._drop(attempt, abort=False)
        staging = os.path.join(self.base_path, "attempts", attempt_id)
        os.makedirs(staging, exist_ok=True)
        fd, _ = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=staging)
        with os.fdopen(fd, "wb") as handle:
            handle.write(partial)
        self.crashed[attempt_id] = attempt.base

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        self._drop(self._pick(data), abort=True)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def publish(self, data: st.DataObject) -> None:
        self._publish(self._pick(data))

    def _publish(self, attempt: Attempt) -> None:
        """Finish the attempt's shards and commit: it wins exactly when nobody published since it started."""
        for index in range(SHARDS):
            if index not in attempt.written and not self._write(attempt, index):
                return
        doomed = self._doomed(attempt.base)
        try:
            ref = attempt.writer.commit(list(attempt.written.values()), SCHEMA)
        except CommitConflict as exc:
            assert doomed, f"a current attempt lost its commit: {exc}"
            assert "lost the commit" in str(exc)
            assert not self._files_of(attempt.writer.attempt_id), "the loser left staging, temp files or manifest"
            event("publish: lost to a concurrent attempt")
            self._drop(attempt, abort=False)
            return
        assert not doomed, "an attempt superseded while it ran published over the newer output"
        event(f"publish: won, {len(self.live) - 1} other attempt(s) live")
        self._drop(attempt, abort=False)
        self.generation += 1
        self.published, self.published_input = ref, attempt.input_id
        self._after_cleanup()

    @rule(input_id=st.integers(0, INPUTS - 1))
    def rerun(self, input_id: int) -> None:
        """A whole attempt of ``input_id`` between two steps: it must publish and reproduce the checksums."""
        self._publish(self._start(input_id))
        assert self.published_input == input_id

    @rule()
    def cleanup(self) -> None:
        deleted = cleanup_output(self.store, self.dataset)
        event(f"cleanup: deleted {'some' if deleted else 'no'} files")
        self._after_cleanup()

    # -- invariants --------------------------------------------------------------------------------
    @invariant()
    def protocol_holds(self) -> None:
        """All promises after every step (one listing of the store per step keeps the test fast)."""
        files = self._files()
        published_attempt = self._one_current_manifest(files)
        self._attempts_that_may_publish_keep_their_shards()
        self._no_stray_files(files, published_attempt)

    def _one_current_manifest(self, files: list[str]) -> str | None:
        """At most one manifest, the current one; the published manifest references only existing shards
        whose checksums match, and they are the checksums of its input. Returns its attempt id."""
        manifests = [p for p in files if p.startswith("_manifests/")]
        if self.published is None:
            assert current_shardset(self.store, self.dataset) is None
            assert manifests == [], "a manifest exists though nothing was published"
            return None
        assert current_shardset(self.store, self.dataset) == self.published
        assert manifests == [self.published.manifest_uri[len(self.dataset) + 1 :]]
        assert len([p for p in files if p.startswith("_commits/")]) == self.generation, "one record per publish"
        manifest = load_manifest(self.store, self.published)
        assert read_table(self.store, self.published).num_rows == self.published.num_rows  # sha256 verified
        assert self.published_input is not None
        for index, shard in enumerate(manifest.shards):
            assert shard.sha256 == self.expected[(self.published_input, index)]
        return manifest.attempt_id

    def _attempts_that_may_publish_keep_their_shards(self) -> None:
        for attempt in self.live.values():
            if self._doomed(attempt.base):
                continue
            for info in attempt.written.values():
                path = os.path.join(self.base_path, info.path)
                assert os.path.exists(path), f"a shard of live attempt {attempt.writer.attempt_id} was deleted"

    def _no_stray_files(self, files: list[str], published_attempt: str | None) -> None:
        """Every staged file belongs to a live or crashed attempt, or to the published one; temp files
        exist only in crashed attempts' staging."""
        owners = set(self.live) | set(self.crashed) | {published_attempt}
        for path in files:
            if path.startswith("attempts/"):
                assert path.split("/")[1] in owners, f"stray staging {path}"
            if os.path.basename(path).startswith(TEMP_PREFIX):
                assert path.split("/")[:2][-1] in self.crashed, f"stray temp file {path}"


TestCommitProtocol = CommitProtocol.TestCase
TestCommitProtocol.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    database=None,  # no .hypothesis directory in the repository
    suppress_health_check=[HealthCheck.too_slow],
)
