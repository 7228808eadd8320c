"""What a stage's driver needs, as one JSON document; where its request and result live in the store.

A task (or a notebook) builds a :class:`StageRequest`; a runner hands it to the stage's driver function, in
the same process or as a job on the cluster. The request holds no secret: the Ray dashboard shows a job's
entrypoint and metadata, and the request sits in the shard store. The store is named by a
:class:`StoreSpec` whose S3 credentials are a *reference* (``credentials="cluster"``: the cluster's own chain,
e.g. the edge node's instance role or environment), never the keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_bigdata_ai.shards import S3Options, ShardStore
    from airflow_bigdata_ai.usercode import UserCallable

JOBS_DIR = "_jobs"
STAGES = ("preprocess", "train", "infer", "noop")


@dataclass(frozen=True)
class StoreSpec:
    """A shard store's root and how to reach it, without credentials (see the module docstring)."""

    root: str
    endpoint_url: str | None = None
    region_name: str | None = None
    credentials: str = "cluster"

    @classmethod
    def of(cls, root: str, options: S3Options | None = None) -> StoreSpec:
        if options is None:
            return cls(root=root)
        return cls(root=root, endpoint_url=options.endpoint_url, region_name=options.region_name)

    def s3_options(self) -> S3Options:
        from airflow_bigdata_ai.shards import S3Options

        return S3Options(endpoint_url=self.endpoint_url, region_name=self.region_name)

    def store_for(self, uri: str | None = None) -> ShardStore:
        """The store for ``uri``, confined like the hook's (:func:`~airflow_bigdata_ai.shards.store.confined_store`)."""
        from airflow_bigdata_ai.shards.store import confined_store

        return confined_store(self.root, uri, self.s3_options() if self.root.startswith("s3://") else None)


def submission_prefix(dag_id: str, task_id: str, run_id: str, map_index: int | None = None) -> str:
    """Stable for one task instance across its tries: how a retry finds the job an earlier try submitted."""
    key = f"{dag_id}\0{task_id}\0{run_id}\0{-1 if map_index is None else map_index}"
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", f"{dag_id}.{task_id}")[:60]
    return f"abai-{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def submission_id(prefix: str, try_number: int | None) -> str:
    """One id per task attempt (Ray refuses a second job with an id it has seen)."""
    return f"{prefix}-try{try_number or 0}"


def is_of_try(submission: str, try_number: int | None) -> bool:
    """Whether ``submission`` is the id :func:`submission_id` gives the attempt ``try_number``."""
    return submission.endswith(f"-try{try_number or 0}")


@dataclass(frozen=True)
class StageRequest:
    """One stage's driver call: ``stage``, its JSON ``params``, the store, and who asked (``submission_id``)."""

    stage: str
    submission_id: str
    store: StoreSpec
    params: dict[str, Any] = field(default_factory=dict)
    task_key: str = ""  # submission_prefix(): shared by every try of one task instance

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; known: {', '.join(STAGES)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> StageRequest:
        data = json.loads(text)
        return cls(
            stage=data["stage"],
            submission_id=data["submission_id"],
            store=StoreSpec(**data["store"]),
            params=dict(data.get("params") or {}),
            task_key=data.get("task_key", ""),
        )

    @property
    def request_uri(self) -> str:
        return job_file(self.store.root, self.submission_id, "request.json")

    @property
    def result_uri(self) -> str:
        return job_file(self.store.root, self.submission_id, "result.json")


def job_file(store_root: str, submission: str, name: str) -> str:
    return f"{store_root.rstrip('/')}/{JOBS_DIR}/{submission}/{name}"


# -- user code inside a JSON request -------------------------------------------------------------------------
def encode_callable(target: UserCallable) -> dict[str, Any]:
    """A shipped user function as JSON: its import path or its pickle, and the sources of its modules."""
    return {
        "name": target.name,
        "path": target.path,
        "pickled": base64.b64encode(target.pickled).decode() if target.pickled is not None else None,
        "modules": [asdict(module) for module in target.bundle.modules],
    }


def decode_callable(data: dict[str, Any]) -> UserCallable:
    from airflow_bigdata_ai.usercode import UserCallable
    from airflow_bigdata_ai.usercode.bundle import CodeBundle, ShippedModule

    pickled = data.get("pickled")
    return UserCallable(
        name=data["name"],
        path=data.get("path"),
        pickled=base64.b64decode(pickled) if pickled else None,
        bundle=CodeBundle(tuple(ShippedModule(**module) for module in data.get("modules") or ())),
    )
