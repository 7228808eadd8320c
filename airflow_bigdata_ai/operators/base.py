"""Shared plumbing for operators that run on the shared cluster.

Translates Airflow context into core calls: which connection, where the date-partitioned output goes,
who produced it (for the reference), the extra links of the cluster the task actually used, the
signing of what a task returns and the checks of what it receives, and the Asset events that carry the
reference to asset-scheduled DAGs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink, XComArg
from airflow.sdk.exceptions import AirflowFailException

from airflow_bigdata_ai.connection import DEFAULT_CONN_ID
from airflow_bigdata_ai.links import RayDashboardLink, SparkUILink, push_cluster_links

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_bigdata_ai.cluster import AttachedCluster
    from airflow_bigdata_ai.connection import ReferencePolicy
    from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook
    from airflow_bigdata_ai.jobs import ClusterJobRunner, StageFailed, StageRequest
    from airflow_bigdata_ai.shards import ModelRef, Producer, ShardSet, ShardStore


class SharedClusterOperator(BaseOperator):
    """Base for tasks on the shared Spark-hosted Ray cluster. Cheap to construct: nothing heavy here."""

    template_fields: Sequence[str] = ("output_root",)
    operator_extra_links: tuple[BaseOperatorLink, ...] = (SparkUILink(), RayDashboardLink())

    def __init__(
        self,
        *,
        ray_on_spark_conn_id: str = DEFAULT_CONN_ID,
        output_root: str | None = None,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ray_on_spark_conn_id = ray_on_spark_conn_id
        self.output_root = output_root
        self.deferrable = deferrable  # only with a cluster service (a connection with jobs_url)
        self._submission: str | None = None  # the driver job this attempt runs on the cluster service
        self._own_job_only = False  # set once a job of an earlier try that this try reconnected to was stopped
        self._spark: Any = None  # the Spark Connect session while execute runs (for on_kill)
        self._tag: str | None = None  # this attempt's Spark job tag
        self._lineage: dict[str, list[dict[str, Any]]] = {"inputs": [], "outputs": []}  # for OpenLineage
        # reference field -> task id of the operator of this package whose XCom feeds it (set at construction,
        # before rendering replaces the XComArg with the value; see check_reference)
        self._reference_sources: dict[str, str] = {}

    @cached_property
    def hook(self) -> RayOnSparkHook:
        from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook

        return RayOnSparkHook(self.ray_on_spark_conn_id)

    def attach_cluster(self, context: Context) -> AttachedCluster:
        """Attach (starting the embedded cluster if needed) and record its links for the task view."""
        attached = self.hook.attach()
        endpoint = attached.endpoint
        self.log.info(
            "Attached to shared cluster %s (Spark UI %s, Ray dashboard %s)",
            endpoint.cluster_id,
            endpoint.spark_ui_url,
            endpoint.ray_dashboard_url,
        )
        push_cluster_links(context, endpoint.spark_ui_url, endpoint.ray_dashboard_url)
        return attached

    # -- the stage's driver: here (embedded) or as a job of the cluster service (remote) -------------------------
    @property
    def remote(self) -> bool:
        """True when the connection names a cluster service: the driver runs there, this task only waits."""
        return bool(self.hook.settings.jobs_url)

    def stage_request(self, context: Context, stage: str, params: dict[str, Any]) -> StageRequest:
        """``params`` as a request of this task attempt (its submission id is derived from the attempt)."""
        from airflow_bigdata_ai.jobs import StageRequest, StoreSpec, submission_id, submission_prefix

        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        prefix = submission_prefix(ti.dag_id, ti.task_id, ti.run_id, None if map_index in (-1, None) else map_index)
        root = self.hook.store_root
        options = self.hook.s3_options() if root.startswith("s3://") else None
        return StageRequest(
            stage=stage,
            submission_id=submission_id(prefix, getattr(ti, "try_number", None)),
            store=StoreSpec.of(root, options),
            params=params,
            task_key=prefix,
        )

    def cluster_runner(self) -> ClusterJobRunner:
        from airflow_bigdata_ai.jobs import ClusterJobRunner, JobsClient

        settings = self.hook.settings
        return ClusterJobRunner(JobsClient(settings.jobs_url, settings.auth_token), self.hook.store_for())

    def run_driver(
        self, context: Context, request: StageRequest, attached: AttachedCluster | None = None
    ) -> dict[str, Any]:
        """Run the stage's driver and return what it produced (``"reference"``...); a deferrable task defers.

        Embedded: in this process on ``attached`` (:class:`~airflow_bigdata_ai.jobs.InProcessRunner`), which the
        caller owns (None: a stage that needs no cluster, such as local inference). Remote: as a job of the
        cluster service, whose log lines come into this task's log; a retry reconnects to a job still running.
        A driver error a retry cannot fix fails the task without retries.
        """
        from airflow_bigdata_ai.jobs import ClusterAuthError, InProcessRunner, StageFailed

        try:
            if not self.remote:
                return InProcessRunner(attached, self.log.info, self.hook.store_for).run(request)
            runner = self.cluster_runner()
            self._submission = runner.submit(request, reconnect=not self._own_job_only)
            push_cluster_links(context, "", self.hook.settings.jobs_url)
            if self._submission == request.submission_id:
                self.log.info("Driver job %s submitted to %s", self._submission, self.hook.settings.jobs_url)
            else:  # the runner logged why: an earlier try's job still runs (or finished with this request)
                self.log.info(
                    "Following the driver job %s of an earlier try on %s", self._submission, self.hook.settings.jobs_url
                )
            if self.deferrable:
                from airflow_bigdata_ai.triggers.cluster_job import ClusterJobTrigger

                trigger = ClusterJobTrigger(conn_id=self.ray_on_spark_conn_id, submission_id=self._submission)
                self.defer(trigger=trigger, method_name="execute_complete")
            runner.wait(self._submission, lambda line: self.log.info("%s", line))
            return runner.result(self._submission, request.store.root)
        except StageFailed as exc:
            if self._earlier_job_was_stopped(exc, context):
                return self.run_driver(context, request, attached)
            _fail_unless_retryable(exc)
            raise
        except ClusterAuthError as exc:
            raise AirflowFailException(str(exc)) from exc

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Back from the trigger: read what the driver recorded and finish like ``execute`` does."""
        from airflow_bigdata_ai.jobs import StageFailed

        self._submission = submission = event["submission_id"]
        self.log.info("Driver job %s ended %s %s", submission, event["status"], event.get("message", ""))
        try:
            result = self.cluster_runner().result(submission, self.hook.store_root)
        except StageFailed as exc:
            if self._earlier_job_was_stopped(exc, context):
                return self.execute(context)
            _fail_unless_retryable(exc)
            raise
        return self.finish(context, result)

    def _earlier_job_was_stopped(self, exc: StageFailed, context: Context) -> bool:
        """Whether the job this try reconnected to, an earlier try's, was stopped by someone else: a task cleared
        while deferred starts its next try before the triggerer's ``on_kill`` stops the old job. Then this try runs
        a job of its own instead of failing (once: ``_own_job_only``)."""
        from airflow_bigdata_ai.jobs.request import is_of_try

        submission = self._submission
        if exc.error_type != "Stopped" or self._own_job_only or not submission:
            return False
        if is_of_try(submission, context["ti"].try_number):
            return False
        self.log.info("The driver job %s of an earlier try was stopped; this try runs its own", self._submission)
        self._own_job_only = True
        return True

    def finish(self, context: Context, result: dict[str, Any]) -> Any:
        """Turn the driver's reference into this task's return value (each operator logs and publishes)."""
        raise NotImplementedError

    def stop_driver_job(self) -> None:
        """on_kill in remote mode: stop this attempt's driver job on the cluster."""
        if self._submission and self.remote:
            stopped = self.cluster_runner().cancel(self._submission)
            self.log.info("Stopped the driver job %s: %s", self._submission, stopped)

    def job_tag(self, context: Context) -> str:
        """Unique per task attempt; Spark tags may not contain commas, so keep a safe alphabet."""
        ti = context["ti"]
        raw = f"abai-{ti.dag_id}-{ti.task_id}-{ti.run_id}-{getattr(ti, 'map_index', -1)}-{getattr(ti, 'try_number', 0)}"
        return re.sub(r"[^A-Za-z0-9_.:+=-]", "_", raw)

    def interrupt_spark_tag(self) -> None:
        """Interrupt only the Spark operations carrying this attempt's tag (other tasks share the app)."""
        spark, tag = self._spark, self._tag
        if spark is not None and tag:
            self.log.info("Interrupting Spark operations tagged %s", tag)
            try:
                spark.interruptTag(tag)
            except Exception:  # the session may be closing already; nothing else to cancel
                self.log.exception("interruptTag(%s) failed", tag)

    def producer(self, context: Context) -> Producer:
        from airflow_bigdata_ai.shards import Producer

        ti = context["ti"]
        logical_date = context.get("logical_date")
        return Producer(
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            logical_date=logical_date.isoformat() if logical_date else None,
            try_number=getattr(ti, "try_number", None),
        )

    def output_location(self, context: Context) -> tuple[ShardStore, str]:
        """The store and the deterministic location of this task's output.

        ``<root>/<dag>/<task>/ds=<logical date>``; a run without a logical date (asset-triggered) writes to
        ``run=<run id>`` instead, so it never replaces another such run's output.
        """
        from airflow_bigdata_ai.shards import output_uri

        root = self.output_root or self.hook.store_root
        store = self.hook.store_for(root)
        ti = context["ti"]
        location = output_uri(root, ti.dag_id, ti.task_id, context.get("logical_date"), ti.run_id)
        if getattr(ti, "map_index", -1) not in (-1, None):
            location = f"{location}/map_index={ti.map_index}"
        return store, location

    # -- references: sign what we return, check what we receive ---------------------------------------------
    @cached_property
    def references(self) -> ReferencePolicy:
        """The deployment's signing key and unsigned rule, from the connection (not from the store/cluster hook)."""
        from airflow_bigdata_ai.hooks.ray_on_spark import RayOnSparkHook

        return RayOnSparkHook(self.ray_on_spark_conn_id).reference_policy()

    def track_reference_sources(self, *names: str) -> None:
        """Remember which reference fields read another shared-cluster operator's XCom (call at the end of __init__).

        Such an operator always signs and names itself as producer, so its value must be signed and produced by
        that task in this very DAG run: a validly signed reference of another date or DAG pasted into the XCom
        through the REST API is refused too.
        """
        for name in names:
            value = getattr(self, name, None)
            if isinstance(value, XComArg):
                sources = [op for op, _key in value.iter_references()]
                if len(sources) == 1 and isinstance(sources[0], SharedClusterOperator):
                    self._reference_sources[name] = sources[0].task_id

    def record_lineage(self, *, inputs: Sequence[dict[str, Any]] = (), outputs: Sequence[dict[str, Any]] = ()) -> None:
        """Remember datasets this task read or wrote (descriptors of :mod:`airflow_bigdata_ai.lineage`)."""
        self._lineage["inputs"].extend(inputs)
        self._lineage["outputs"].extend(outputs)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The inputs and outputs this task recorded, for the OpenLineage provider's listener."""
        from airflow_bigdata_ai.lineage import LineageRecorder

        return LineageRecorder(list(self._lineage["inputs"]), list(self._lineage["outputs"])).operator_lineage()

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """A failed task still names what it read (its outputs were never published)."""
        from airflow_bigdata_ai.lineage import LineageRecorder

        return LineageRecorder(list(self._lineage["inputs"]), []).operator_lineage()

    def check_reference(self, context: Context, name: str, kind: type[ShardSet] | type[ModelRef]) -> Any:
        """The reference in field ``name``, parsed and verified; a failure fails the task without retries."""
        from airflow_bigdata_ai.shards import InvalidReference

        try:
            ref = kind.coerce(getattr(self, name))
            source = self._reference_sources.get(name)
            signed = self.references.check(ref, name, require_signature=source is not None)
            if source is not None:
                _check_producer(ref, name, source, context)
        except InvalidReference as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        self.record_lineage(inputs=[_lineage_of(ref)])
        if not signed:
            self.log.warning(
                "%s: accepting an unsigned %s (connection %s: unsigned_references=accept, or no key configured)",
                name,
                ref.KIND,
                self.ray_on_spark_conn_id,
            )
        return ref

    def publish(self, context: Context, ref: ShardSet | ModelRef) -> dict[str, Any]:
        """Sign the reference this task returns and attach the same signed dict to every Asset outlet's event.

        Done here, not in ``post_execute``: Airflow 3.3's task runner calls ``post_execute(context)`` without the
        result, so an outlet event filled there never carried the reference.
        """
        from airflow.sdk import Asset

        signed = self.references.sign(ref).to_dict()
        self.record_lineage(outputs=[_lineage_of(ref)])
        uri = signed.get("manifest_uri") or signed.get("weights_uri")
        for outlet in self.outlets or ():
            if isinstance(outlet, Asset):
                event = context["outlet_events"][outlet]
                event.extra.update({"kind": signed["kind"], "uri": uri, "reference": signed})
        return signed


