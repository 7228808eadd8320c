"""The per-worker training loop Ray Train runs on every worker (imported on the cluster, never in Airflow).

Each worker reads its own split of the shards, so no record passes through the driver: a split the driver
cut from the cached (materialised) data (``loop_config["splits"]``), else Ray Train's streaming split
(``get_dataset_shard``). Rank 0 writes the checkpoint each epoch (Ray Train persists it to the shard
store), progress events, and at the end the state dict the ModelRef names.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from airflow_bigdata_ai.models.loading import build_model
from airflow_bigdata_ai.shards.progress import post
from airflow_bigdata_ai.shards.tensors import decode_tensors, model_input
from airflow_bigdata_ai.train.config import TrainConfig

if TYPE_CHECKING:
    import torch

    from airflow_bigdata_ai.shards.store import ShardStore
    from airflow_bigdata_ai.usercode import UserCallable

STATE_FILE = "state.pt"


@dataclass
class LoopSpec:
    """Everything a worker needs, shipped once through ``train_loop_config`` (small, picklable).

    The model factory and the train step travel as :class:`~airflow_bigdata_ai.usercode.UserCallable`
    (built once on the driver): a module beside the DAG reaches the workers inside the spec, and an edited
    module is re-imported by a reused worker. ``config.train_step`` is cleared: ``step`` carries it.
    """

    config: TrainConfig
    model_factory: UserCallable
    factory_kwargs: dict[str, Any]
    feature_shape: tuple[int, ...]
    feature_dtype: str
    store: ShardStore
    events_uri: str
    weights_dir_uri: str
    fingerprint: str
    has_val: bool
    step: UserCallable | None = None


@dataclass
class StepContext:
    """What a per-batch train step sees. A custom step must run backward and the optimizer step itself."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[..., torch.Tensor]
    inputs: torch.Tensor
    targets: torch.Tensor
    epoch: int
    batch_index: int
    world_rank: int
    world_size: int
    precision: str = "f32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Wrap the forward pass and the loss in this (never the backward pass): bf16 when configured."""
        return precision_context(self.precision)


