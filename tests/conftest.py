"""Test-session environment: a private AIRFLOW_HOME with its own SQLite DB, loopback only.

Set before anything imports Airflow, so no test touches the user's Airflow or cluster state.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

_SESSION_HOME = tempfile.mkdtemp(prefix="abai-tests-")
os.environ.setdefault("AIRFLOW_HOME", os.path.join(_SESSION_HOME, "airflow"))
os.environ.setdefault("AIRFLOW_BIGDATA_AI_HOME", os.path.join(_SESSION_HOME, "abai"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"


def _session_dags_folder() -> str:
    """dag.test() serialises DAGs from the dags folder: link the example DAGs and the test DAGs into one."""
    folder = os.path.join(_SESSION_HOME, "dags")
    os.makedirs(folder, exist_ok=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for source in (os.path.join(repo, "dags_examples"), os.path.join(repo, "tests", "dags")):
        if os.path.isdir(source):
            for name in os.listdir(source):
                if name.endswith(".py") and not name.startswith("_"):
                    os.symlink(os.path.join(source, name), os.path.join(folder, name))
    return folder


os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", _session_dags_folder())
os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
os.environ.setdefault("NO_PROXY", "localhost,127.0.0.1")
os.environ.setdefault("no_proxy", "localhost,127.0.0.1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
_venv_bin = os.path.dirname(sys.executable)
if _venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _venv_bin + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Migrate the session's SQLite metadata DB once (about 3 s); tests that run DAGs request this."""
    subprocess.run([os.path.join(_venv_bin, "airflow"), "db", "migrate"], check=True, capture_output=True)
    return os.environ["AIRFLOW_HOME"]


# One real shared cluster per test session, for integration and system tests alike.
from tests.support.cluster_fixtures import attached, shared_cluster  # noqa: E402

__all__ = ["airflow_db", "attached", "shared_cluster"]
