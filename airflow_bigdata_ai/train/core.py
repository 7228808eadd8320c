"""``train()``: data-parallel PyTorch on the attached Ray cluster, fed from a ShardSet, returning a ModelRef.

No Airflow import: the operator, notebooks and tests call the same function. The caller connects Ray first
(``AttachedCluster.ray()`` or ``ray.init``). Layout under the shard store root::

    _checkpoints/<dag_id>/<task_id>/<run_id>/   run.json (settings fingerprint), ray/ (Ray Train checkpoints),
                                                events/<fit_id>/ (progress), result.json (final ModelRef)
    <dag_id>/<task_id>/ds=<date>/weights/model-<sha>.pt   the trained state dict (content-addressed;
                                                runs without a logical date: run=<run id> instead of ds=)

The checkpoint folder lives only until the task succeeds: the operator calls :func:`discard_run` then.
Determinism: see :mod:`airflow_bigdata_ai.train.ingest`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.cluster.admission import admitted
from airflow_bigdata_ai.models.loading import factory_call_kwargs
from airflow_bigdata_ai.shards.dataset import load_manifest, output_uri
from airflow_bigdata_ai.shards.paths import StoreURI
from airflow_bigdata_ai.shards.refs import ModelRef, Producer, ShardSet
from airflow_bigdata_ai.shards.tensors import tensor_spec
from airflow_bigdata_ai.train.config import EpochProgress, RunKey, TrainConfig
from airflow_bigdata_ai.train.events import EventWatcher
from airflow_bigdata_ai.train.ingest import cached_splits, datasets_for, ingest_config
from airflow_bigdata_ai.train.loop import LoopSpec, train_loop
from airflow_bigdata_ai.train.restarts import apply_timeouts, describe_timeouts
from airflow_bigdata_ai.usercode import CodeBundle, UserCallable, UserCodeError

if TYPE_CHECKING:
    from airflow_bigdata_ai.shards.store import ShardStore

log = logging.getLogger(__name__)
RAY_RUN_NAME = "ray"
CACHE_LIMIT_BYTES = 512 * 1024 * 1024
_FACTORY_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class TrainingFailed(RuntimeError):
    """Ray Train gave up (more worker failures than ``max_failures``, or an error in the loop)."""


def checkpoint_uri(store: ShardStore, run: RunKey) -> StoreURI:
    return store.root.join(run.checkpoint_relpath())


def has_checkpoint(store: ShardStore, run: RunKey) -> bool:
    """True when a previous attempt of this run left a Ray Train checkpoint to resume from."""
    base = checkpoint_uri(store, run).join(RAY_RUN_NAME)
    return any("/checkpoint_" in u.path and u.path.endswith("state.pt") for u in store.list(base))


def discard_run(store: ShardStore, run: RunKey) -> None:
    """Remove this run's checkpoint folder (checkpoints, events, run.json, result.json) once it succeeded."""
    store.delete_prefix(checkpoint_uri(store, run))


def read_result(store: ShardStore, run: RunKey) -> ModelRef | None:
    """The ModelRef a finished attempt of this run recorded, if any."""
    uri = checkpoint_uri(store, run).join("result.json")
    return ModelRef.from_json(store.read_bytes(uri)) if store.exists(uri) else None


def _prepare_checkpoint_dir(store: ShardStore, run: RunKey, fingerprint: str) -> bool:
    """Keep earlier checkpoints only if they were made with the same settings. Returns True if resumable."""
    base = checkpoint_uri(store, run)
    run_file = base.join("run.json")
    if store.exists(run_file):
        previous = json.loads(store.read_bytes(run_file))
        if previous.get("fingerprint") != fingerprint:
            log.warning("settings changed since the last attempt of %s: discarding its checkpoints", run.run_id)
            store.delete_prefix(base)
    resumable = has_checkpoint(store, run)
    store.write_bytes(run_file, json.dumps({"fingerprint": fingerprint, "run": run.__dict__}).encode())
    return resumable


def ship_callable(target: Any, what: str, check_import: bool = True) -> UserCallable:
    """Build the UserCallable once, here on the driver, through the one resolver every stage's user code uses
    (a missing module fails now, naming where it looked). A configured callable object (``ExitOnceStep(...)``)
    travels by value with its state."""
    if not (isinstance(target, (str, UserCallable)) or callable(target)):
        raise UserCodeError(f"{what} must be a 'package.module:function' string or a callable, got {target!r}")
    return UserCallable.of(target, check_import)


