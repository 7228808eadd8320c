"""The docs state facts the code decides: defaults, environment variables, output layout (issue 13, defect 8).

Each check takes the value from the code and looks for it in the page a user reads, so changing a default
without the docs (or the docs without the code) fails here.
"""

from __future__ import annotations

import os
import re

import pytest

from airflow_bigdata_ai.cluster.config import ENV_HOME, ENV_STATE_DIR, ClusterConfig, state_root
from airflow_bigdata_ai.connection import RAY_ON_SPARK_CONN_FIELDS, ConnectionSettings
from airflow_bigdata_ai.shards import output_uri

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STORE_ENV = "AIRFLOW_BIGDATA_AI_STORE"


def _read(*parts: str) -> str:
    with open(os.path.join(REPO, *parts)) as handle:
        return handle.read()


def _flat(text: str) -> str:
    """Line breaks of the reST source as spaces, so a phrase may wrap."""
    return re.sub(r"\s+", " ", text)


@pytest.fixture()
def defaults(monkeypatch):
    for name in (ENV_HOME, ENV_STATE_DIR, STORE_ENV):
        monkeypatch.delenv(name, raising=False)
    return ConnectionSettings.from_parts("ray_on_spark_default", None, None, None)


def test_home_and_environment_variables_are_documented(defaults):
    connection = _flat(_read("docs", "connection.rst"))
    home = state_root()
    assert home == os.path.expanduser("~/.cache/airflow-bigdata-ai")
    assert f"``{ENV_HOME}``" in connection and "``~/.cache/airflow-bigdata-ai``" in connection
    assert f"``{ENV_STATE_DIR}``" in connection and f"``{STORE_ENV}``" in connection
    assert defaults.state_dir == os.path.join(home, "clusters", "ray_on_spark_default")
    assert f"$AIRFLOW_BIGDATA_AI_HOME/clusters/{os.path.basename(defaults.state_dir)}" in connection
    assert defaults.store_root == os.path.join(home, "store")
    assert "$AIRFLOW_BIGDATA_AI_HOME/store" in connection
    assert ENV_HOME in _read("README.md")


def test_idle_timeout_default_is_documented(defaults):
    seconds = ClusterConfig().idle_timeout_s
    assert defaults.idle_timeout_s == seconds == RAY_ON_SPARK_CONN_FIELDS["idle_timeout_s"]["schema"]["default"]
    connection = _flat(_read("docs", "connection.rst"))
    assert f"Default ``{seconds:.0f}``" in connection and "``0``: never" in connection
    assert f"{seconds:.0f} s" in _read("README.md")


def test_output_locations_are_documented():
    connection = _flat(_read("docs", "connection.rst"))
    dated = output_uri("/store", "dag", "task", "2026-11-24T00:00:00+00:00", "manual__x")
    assert dated == "file:///store/dag/task/ds=2026-11-24"
    assert "``<store_root>/<dag_id>/<task_id>/ds=<logical date>/``" in connection
    assert output_uri("/s", "d", "t", "2026-11-24T06:00:00+00:00").endswith("/ds=2026-11-24T06-00-00")
    assert "``ds=2026-11-24T06-00-00``" in connection
    undated = output_uri("/s", "d", "t", None, "asset_triggered__2026-11-24T10:15:00.123456+00:00")
    assert f"``{undated.rsplit('/', 1)[1]}``" in connection
    for page in (connection, _flat(_read("docs", "concepts.rst")), _flat(_read("README.md"))):
        assert "run=<run id>" in page


def test_security_page_says_what_listens_where_as_the_loopback_test_checks_it():
    security = _flat(_read("docs", "security.rst"))
    assert "all interfaces" not in security and "0.0.0.0;" not in security
    assert "on 127.0.0.1 only" in security and "the GCS, the raylets" in security
    assert "tests/integration/test_cluster_loopback.py" in security
    assert os.path.exists(os.path.join(REPO, "tests", "integration", "test_cluster_loopback.py"))
    assert "RAY_AUTH_MODE=token" in security


def test_xcom_size_is_not_understated():
    for page in (_flat(_read("README.md")), _flat(_read("docs", "concepts.rst"))):
        assert "a few hundred bytes" not in page
        assert "KB" in page
