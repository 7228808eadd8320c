"""Setup and teardown tasks for the shared cluster (use with ``.as_setup()`` / ``.as_teardown()``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_bigdata_ai.operators.base import SharedClusterOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class SetupRayOnSparkClusterOperator(SharedClusterOperator):
    """Start the shared cluster if it is not running (embedded) or check it is reachable (remote).

    Returns the endpoint record (no token) so downstream tasks and the UI can see which cluster ran.
    """

    template_fields = ()
    ui_color = "#e8f4ff"

    def execute(self, context: Context) -> dict[str, Any]:
        attached = self.attach_cluster(context)
        try:
            spark = attached.spark()
            self.log.info("Spark Connect OK: Spark %s", spark.version)
            attached.ray()
            import ray

            self.log.info("Ray OK: cluster resources %s", ray.cluster_resources())
        finally:
            attached.close()
        return attached.endpoint.to_dict()


class TeardownRayOnSparkClusterOperator(SharedClusterOperator):
    """Stop the shared cluster and every process it started, unless ``keep_running`` is set or others use it.

    The cluster is shared: another DAG may be training or preprocessing on it. Before stopping, the task asks
    the cluster who is working (jobs admitted to or queued for Ray, running Spark Connect jobs), waits up to
    ``wait_for_other_jobs_s`` for them to finish, and if some are still there it leaves the cluster running
    and says so (its idle timeout stops it later). The task then succeeds: a busy cluster is not an error.

    :param keep_running: leave the cluster up for later runs (the idle timeout still applies); templated.
    :param wait_for_other_jobs_s: how long to wait for other jobs before leaving the cluster running.
    """

    template_fields = ("keep_running",)
    operator_extra_links = ()  # it does not attach, so it records no cluster links
    ui_color = "#ffefe8"

    def __init__(
        self, *, keep_running: bool | str = False, wait_for_other_jobs_s: float = 300.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.keep_running = keep_running
        self.wait_for_other_jobs_s = wait_for_other_jobs_s

    def execute(self, context: Context) -> bool:
        from airflow_bigdata_ai.cluster.usage import wait_for_other_jobs

        keep = self.keep_running
        if isinstance(keep, str):
            keep = keep.strip().lower() in ("1", "true", "yes", "on")
        if keep:
            self.log.info("keep_running is set: the shared cluster stays up for later runs")
            return False
        config = self.hook.cluster_config()
        others = wait_for_other_jobs(config, self.wait_for_other_jobs_s, say=self.log.info)
        if others:
            self.log.warning(
                "Not stopping the shared cluster: after waiting %.0f s it is still in use by %d job(s): %s. "
                "It stops by itself once idle for its idle timeout (%.0f s).",
                self.wait_for_other_jobs_s,
                len(others),
                "; ".join(others),
                config.idle_timeout_s,
            )
            return False
        stopped = self.hook.stop_cluster()
        self.log.info("Shared cluster %s", "stopped" if stopped else "was not running")
        return stopped
