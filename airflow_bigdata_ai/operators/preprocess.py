"""SparkPreprocessOperator: a thin Airflow face on :func:`airflow_bigdata_ai.preprocess.preprocess`.

Construction imports nothing heavy (DAG parsing stays cheap); ``execute`` attaches to the shared
cluster over Spark Connect, runs the core with a per-task job tag (so ``on_kill`` cancels this task's
Spark jobs and nothing else), and returns the ShardSet reference to XCom.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_bigdata_ai.operators.base import SharedClusterOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_bigdata_ai.preprocess.engine import Progress


class SparkPreprocessOperator(SharedClusterOperator):
    """Preprocess images (or Parquet/CSV rows) data-parallel on the shared cluster into a ShardSet.

    :param source: a URI (image folder, labels from sub-folders) or a dict of
        :class:`~airflow_bigdata_ai.preprocess.SourceSpec` fields (``uri``, ``format``, ``labels``, ``classes``...).
    :param transform: a callable (image -> array or dict), an import path ``"pkg.module:function"``, or a
        list of built-in steps (``convert``, ``resize``, ``center_crop``, ``crop``, ``to_tensor``, ``normalize``).
        Paths and steps are templated; a callable is kept out of templating (Airflow would call it with the
        context) in :attr:`transform_callable`. User modules travel with the job (no cluster restart).
    :param transform_kwargs: keyword arguments for a user function (templated, e.g. ``{"size": "{{ params.size }}"}``;
        rendered strings are converted to the types the function's parameters declare).
    :param guards: ``{"max_pixels": ..., "channels": [...]}`` checked before decoding / before user code.
    :param output_uri: full output location; default is ``<output_root>/<dag>/<task>/ds=<logical date>``
        (``run=<run id>`` for a run without a logical date).
    :param rows_per_shard: the most rows one shard holds (shards are cut evenly).
    :param parallelism: Spark tasks, one per core (default: the cores the shared cluster publishes). The
        shard count is rounded up to a multiple of it: pin it to keep checksums stable if the cluster grows.
    :param max_bad_fraction: fail (without retries) when more than this fraction is quarantined.
    """

    template_fields: Sequence[str] = (
        "source",
        "output_uri",
        "output_root",
        "transform",
        "transform_kwargs",
        "guards",
        "output_spec",
        "rows_per_shard",
        "parallelism",
        "max_bad_fraction",
    )
    template_fields_renderers = {"source": "json", "transform": "json", "transform_kwargs": "json", "guards": "json"}
    ui_color = "#fdf1e3"

    def __init__(
        self,
        *,
        source: str | Mapping[str, Any],
        transform: Callable[..., Any] | str | Sequence[Mapping[str, Any]] | None = None,
        transform_kwargs: Mapping[str, Any] | None = None,
        guards: Mapping[str, Any] | None = None,
        output_spec: Mapping[str, Sequence[Any]] | None = None,
        output_uri: str | None = None,
        rows_per_shard: int | str = 512,
        parallelism: int | str | None = None,
        max_bad_fraction: float | str = 0.01,
        progress_interval_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        # Airflow calls any callable it finds in a template field (with context=...): keep callables apart
        self.transform_callable: Callable[..., Any] | None = None
        self.transform: str | Sequence[Mapping[str, Any]] | None = None
        to_spec = getattr(transform, "to_spec", None)
        if to_spec is not None:  # an ImagePipeline: plain steps, templated like a list
            self.transform = to_spec()
        elif callable(transform):
            self.transform_callable = transform
        else:
            self.transform = transform
        self.transform_kwargs = transform_kwargs
        self.guards = guards
        self.output_spec = output_spec
        self.output_uri = output_uri
        self.rows_per_shard = rows_per_shard
        self.parallelism = parallelism
        self.max_bad_fraction = max_bad_fraction
        self.progress_interval_s = progress_interval_s

    def _log_progress(self, progress: Progress) -> None:
        self.log.info(
            "Progress: %d/%d inputs, %d/%d shards, %.1f rows/s",
            progress.rows_done,
            progress.rows_total,
            progress.shards_done,
            progress.shards_total,
            progress.rows_per_s,
        )

    def _settings(self) -> dict[str, Any]:
        """The rendered numeric settings; a value that is not a number fails now, without retries."""
        try:
            parallelism = None if self.parallelism in (None, "", "None") else int(self.parallelism)  # type: ignore[arg-type]
            return {
                "rows_per_shard": int(self.rows_per_shard),
                "parallelism": parallelism,
                "max_bad_fraction": float(self.max_bad_fraction),
            }
        except (TypeError, ValueError) as exc:
            from airflow_bigdata_ai.preprocess import SettingsError

            raise SettingsError(f"rows_per_shard, parallelism and max_bad_fraction must be numbers: {exc}") from exc

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_bigdata_ai.preprocess import SettingsError, SourceLayoutError, TooManyBadRecords
        from airflow_bigdata_ai.preprocess.core import prepare, run_prepared
        from airflow_bigdata_ai.preprocess.plan import coerce_source
        from airflow_bigdata_ai.usercode import UserCodeError

        # a retry cannot fix these: a missing module, impossible settings, a malformed labels file, the same
        # bad data. Everything but the last is found here, before attaching to (or starting) the cluster.
        not_retried = (UserCodeError, SettingsError, SourceLayoutError, TooManyBadRecords)
        try:
            spec = coerce_source(self.source)
            if self.output_uri:
                store, location = self.hook.store_for(self.output_uri), self.output_uri
            else:
                store, location = self.output_location(context)
            prepared = prepare(
                spec,
                location,
                transform=self.transform_callable if self.transform_callable is not None else self.transform,
                transform_kwargs=self.transform_kwargs,
                guards=self.guards,
                output_spec=self.output_spec,
                source_store=self.hook.store_for(spec.uri) if spec.uri else store,
                output_store=store,
                **self._settings(),
            )
        except not_retried as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        attached = self.attach_cluster(context)
        self._tag = self.job_tag(context)
        try:
            self._spark = attached.spark()
            self.log.info("Preprocessing %s -> %s (Spark job tag %s)", spec.describe(), location, self._tag)
            self.record_lineage(inputs=_source_lineage(spec, self._spark))
            with attached.guard("preprocessing"):
                shardset = run_prepared(
                    prepared,
                    spark=self._spark,
                    producer=self.producer(context),
                    progress=self._log_progress,
                    progress_interval_s=self.progress_interval_s,
                    tag=self._tag,
                )
        except not_retried as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._spark = None
            attached.close()
        stats = shardset.stats
        self.log.info(
            "Committed %s: %d rows in %d shards; %d quarantined %s",
            shardset.manifest_uri,
            shardset.num_rows,
            shardset.num_shards,
            stats.get("quarantined", 0),
            stats.get("by_reason", {}),
        )
        return self.publish(context, shardset)  # signed; also the outlet events' reference

    def on_kill(self) -> None:
        """Interrupt only the Spark operations carrying this attempt's tag (other tasks share the app)."""
        self.interrupt_spark_tag()


def _source_lineage(spec: Any, spark: Any) -> list[dict[str, Any]]:
    """The datasets a source reads: its store location, its table, or the tables its query names."""
    from airflow_bigdata_ai.lineage import sql_tables, store_dataset, table_dataset
    from airflow_bigdata_ai.tables.publish import table_location

    if not spec.is_query:
        return [store_dataset(spec.uri)]
    names = [spec.table] if spec.table else sql_tables(spec.sql)
    return [table_dataset(name, table_location(spark, name, missing_ok=True)) for name in names]