def _fail_unless_retryable(exc: StageFailed) -> None:
    """A driver error that another try meets again fails the task now, without retries."""
    if not exc.retryable:
        raise AirflowFailException(str(exc)) from exc


def _check_producer(ref: ShardSet | ModelRef, name: str, source: str, context: Context) -> None:
    """The value of ``source``'s XCom must be ``source``'s output in this DAG run (not another date's or DAG's)."""
    from airflow_bigdata_ai.shards import InvalidReference

    ti, producer = context["ti"], ref.producer
    same_task = producer.task_id == source or producer.task_id.startswith(f"{source}__map_index=")
    if producer.dag_id != ti.dag_id or producer.run_id != ti.run_id or not same_task:
        raise InvalidReference(
            f"{name}: the {ref.KIND} in task {source!r}'s XCom was produced by dag {producer.dag_id!r}, task "
            f"{producer.task_id!r}, run {producer.run_id!r}, not by {source!r} in this run ({ti.dag_id!r}, "
            f"{ti.run_id!r}): another run's or DAG's output was put into this run's XCom. A retry cannot fix this"
        )


def _lineage_of(ref: ShardSet | ModelRef) -> dict[str, Any]:
    from airflow_bigdata_ai.lineage import model_dataset, shardset_dataset

    return model_dataset(ref) if hasattr(ref, "weights_uri") else shardset_dataset(ref)
