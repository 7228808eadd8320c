"""Commit records: the one conditional put that publishes an output, and the cleanup it allows.

Split from :mod:`airflow_bigdata_ai.shards.dataset` (which writes and reads shard sets). An attempt's id ends
in ``-g<N>``, the generation it started from; its commit claims record ``_commits/<N+1>.json`` with a
create-if-absent put, so of two live attempts of one output exactly one publishes. Records are kept: deleting
one would let a stale attempt claim it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from airflow_bigdata_ai.shards.errors import InvalidReference
from airflow_bigdata_ai.shards.paths import MANIFESTS_SEGMENT, StoreURI
from airflow_bigdata_ai.shards.store import ShardStore, is_temporary

POINTER = "_CURRENT"
MANIFESTS = MANIFESTS_SEGMENT
ATTEMPTS = "attempts"
COMMITS = "_commits"
_RECORD = re.compile(r"^(\d{10})\.json$")
_BASE = re.compile(r"-g(\d+)$")


def attempt_generation(attempt_id: str) -> int | None:
    """The generation an attempt started from (its id's ``-g<N>`` suffix); None for ids without one."""
    match = _BASE.search(attempt_id)
    return int(match.group(1)) if match else None


def record_name(generation: int) -> str:
    return f"{COMMITS}/{generation:010d}.json"


def read_record(store: ShardStore, dataset: StoreURI, generation: int) -> dict[str, Any]:
    record = json.loads(store.read_bytes(dataset.join(record_name(generation))))
    if not isinstance(record, dict):
        raise InvalidReference(f"commit record {generation} of {dataset} is not a JSON object")
    return record


def latest_commit(store: ShardStore, dataset: StoreURI) -> tuple[int, dict[str, Any] | None]:
    """The newest generation of ``dataset`` and its commit record; ``(0, None)`` when none was claimed.

    An output published before commit records existed has only ``_CURRENT``: generation 0, its pointer.
    """
    generations = [
        int(match.group(1))
        for uri in store.list(dataset.join(COMMITS))
        if not is_temporary(uri) and (match := _RECORD.match(uri.name))
    ]
    if generations:
        return max(generations), read_record(store, dataset, max(generations))
    pointer_uri = dataset.join(POINTER)
    return 0, json.loads(store.read_bytes(pointer_uri)) if store.exists(pointer_uri) else None


def delete_unpublishable(store: ShardStore, dataset: StoreURI, generation: int, keep_attempt: str) -> int:
    """Delete the staging (temp files included) and manifests of attempts that can never publish: every
    attempt but ``keep_attempt`` that started before ``generation``. Returns the number of objects deleted.

    Attempts that started from ``generation`` or later may still publish, so their files are kept (a rerun
    that starts while an earlier publish is cleaning up keeps its shards); commit records and other files
    are kept too. Files of ids without a generation (written before commit records existed) are deleted.
    """
    base = dataset.path.rstrip("/") + "/"
    stale = []
    for uri in store.list(dataset):
        top, _, rest = uri.path[len(base) :].partition("/")
        if top == ATTEMPTS:
            owner = rest.split("/")[0]
        elif top == MANIFESTS and rest.endswith(".json") and "/" not in rest and not is_temporary(uri):
            owner = rest[: -len(".json")]
        else:
            continue
        started = attempt_generation(owner)
        if owner != keep_attempt and (started is None or started < generation):
            stale.append(uri)
    store.delete(stale)
    return len(stale)


def cleanup_output(store: ShardStore, dataset_uri: str) -> int:
    """Delete what crashed or superseded attempts left at ``dataset_uri`` and can never be published;
    never a file of the published version or of an attempt that may still publish. Returns the count."""
    dataset = store.resolve(dataset_uri)
    generation, record = latest_commit(store, dataset)
    if record is None or generation == 0:
        return 0  # nothing published through a commit record: any attempt may still publish
    return delete_unpublishable(store, dataset, generation, str(record.get("attempt_id")))