def precision_context(precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to bfloat16 on CPU for ``"bf16"``; nothing for ``"f32"``."""
    import torch

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def default_train_step(ctx: StepContext) -> torch.Tensor:
    """Plain supervised step: forward, loss, backward, optimizer step. Returns the (detached) batch loss."""
    ctx.optimizer.zero_grad(set_to_none=True)
    with ctx.autocast():
        loss = ctx.loss_fn(ctx.model(ctx.inputs), ctx.targets)
    loss.backward()
    ctx.optimizer.step()
    return loss.detach()


def resolve_step(step: UserCallable | None) -> Callable[[StepContext], Any]:
    return default_train_step if step is None else step.load()


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Torch's RNG is re-seeded per epoch and rank, so a run resumed from an epoch checkpoint (worker-group
    restart, task retry) draws the same random numbers (dropout, user steps) as an uninterrupted one."""
    return (seed * 1000 + epoch) * 1000 + rank


def make_loss(name: str) -> Callable[..., torch.Tensor]:
    import torch.nn.functional as F

    if name == "cross_entropy":
        return F.cross_entropy
    if name == "nll":
        return F.nll_loss

    def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.ndim == 2 and targets.ndim == 1:  # class labels against per-class outputs
            targets = F.one_hot(targets, outputs.shape[1])
        return F.mse_loss(outputs, targets.to(outputs.dtype))

    return mse


def make_optimizer(config: TrainConfig, params: Any) -> torch.optim.Optimizer:
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def split_batch(table: pa.Table, *, id_column: str, fraction: float, want_val: bool) -> pa.Table:
    """Deterministic train/validation split by a hash of the record id: stable across shards and reruns."""
    threshold = int(fraction * 10_000)
    ids = table.column(id_column).to_pylist()
    mask = [(zlib.crc32(str(i).encode()) % 10_000 < threshold) == want_val for i in ids]
    return table.filter(pa.array(mask, type=pa.bool_()))


def batch_to_tensors(table: pa.Table, spec: LoopSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrow batch -> (inputs, targets). uint8 images are scaled to [0, 1]; other dtypes become float32."""
    import torch

    cfg = spec.config
    array = decode_tensors(table.column(cfg.feature_column), spec.feature_shape, spec.feature_dtype)
    inputs = torch.from_numpy(np.ascontiguousarray(model_input(array)))
    if cfg.precision == "bf16" and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    targets = torch.from_numpy(np.array(table.column(cfg.label_column).to_numpy(zero_copy_only=False), np.int64))
    return inputs, targets


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _all_reduce(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def dataset_split(loop_config: dict[str, Any], name: str, rank: int) -> Any:
    """This worker's part of dataset ``name``: its cached split when the driver cut one, else Ray Train's.

    A cached split is a block list in the object store that the worker iterates itself. Ray Train's
    streaming split starts a coordinator actor per dataset and attempt: a new process, ~6 s of the first
    epoch on 2 cores for data the object store already holds.
    """
    splits = loop_config.get("splits")
    if splits:
        return splits[name][rank]
    import ray.train

    return ray.train.get_dataset_shard(name)


def _evaluate(
    model: torch.nn.Module, spec: LoopSpec, loss_fn: Callable[..., torch.Tensor], val_data: Any
) -> list[float]:
    import torch

    loss_sum = correct = total = 0.0
    if not spec.has_val:
        return [0.0, 0.0, 0.0]
    model.eval()
    with torch.no_grad():
        for table in val_data.iter_batches(batch_size=max(spec.config.batch_size, 256), batch_format="pyarrow"):
            if table.num_rows == 0:
                continue
            inputs, targets = batch_to_tensors(table, spec)
            with precision_context(spec.config.precision):
                outputs = model(inputs)
                loss_sum += float(loss_fn(outputs, targets)) * len(targets)
            if outputs.ndim == 2:
                correct += float((outputs.argmax(dim=1) == targets).sum())
            total += len(targets)
    return [loss_sum, correct, total]


def worker_threads(config: TrainConfig) -> int:
    """Intra-op threads of one worker: the CPUs Ray reserved for it, not every core of the node.

    Ray on Spark starts workers with OMP_NUM_THREADS set to the node's CPUs, so two 1-CPU workers on a
    2-CPU node ran two threads each; measured here (2 DDP workers, 8,000 images 32x32): 6.2-7.3 s/epoch
    oversubscribed against 2.1 s/epoch with one thread each.
    """
    return max(1, int(config.resources_per_worker.get("CPU", 1)))


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (runs once per worker, again after a worker-group restart)."""
    import ray.train
    import ray.train.torch
    import torch

    spec: LoopSpec = loop_config["spec"]
    cfg = spec.config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(worker_threads(cfg))
    torch.manual_seed(cfg.seed)
    model = build_model(spec.model_factory, spec.factory_kwargs)
    if cfg.precision == "bf16" and len(spec.feature_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(cfg, model.parameters())
    loss_fn = make_loss(cfg.loss)
    step = resolve_step(spec.step)

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
        if state.get("fingerprint") == spec.fingerprint:
            _unwrap(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"]) + 1
            history = json.loads(state.get("history", "[]"))
    if rank == 0:
        post(
            spec.store,
            spec.events_uri,
            "start",
            start_epoch=start_epoch,
            world_size=world,
            resumed=checkpoint is not None,
        )

    train_iterator = dataset_split(loop_config, "train", rank)
    val_data = dataset_split(loop_config, "val", rank) if spec.has_val else None
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(epoch_seed(cfg.seed, epoch, rank))
        model.train()
        started = time.perf_counter()
        loss_sum = seen = wait_s = decode_s = 0.0
        batches = train_iterator.iter_batches(
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            local_shuffle_buffer_size=cfg.shuffle_buffer or None,
            local_shuffle_seed=cfg.seed * 1000 + epoch + rank if cfg.shuffle_buffer else None,
        )
        mark = started
        for index, table in enumerate(batches):
            fetched = time.perf_counter()
            inputs, targets = batch_to_tensors(table, spec)
            decoded = time.perf_counter()
            wait_s, decode_s = wait_s + fetched - mark, decode_s + decoded - fetched
            ctx = StepContext(model, optimizer, loss_fn, inputs, targets, epoch, index, rank, world, cfg.precision)
            loss = step(ctx)
            loss_sum += float(loss) * len(targets)
            seen += len(targets)
            mark = time.perf_counter()
        train_seconds = time.perf_counter() - started
        val = _evaluate(model, spec, loss_fn, val_data)
        validated = time.perf_counter()
        loss_sum, seen, val_loss, val_correct, val_total = _all_reduce([loss_sum, seen, *val])
        epoch_seconds = time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1.0),
            "val_loss": val_loss / max(val_total, 1.0),
            "val_accuracy": val_correct / max(val_total, 1.0),
            "val_samples": int(val_total),
            "train_samples": int(seen),
            "samples_per_s": seen / max(train_seconds, 1e-9),
            "epoch_seconds": epoch_seconds,
            # where rank 0's epoch went: waiting for batches, decoding them, steps, validation, the all-reduce
            "time_split": {
                "data_wait_s": round(wait_s, 4),
                "decode_s": round(decode_s, 4),
                "step_s": round(train_seconds - wait_s - decode_s, 4),
                "validate_s": round(validated - started - train_seconds, 4),
                "all_reduce_s": round(started + epoch_seconds - validated, 4),
            },
        }
        if cfg.precision == "bf16":  # without native bf16 (AVX-512 BF16 / AMX) oneDNN emulates it, slower
            metrics["bf16_native"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        history.append({k: metrics[k] for k in ("epoch", "train_loss", "val_accuracy", "epoch_seconds")})
        last = epoch == cfg.epochs - 1
        if last and rank == 0:
            metrics.update(_write_weights(spec, _unwrap(model)))
        if (last or (epoch + 1) % cfg.checkpoint_every == 0) and rank == 0:
            with tempfile.TemporaryDirectory() as directory:
                torch.save(
                    {
                        "model": _unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "fingerprint": spec.fingerprint,
                        "history": json.dumps(history),
                    },
                    os.path.join(directory, STATE_FILE),
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)
        if rank == 0:
            post(spec.store, spec.events_uri, "epoch", **metrics)


def _write_weights(spec: LoopSpec, model: torch.nn.Module) -> dict[str, Any]:
    """Final state dict, content-addressed, straight from rank 0 to the store (never via the driver)."""
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    uri = spec.store.resolve(spec.weights_dir_uri).join(f"model-{digest[:16]}.pt")
    spec.store.write_bytes(uri, data)
    return {"weights_uri": str(uri), "weights_sha256": digest, "weights_bytes": len(data)}
