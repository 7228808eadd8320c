"""The ``ray_on_spark`` connection: its declarative form and its translation into core settings.

Kept free of Airflow imports so provider metadata loads cheaply and the mapping is unit-testable.
Standard fields: ``host`` = Spark master (``embedded``, ``spark://...``, ``yarn``, ``k8s://...``),
``password`` = the cluster's auth token (masked). Everything else lives in ``extra``.

The connection also holds the per-deployment key that signs the references tasks hand each other
(:class:`ReferencePolicy`): whoever can edit XCom through the REST API must not be able to point a task at
another run's, another DAG's or anyone's data.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # the shards package imports pyarrow: provider metadata must load without it
    from airflow_bigdata_ai.shards.refs import ModelRef, ShardSet

from airflow_bigdata_ai.cluster.config import default_state_dir, state_root

DEFAULT_CONN_ID = "ray_on_spark_default"
CONN_TYPE = "ray_on_spark"

RAY_ON_SPARK_CONN_FIELDS: dict[str, dict[str, Any]] = {
    "mode": {
        "label": "Mode",
        "schema": {"type": ["string", "null"], "default": "embedded", "enum": ["embedded", "remote"]},
        "description": "embedded: start the shared cluster on first use; remote: only attach to a running one",
    },
    "state_dir": {
        "label": "State directory",
        "schema": {"type": ["string", "null"]},
        "description": "Where the cluster service publishes its endpoint record and token",
    },
    "jobs_url": {
        "label": "Jobs API URL of the cluster service",
        "schema": {"type": ["string", "null"]},
        "description": "http(s)://host:port that `airflow-bigdata-ai cluster status --connection` prints: the "
        "drivers run on the cluster and this worker needs nothing but this connection",
    },
    "store_root": {
        "label": "Shard store root",
        "schema": {"type": ["string", "null"]},
        "description": "file:///abs/path or s3://bucket/prefix where outputs are written",
    },
    "aws_conn_id": {
        "label": "AWS connection id (for s3:// stores)",
        "schema": {"type": ["string", "null"], "default": "aws_default"},
    },
    "max_worker_nodes": {"label": "Max Ray worker nodes", "schema": {"type": ["integer", "null"]}},
    "num_cpus_worker_node": {
        "label": "CPUs per Ray worker node",
        "schema": {"type": ["integer", "null"], "default": 2},
    },
    "idle_timeout_s": {
        "label": "Idle timeout (seconds, 0 = never)",
        "schema": {"type": ["number", "null"], "default": 3600},
    },
    "spark_conf": {
        "label": "Extra Spark conf (JSON object)",
        "schema": {"type": ["string", "null"]},
    },
    # the name contains "secret": Airflow masks it in the UI, the API and task logs
    "reference_secret": {
        "label": "Reference signing secret",
        "schema": {"type": ["string", "null"]},
        "description": "signs the ShardSet/ModelRef references tasks pass through XCom; default: derived "
        "from the auth token, or a key generated once in the state directory",
    },
    "unsigned_references": {
        "label": "Unsigned references",
        "schema": {"type": ["string", "null"], "enum": ["refuse", "accept", None]},
        "description": "refuse or accept (with a warning) a reference without a signature; default: refuse "
        "when a secret or token is configured, accept when neither is",
    },
}

RAY_ON_SPARK_UI_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "login", "port"],
    "relabeling": {"host": "Spark master", "password": "Auth token"},
    "placeholders": {
        "host": "embedded | spark://host:7077 | yarn | k8s://https://...",
        "password": "leave empty to generate one per cluster",
        "state_dir": "~/.cache/airflow-bigdata-ai/clusters/default",
        "jobs_url": "http://edge-node:8265 (empty: the task is the driver)",
        "store_root": "file:///data/airflow-bigdata-ai or s3://bucket/prefix",
    },
}


@dataclass(frozen=True)
class ConnectionSettings:
    """What a ``ray_on_spark`` connection says, with defaults for a missing connection (embedded)."""

    conn_id: str = DEFAULT_CONN_ID
    master: str = "embedded"
    mode: str = "embedded"
    state_dir: str = ""
    store_root: str = ""
    aws_conn_id: str = "aws_default"
    auth_token: str | None = field(default=None, repr=False)
    max_worker_nodes: int | None = None
    num_cpus_worker_node: int = 2
    idle_timeout_s: float = 3600.0
    spark_conf: dict[str, str] = field(default_factory=dict)
    reference_secret: str | None = field(default=None, repr=False)
    unsigned_references: str | None = None
    jobs_url: str = ""

    @classmethod
    def from_parts(
        cls, conn_id: str, host: str | None, password: str | None, extra: dict[str, Any] | str | None
    ) -> ConnectionSettings:
        extras = _parse_extra(extra)
        spark_conf = extras.get("spark_conf") or {}
        if isinstance(spark_conf, str):
            spark_conf = json.loads(spark_conf) if spark_conf.strip() else {}
        if not isinstance(spark_conf, dict):
            raise ValueError(f"connection {conn_id!r}: spark_conf must be a JSON object")
        mode = extras.get("mode") or "embedded"
        if mode not in ("embedded", "remote"):
            raise ValueError(f"connection {conn_id!r}: mode must be 'embedded' or 'remote', got {mode!r}")
        unsigned = extras.get("unsigned_references")
        if unsigned not in (None, "refuse", "accept"):
            raise ValueError(f"connection {conn_id!r}: unsigned_references is 'refuse' or 'accept', not {unsigned!r}")
        safe_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in conn_id)
        state_dir = extras.get("state_dir") or default_state_dir(safe_id)
        store_root = extras.get("store_root") or os.environ.get(
            "AIRFLOW_BIGDATA_AI_STORE", os.path.join(state_root(), "store")
        )
        return cls(
            conn_id=conn_id,
            master=(host or "embedded").strip(),
            mode=mode,
            state_dir=os.path.expanduser(state_dir),
            store_root=os.path.expanduser(store_root) if "://" not in store_root else store_root,
            aws_conn_id=extras.get("aws_conn_id") or "aws_default",
            auth_token=password or None,
            max_worker_nodes=_optional_int(extras.get("max_worker_nodes")),
            num_cpus_worker_node=_optional_int(extras.get("num_cpus_worker_node")) or 2,
            idle_timeout_s=float(extras.get("idle_timeout_s", 3600)),
            spark_conf={str(k): str(v) for k, v in spark_conf.items()},
            reference_secret=extras.get("reference_secret") or None,
            unsigned_references=unsigned,
            jobs_url=str(extras.get("jobs_url") or "").strip(),
        )

    def reference_policy(self) -> ReferencePolicy:
        """The signing key and the unsigned-reference rule of this deployment (see :class:`ReferencePolicy`).

        Key, first found: the ``reference_secret`` extra; the connection's password (the cluster token); else a
        random key generated once into ``$AIRFLOW_BIGDATA_AI_HOME/reference.key`` (0600). Each is run through
        HKDF, so the signing key never equals the token. The generated key belongs to the deployment, not to one
        cluster: it outlives cluster restarts (a restarted embedded cluster gets a new token, which would orphan
        every reference signed before) and is the same for tasks whose connections name other state dirs.
        """
        from airflow_bigdata_ai.shards.refs import derive_key

        if self.reference_secret:
            key, source, configured = derive_key(self.reference_secret), "the reference_secret extra", True
        elif self.auth_token:
            key, source, configured = derive_key(self.auth_token), "the connection's auth token", True
        else:
            path = os.path.join(state_root(), REFERENCE_KEY_FILE)
            key, source, configured = derive_key(_key_file(path)), path, False
        accept = self.unsigned_references == "accept" or (self.unsigned_references is None and not configured)
        return ReferencePolicy(key=key, accept_unsigned=accept, key_source=source)


REFERENCE_KEY_FILE = "reference.key"
Ref = TypeVar("Ref", bound="ShardSet | ModelRef")


@dataclass(frozen=True)
class ReferencePolicy:
    """How this deployment signs and checks references.

    - what a task returns is signed with ``key``;
    - a signed reference must verify (else :class:`~airflow_bigdata_ai.shards.refs.SignatureMismatch`);
    - an unsigned one (built by hand, in a notebook, by an older release) passes only when ``accept_unsigned``
      and the caller does not ``require_signature`` (the operators require it for the XCom of another
      operator of this package, which always signs: an unsigned value there was rewritten).
    """

    key: bytes = field(repr=False)
    accept_unsigned: bool
    key_source: str

    @property
    def key_id(self) -> str:
        from airflow_bigdata_ai.shards.refs import key_id

        return key_id(self.key)

    def sign(self, ref: Ref) -> Ref:
        from airflow_bigdata_ai.shards.refs import sign_reference

        return sign_reference(ref, self.key)

    def check(self, ref: ShardSet | ModelRef, what: str, *, require_signature: bool = False) -> bool:
        """Raise unless ``ref`` may be used; returns False when it was accepted without a signature."""
        from airflow_bigdata_ai.shards.refs import UnsignedReference, verify_reference

        if ref.signature:
            verify_reference(ref, self.key, what)
            return True
        if require_signature or not self.accept_unsigned:
            why = (
                "it comes from the XCom of an operator that always signs, so it was rewritten"
                if require_signature
                else "this deployment refuses unsigned references (connection extra unsigned_references)"
            )
            raise UnsignedReference(
                f"{what}: the {ref.KIND} reference is not signed, so the signature does not match: {why}. "
                "A retry cannot fix this"
            )
        return False


def _key_file(path: str) -> bytes:
    """The deployment's generated key: created once (O_EXCL, so concurrent first tasks agree), then read."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        tmp_key = secrets.token_hex(32)
        with os.fdopen(fd, "w") as handle:
            handle.write(tmp_key)
            handle.flush()
            os.fsync(handle.fileno())
    for _ in range(50):  # a concurrent creator may not have written its bytes yet
        with open(path) as handle:
            text = handle.read().strip()
        if len(text) == 64:
            return bytes.fromhex(text)
        time.sleep(0.1)
    raise RuntimeError(f"the reference key file {path} is empty or malformed: remove it to generate a new one")


def _parse_extra(extra: dict[str, Any] | str | None) -> dict[str, Any]:
    if not extra:
        return {}
    data = json.loads(extra) if isinstance(extra, str) else dict(extra)
    # The UI stores declarative fields either plainly or prefixed ``extra__ray_on_spark__<name>``.
    prefix = f"extra__{CONN_TYPE}__"
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in data.items() if v not in ("", None)}


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)
