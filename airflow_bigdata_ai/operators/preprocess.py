"""SparkPreprocessOperator: a thin Airflow face on :func:`airflow_bigdata_ai.preprocess.preprocess`.

Construction imports nothing heavy (DAG parsing stays cheap). ``execute`` checks the settings, then runs the
stage's driver (:func:`airflow_bigdata_ai.jobs.drivers.run_preprocess`) with a per-task Spark job tag: in this
process over Spark Connect (``on_kill`` cancels this task's Spark jobs and nothing else), or as a job of the
cluster service when the connection has a ``jobs_url`` (``deferrable=True`` waits in the triggerer). Returns
the ShardSet reference to XCom.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_bigdata_ai.operators.base import SharedClusterOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


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
        from dataclasses import asdict

        from airflow_bigdata_ai.preprocess import SettingsError, SourceLayoutError, TooManyBadRecords
        from airflow_bigdata_ai.preprocess.core import prepare
        from airflow_bigdata_ai.preprocess.plan import coerce_source
        from airflow_bigdata_ai.usercode import UserCodeError

        # a retry cannot fix these: a missing module, impossible settings, a malformed labels file, the same
        # bad data. Everything but the last is found here, before attaching to (or starting) the cluster; a
        # thin worker (remote) checks the settings and finds the user's module, the driver does the rest.
        not_retried = (UserCodeError, SettingsError, SourceLayoutError, TooManyBadRecords)
        try:
            spec = coerce_source(self.source)
            if self.output_uri:
                store, location = self.hook.store_for(self.output_uri), self.output_uri
            else:
                store, location = self.output_location(context)
            settings = self._settings()
            transform = self._shipped_transform()
            if not self.remote:
                prepare(
                    spec,
                    location,
                    transform=transform,
                    transform_kwargs=self.transform_kwargs,
                    guards=self.guards,
                    output_spec=self.output_spec,
                    source_store=self.hook.store_for(spec.uri) if spec.uri else store,
                    output_store=store,
                    **settings,
                )
        except not_retried as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        self._tag = self.job_tag(context)
        request = self.stage_request(
            context,
            "preprocess",
            {
                "source": self.source if isinstance(self.source, str) else dict(self.source),
                "transform": _encoded(transform),
                "transform_kwargs": self.transform_kwargs,
                "guards": self.guards,
                "output_spec": self.output_spec,
                "output_uri": location,
                "producer": asdict(self.producer(context)),
                "tag": self._tag,
                "progress_interval_s": self.progress_interval_s,
                **settings,
            },
        )
        if self.remote:
            return self.finish(context, self.run_driver(context, request))
        attached = self.attach_cluster(context)
        try:
            self._spark = attached.spark()  # the driver's session: on_kill interrupts this attempt's tag on it
            result = self.run_driver(context, request, attached)
        finally:
            self._spark = None
            attached.close()
        return self.finish(context, result)

    def _shipped_transform(self) -> Any:
        """The transform as it travels: built-in steps as they are; user code with its modules (found, not run,
        on a thin worker: the driver imports it on the cluster)."""
        from airflow_bigdata_ai.usercode import UserCallable

        target = self.transform_callable if self.transform_callable is not None else self.transform
        if callable(target) or (isinstance(target, str) and ":" in target):
            return UserCallable.of(target, check_import=not self.remote)
        return target

    def finish(self, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        from airflow_bigdata_ai.shards import ShardSet

        self.record_lineage(inputs=result.get("read") or [])
        return self.publish(context, ShardSet.coerce(result["reference"]))  # signed; also the outlet events'

    def on_kill(self) -> None:
        """Interrupt only the Spark operations carrying this attempt's tag (other tasks share the app); remote:
        stop this attempt's driver job, whose Spark Connect session ends with it."""
        self.interrupt_spark_tag()
        self.stop_driver_job()


def _encoded(transform: Any) -> Any:
    from airflow_bigdata_ai.jobs.request import encode_callable
    from airflow_bigdata_ai.usercode import UserCallable

    return encode_callable(transform) if isinstance(transform, UserCallable) else transform
