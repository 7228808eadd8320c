"""Extra links in the task view: the shared cluster's Spark UI and Ray dashboard.

Operators push the URLs of the cluster they used to XCom (keys below) so the link shows the
cluster that actually ran the task, even after the endpoint changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

SPARK_UI_XCOM_KEY = "spark_ui_url"
RAY_DASHBOARD_XCOM_KEY = "ray_dashboard_url"


class _XComURLLink(BaseOperatorLink):
    xcom_key = ""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key=self.xcom_key)
        return str(value) if value else ""


class SparkUILink(_XComURLLink):
    name = "Spark UI"
    xcom_key = SPARK_UI_XCOM_KEY


class RayDashboardLink(_XComURLLink):
    name = "Ray dashboard"
    xcom_key = RAY_DASHBOARD_XCOM_KEY


def push_cluster_links(context: Any, spark_ui_url: str, ray_dashboard_url: str) -> None:
    """Record the cluster URLs for this task instance's extra links."""
    ti = context["ti"]
    ti.xcom_push(key=SPARK_UI_XCOM_KEY, value=spark_ui_url)
    ti.xcom_push(key=RAY_DASHBOARD_XCOM_KEY, value=ray_dashboard_url)