def ship_model_factory(target: str | Callable[..., Any] | UserCallable, check_import: bool = True) -> UserCallable:
    factory = ship_callable(target, "model_factory", check_import)
    if factory.path is None or not _FACTORY_PATH.match(factory.name):
        raise UserCodeError(
            f"model_factory {factory.name!r} must be importable as 'package.module:function' (a module beside "
            "the DAG is fine): the ModelRef names it so that inference can rebuild the model"
        )
    return factory


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def train(
    train_data: ShardSet | dict[str, Any] | str,
    store: ShardStore,
    model_factory: str | Callable[..., Any] | UserCallable,
    *,
    config: TrainConfig,
    run: RunKey,
    factory_kwargs: dict[str, Any] | None = None,
    validation_data: ShardSet | dict[str, Any] | str | None = None,
    output_root: str | None = None,
    progress: Callable[[EpochProgress], None] | None = None,
) -> ModelRef:
    """Train ``model_factory``'s model on ``train_data`` with Ray Train; resume this run's last checkpoint.

    ``model_factory`` (and ``config.train_step``) may live in a module the cluster does not have, e.g. beside
    the DAG: its source travels with the job. ``factory_kwargs`` given as strings (templated) are converted
    to the factory's parameter types. Requires a connected Ray (``ray.is_initialized()``). Blocks until
    training finishes and returns the ModelRef (also recorded as ``result.json`` beside the checkpoints).
    Raises :class:`~airflow_bigdata_ai.usercode.UserCodeError` for code that cannot be found or called as
    configured, ``ValueError`` for data that does not fit the settings, both before any Ray work starts.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("connect to the cluster first (AttachedCluster.ray() or ray.init(address=...))")
    factory = ship_model_factory(model_factory)
    step = ship_callable(config.train_step, "train_step") if config.train_step is not None else None
    kwargs = factory_call_kwargs(factory.load(), factory_kwargs, factory.name)
    code = factory.bundle.merged(step.bundle if step is not None else CodeBundle())
    shardset = ShardSet.coerce(train_data)
    manifest = load_manifest(store, shardset)  # verifies the manifest sha256 before anything runs
    schema = manifest.pa_schema()
    for column in (config.feature_column, config.label_column):
        if column not in schema.names:
            raise ValueError(f"training data has no column {column!r}; columns: {schema.names}")
    spec_tuple = tensor_spec(schema.field(config.feature_column))
    if spec_tuple is None:
        raise ValueError(f"column {config.feature_column!r} is not a tensor column (no shape/dtype metadata)")
    feature_shape, feature_dtype = spec_tuple
    val_set = ShardSet.coerce(validation_data) if validation_data is not None else None
    if val_set is None and config.val_fraction > 0 and config.id_column not in schema.names:
        raise ValueError(f"val_fraction needs an id column {config.id_column!r} (or pass validation_data)")
    train_ds, val_ds = datasets_for(store, shardset, val_set, config)
    cache = config.cache_data if config.cache_data is not None else shardset.total_bytes < CACHE_LIMIT_BYTES

    fingerprint = (
        f"{config.fingerprint()}-{shardset.manifest_sha256[:12]}-{factory.name}-{_digest(kwargs)}-{code.digest[:12]}"
    )
    resumable = _prepare_checkpoint_dir(store, run, fingerprint)
    base = checkpoint_uri(store, run)
    fit_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    events = base.join(f"events/{fit_id}")
    out_dir = output_uri(output_root or str(store.root), run.dag_id, run.task_id, run.logical_date, run.run_id)
    spec = LoopSpec(
        config=replace(config, train_step=None),  # the step travels as a UserCallable (``step``)
        model_factory=factory,
        factory_kwargs=kwargs,
        feature_shape=tuple(feature_shape),
        feature_dtype=feature_dtype.name,
        store=store,
        events_uri=str(events),
        weights_dir_uri=str(store.resolve(out_dir).join("weights")),
        fingerprint=fingerprint,
        has_val=val_ds is not None,
        step=step,
    )
    log.info(
        "training %s%s on %s (%d rows, %d shards) with %d workers; %s",
        factory.name,
        f" (user code {code.describe()})" if code else "",
        shardset.manifest_uri,
        shardset.num_rows,
        shardset.num_shards,
        config.num_workers,
        "resuming from the last checkpoint" if resumable else "no checkpoint to resume",
    )
    started = time.perf_counter()
    label = f"{run.dag_id}.{run.task_id} {run.run_id}"
    with admitted(config.cpus_needed(), label, config.describe_need(), config.admission_timeout_s, log.info):
        datasets = {"train": train_ds} | ({"val": val_ds} if val_ds is not None else {})
        # cached: materialised on the cluster (this process holds only block references) and cut into one
        # equal, deterministic split per worker here, so no worker waits for a streaming-split coordinator
        splits = cached_splits(datasets, config.num_workers) if cache else None
        apply_timeouts(config)
        trainer = _trainer(spec, store, base, {} if splits else datasets, splits)
        with EventWatcher(store, events, config.epochs, progress, describe_timeouts(config)) as watcher:
            try:
                result = trainer.fit()
            except Exception as exc:
                raise TrainingFailed(f"Ray Train failed for run {run.run_id}: {exc}") from exc
            finally:
                _ACTIVE_CONTROLLERS.clear()
    if getattr(result, "error", None) is not None:
        raise TrainingFailed(f"Ray Train failed for run {run.run_id}: {result.error}")
    metrics = dict(result.metrics or {})
    if "weights_uri" not in metrics:
        raise TrainingFailed("training finished without writing weights (no final epoch report from rank 0)")
    first_start = watcher.starts[0] if watcher.starts else 0
    ref = ModelRef(
        weights_uri=metrics["weights_uri"],
        weights_sha256=metrics["weights_sha256"],
        model_factory=factory.name,
        input_shape=[int(d) for d in feature_shape],  # one sample, no batch dimension
        factory_kwargs=kwargs,
        metrics={
            "val_accuracy": metrics["val_accuracy"],
            "val_loss": metrics["val_loss"],
            "train_loss": metrics["train_loss"],
            "samples_per_s": metrics["samples_per_s"],
            "epoch_seconds": metrics["epoch_seconds"],
            "epochs": config.epochs,
            "restarts": watcher.restarts,
            "resumed_from_epoch": first_start,
            "num_workers": config.num_workers,
            "wall_seconds": round(time.perf_counter() - started, 3),
            "val_samples": metrics["val_samples"],
            "precision": config.precision,
            **({"bf16_native": metrics["bf16_native"]} if "bf16_native" in metrics else {}),
        },
        trained_on=shardset.to_dict(),
        producer=Producer(
            dag_id=run.dag_id,
            task_id=run.task_id,
            run_id=run.run_id,
            logical_date=run.logical_date,
            try_number=run.try_number,
        ),
        code=code.describe(),
    )
    store.write_bytes(base.join("result.json"), ref.to_json().encode())
    store.delete_prefix(base.join(RAY_RUN_NAME))  # done: a cleared task trains afresh
    return ref


def _trainer(
    spec: LoopSpec, store: ShardStore, base: StoreURI, datasets: dict[str, Any], splits: dict[str, list[Any]] | None
) -> Any:
    import ray.train
    from ray.train.torch import TorchConfig

    config = spec.config
    return _make_trainer(
        train_loop,
        train_loop_config={"spec": spec} | ({"splits": splits} if splits else {}),
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers, use_gpu=False, resources_per_worker=dict(config.resources_per_worker)
        ),
        run_config=ray.train.RunConfig(
            name=RAY_RUN_NAME,
            storage_path=store.arrow_path(base),
            storage_filesystem=store.arrow_filesystem(),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
        dataset_config=ingest_config(config.data_cpus),
    )


_ACTIVE_CONTROLLERS: list[Any] = []


def _abortable_trainer_class() -> type:
    """TorchTrainer that remembers its controller, so on_kill can abort it the way Ctrl-C does.

    A graceful abort also stops Ray Train's detached PlacementGroupCleaner; merely disconnecting the driver
    leaves that actor behind when it cannot reach the state API.
    """
    from ray.train.torch import TorchTrainer

    class AbortableTorchTrainer(TorchTrainer):  # type: ignore[misc]
        def _register_sigint_handler(self, controller: Any) -> None:
            _ACTIVE_CONTROLLERS.append(controller)
            super()._register_sigint_handler(controller)  # type: ignore[misc]

    return AbortableTorchTrainer


def _make_trainer(*args: Any, **kwargs: Any) -> Any:
    return _abortable_trainer_class()(*args, **kwargs)


def stop_current_job(timeout: float = 30.0) -> list[str]:
    """Stop everything this Ray driver started (trainer controller, workers, Ray Data) and disconnect.

    Non-detached actors are fate-shared with their driver, so disconnecting ends them; we then wait until the
    cluster reports none of this job's actors alive. Returns the ids of actors still alive after ``timeout``.
    """
    import ray

    if not ray.is_initialized():
        return []
    context = ray.get_runtime_context()
    job_id, address = context.get_job_id(), context.gcs_address
    abort_active_trainings(timeout)
    ray.shutdown()
    return wait_job_actors_gone(job_id, timeout, address=address)


def abort_active_trainings(timeout: float = 30.0) -> None:
    """Abort the Ray Train runs this process drives, the way Ctrl-C does (their detached helpers end too)."""
    import ray

    while _ACTIVE_CONTROLLERS:
        controller = _ACTIVE_CONTROLLERS.pop()
        try:
            ray.get(controller.abort.remote(), timeout=timeout)
        except Exception:  # already gone, or aborting raced with the end of the run
            log.debug("controller abort failed", exc_info=True)


def wait_job_actors_gone(job_id: str, timeout: float = 30.0, address: str | None = None) -> list[str]:
    """Actor ids of ``job_id`` still ALIVE after waiting up to ``timeout`` (empty list = clean)."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + timeout
    alive: list[str] = []
    while True:
        try:
            actors = list_actors(
                address=address, filters=[("job_id", "=", job_id)], limit=1000, raise_on_missing_output=False
            )
            alive = [a.actor_id for a in actors if a.state not in ("DEAD",)]
        except Exception:  # state API unreachable (no dashboard): nothing more we can check
            log.debug("could not list actors", exc_info=True)
            return []
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(1.0)
