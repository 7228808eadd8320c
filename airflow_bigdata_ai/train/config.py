"""Training settings and run identity: plain, picklable, JSON-friendly dataclasses (no torch, no Ray)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_bigdata_ai.shards.paths import safe_segment

OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("cross_entropy", "nll", "mse")
PRECISIONS = ("f32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """What and how to train. Validated eagerly so a typo fails before the cluster is touched.

    ``train_step`` is an optional ``"package.module:function"`` (or a picklable callable) replacing the default
    forward/backward/step for one batch; see :class:`airflow_bigdata_ai.train.loop.StepContext`.
    ``cache_data`` materialises the decoded shards in the Ray object store once instead of re-reading the
    Parquet files every epoch; ``None`` means "when the ShardSet is under 512 MiB".
    ``data_cpus`` are the CPUs this training's Ray Data reading may use beside its workers; the job waits
    in the shared cluster's admission queue (at most ``admission_timeout_s``) until the workers' CPUs plus
    these are free (:mod:`airflow_bigdata_ai.cluster.admission`).
    ``worker_group_start_timeout_s`` (Ray's default: 60 s) bounds the start of the Ray Train workers (spawn,
    import torch, join the gloo group): on a CPU-starved machine that took longer, and the group restarted.
    ``worker_health_check_timeout_s`` (Ray's default, 600 s) is how long a worker's health check may hang
    before it counts as dead. Every restart logs the cause Ray Train recorded (:mod:`.restarts`).
    ``precision="bf16"`` runs forward passes and losses under ``torch.autocast`` in bfloat16 and image
    batches in channels-last memory format (the layout oneDNN's bf16 convolutions want); weights, optimizer
    state and the saved model stay float32, so inference and resumption are unchanged. It pays on CPUs with
    native bf16 (AVX-512 BF16, AMX); elsewhere it emulates and is slower.
    """

    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    loss: str = "cross_entropy"
    seed: int = 0
    num_workers: int = 2
    resources_per_worker: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    val_fraction: float = 0.2
    max_failures: int = 2
    feature_column: str = "image"
    label_column: str = "label"
    id_column: str = "record_id"
    shuffle_buffer: int = 1024
    train_step: Any = None
    checkpoint_every: int = 1
    cache_data: bool | None = None
    data_cpus: float = 1.0
    admission_timeout_s: float = 3600.0
    worker_group_start_timeout_s: float = 300.0
    worker_health_check_timeout_s: float = 600.0
    precision: str = "f32"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not self.lr > 0:
            raise ValueError("lr must be > 0")
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.max_failures < -1:
            raise ValueError("max_failures must be >= -1 (-1 = unlimited)")
        if not self.data_cpus > 0:
            raise ValueError("data_cpus must be > 0 (Ray Data needs a CPU to read the shards)")
        if not self.admission_timeout_s > 0:
            raise ValueError("admission_timeout_s must be > 0")
        if not (self.worker_group_start_timeout_s > 0 and self.worker_health_check_timeout_s > 0):
            raise ValueError("worker_group_start_timeout_s and worker_health_check_timeout_s must be > 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        if self.train_step is not None and not (isinstance(self.train_step, str) or callable(self.train_step)):
            raise ValueError("train_step must be a 'package.module:function' string or a callable")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def cpus_needed(self) -> float:
        """What this training holds on the cluster: its workers' CPUs plus its data reading's."""
        return self.num_workers * self._cpus_per_worker() + self.data_cpus

    def describe_need(self) -> str:
        """The need in words, for the admission queue's log lines."""
        return f"training ({self.num_workers} workers x {self._cpus_per_worker():g} CPUs + data {self.data_cpus:g})"

    def _cpus_per_worker(self) -> float:
        return float(self.resources_per_worker.get("CPU", 1.0))

    def fingerprint(self) -> str:
        """Digest of everything that changes the result: a checkpoint from other settings is never resumed.

        ``epochs`` and ``max_failures`` are left out, so a retry that only asks for more epochs still resumes.
        """
        data = asdict(self)
        volatile_settings = (
            "epochs",
            "max_failures",
            "cache_data",
            "data_cpus",
            "admission_timeout_s",
            "worker_group_start_timeout_s",
            "worker_health_check_timeout_s",
        )
        for volatile in volatile_settings:
            data.pop(volatile)
        step = data.pop("train_step")
        data["train_step"] = step if isinstance(step, str) or step is None else _callable_name(step)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _callable_name(obj: Any) -> str:
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{target.__module__}:{target.__qualname__}"


@dataclass(frozen=True)
class RunKey:
    """Who is training: the checkpoint location is derived from (dag_id, task_id, run_id), nothing else.

    A retry of the same task instance finds its own checkpoints; another logical date has another
    run_id and therefore never resumes this run's checkpoints.
    """

    dag_id: str
    task_id: str
    run_id: str
    logical_date: str | None = None
    try_number: int | None = None

    def checkpoint_relpath(self) -> str:
        return f"_checkpoints/{safe_segment(self.dag_id)}/{safe_segment(self.task_id)}/{safe_segment(self.run_id)}"


@dataclass(frozen=True)
class EpochProgress:
    """One line of progress, as handed to the progress callback (and logged by the operator)."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    samples_per_s: float
    epoch_seconds: float
    restarts: int = 0
    time_split: dict[str, float] = field(default_factory=dict)  # rank 0: data wait, decode, steps, validation

    def line(self) -> str:
        return (
            f"epoch {self.epoch + 1}/{self.epochs} train_loss={self.train_loss:.4f} val_loss={self.val_loss:.4f} "
            f"val_accuracy={self.val_accuracy:.4f} samples/s={self.samples_per_s:.0f} "
            f"epoch_s={self.epoch_seconds:.2f} restarts={self.restarts}"
            + (" (rank 0: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in self.time_split.items()) + ")"
               if self.time_split else "")
        )  # fmt: skip
