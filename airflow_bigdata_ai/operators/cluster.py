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
    """Stop the shared cluster and every process it started, unless ``keep_running`` is set.

    ``keep_running=True`` lets the next DAG run reuse the warm cluster (the idle timeout still applies).
    """

    template_fields = ("keep_running",)
    operator_extra_links = ()  # it does not attach, so it records no cluster links
    ui_color = "#ffefe8"

    def __init__(self, *, keep_running: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keep_running = keep_running

    def execute(self, context: Context) -> bool:
        keep = self.keep_running
        if isinstance(keep, str):
            keep = keep.strip().lower() in ("1", "true", "yes", "on")
        if keep:
            self.log.info("keep_running is set: the shared cluster stays up for later runs")
            return False
        stopped = self.hook.stop_cluster()
        self.log.info("Shared cluster %s", "stopped" if stopped else "was not running")
        return stopped
