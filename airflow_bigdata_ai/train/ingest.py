"""What each training worker reads: Ray datasets over the ShardSet, in an order that does not vary.

Determinism: for the same seed, input ShardSet (manifest sha256), settings, model code and ``num_workers``,
training produces byte-identical weights, whether the cluster was warm or cold and also after a worker-group
restart or a task retry resumed from an epoch checkpoint. Why it holds: each shard is one Ray Data block
(the number of read tasks depends on the shards, not on the CPUs the autoscaled cluster had at the time),
Ray Data keeps block order (``preserve_order``), so the equal split to the workers and each worker's
seeded local shuffle see the same rows in the same order, and torch's RNG is re-seeded per epoch and rank.
Not covered: another ``num_workers`` or ``resources_per_worker`` (other per-worker batches, other torch
thread counts), other torch/Ray versions or CPU instruction sets (other float kernels), and user code that
draws randomness from elsewhere than torch's RNG (``random``, ``numpy``) or from the clock.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.shards.ray_source import read_ray_dataset
from airflow_bigdata_ai.shards.refs import ShardSet
from airflow_bigdata_ai.train.config import TrainConfig
from airflow_bigdata_ai.train.loop import split_batch

if TYPE_CHECKING:
    from airflow_bigdata_ai.shards.store import ShardStore

MAX_READ_TASKS = 32


def _read_tasks(shardset: ShardSet) -> int:
    """One read task per shard (up to MAX_READ_TASKS): the blocks then follow the shards, not the CPUs the
    cluster happened to have when the read started (a cold, scaled-down cluster merged shards into fewer,
    larger blocks, which changed the rows each worker saw and so the trained weights)."""
    return max(1, min(shardset.num_shards, MAX_READ_TASKS))


def _ordered(ds: Any, data_cpus: float) -> Any:
    """Keep block order: the equal split to the workers and their seeded shuffles then see the same rows.
    Reading is capped at the CPUs the job was admitted with, so it never takes another job's CPUs."""
    from ray.data import ExecutionResources

    ds.context.execution_options.preserve_order = True
    ds.context.execution_options.verbose_progress = False
    ds.context.execution_options.resource_limits = ExecutionResources(cpu=data_cpus)
    return ds


def datasets_for(
    store: ShardStore, shardset: ShardSet, val_set: ShardSet | None, config: TrainConfig
) -> tuple[Any, Any | None]:
    """The train and validation datasets (lazy, read by the cluster), in a deterministic block order."""
    columns = [config.feature_column, config.label_column]

    def read(ref: ShardSet, cols: list[str]) -> Any:
        return _ordered(read_ray_dataset(store, ref, cols, read_tasks=_read_tasks(ref)), config.data_cpus)

    if val_set is not None:
        return read(shardset, columns), read(val_set, columns)
    if config.val_fraction <= 0:
        return read(shardset, columns), None
    full = read(shardset, [config.id_column, *columns])
    split = partial(split_batch, id_column=config.id_column, fraction=config.val_fraction)
    train_ds = full.map_batches(partial(split, want_val=False), batch_format="pyarrow", batch_size=None)
    val_ds = full.map_batches(partial(split, want_val=True), batch_format="pyarrow", batch_size=None)
    return _ordered(train_ds, config.data_cpus), _ordered(val_ds, config.data_cpus)


def ingest_config(data_cpus: float) -> Any:
    """Ray Train's per-worker split keeps block order and ignores locality (which node ran a read task
    varies from run to run, and with locality hints it decided which worker got a block). Its reading is
    capped at ``data_cpus``: Ray Train leaves only its own workers out of Ray Data's budget, so without a cap
    concurrent trainings each took the CPUs the others' reading needed."""
    import ray.train
    from ray.data import ExecutionOptions, ExecutionResources

    # built here rather than from DataConfig.default_ingest_options(), which passes the deprecated
    # exclude_resources and so prints a RayDeprecationWarning into every task log
    options = ExecutionOptions(
        resource_limits=ExecutionResources(cpu=data_cpus),
        preserve_order=True,
        verbose_progress=False,
    )
    return ray.train.DataConfig(execution_options=options, enable_shard_locality=False)


def cached_splits(datasets: dict[str, Any], num_workers: int) -> dict[str, list[Any]]:
    """Each dataset materialised in the object store and cut into ``num_workers`` equal, row-contiguous
    splits in block order (``split(equal=True)``: the same rows per worker on every run, like the
    streaming split it replaces for cached data; up to ``num_workers - 1`` trailing rows are left out).
    Worker ``rank`` iterates split ``rank`` (:func:`~airflow_bigdata_ai.train.loop.dataset_split`)."""
    return {name: ds.materialize().split(num_workers, equal=True) for name, ds in datasets.items()}
