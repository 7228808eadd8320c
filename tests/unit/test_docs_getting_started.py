"""Every snippet of docs/getting-started.rst runs: the fast ones here, the pipeline in tests/system.

The page's Python and shell files are ``literalinclude`` s of ``tests/system/user_project/`` (the acceptance
test ``tests/system/test_user_pipeline.py`` runs them end to end). Here: the inline ``code-block`` s are
extracted and run (the copy-and-generate commands, the project tree, the labels CSV, the make targets as a
dry run, the cluster CLI commands), the included files exist, and the DAG file parses cheaply in a fresh
Airflow. A new code block that no test handles fails :func:`test_every_code_block_is_handled`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "getting-started.rst"
PROJECT = REPO / "tests" / "system" / "user_project"
BIN = Path(sys.executable).parent


def code_blocks() -> list[tuple[str, str]]:
    """(language, dedented body) of every ``.. code-block::`` in the page, in order."""
    lines = PAGE.read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)\.\. code-block:: (\w+)\s*$", lines[i])
        i += 1
        if not match:
            continue
        indent = len(match.group(1))
        while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(":")):
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        width = min(len(line) - len(line.lstrip()) for line in body if line.strip())
        blocks.append((match.group(2), "\n".join(line[width:] for line in body).strip() + "\n"))
    return blocks


def block_with(language: str, needle: str) -> str:
    found = [body for lang, body in code_blocks() if lang == language and needle in body]
    assert len(found) == 1, f"expected one {language} block containing {needle!r}, found {len(found)}"
    return found[0]


def commands(body: str) -> list[str]:
    """Shell lines without their trailing comments."""
    return [line.split("  #")[0].strip() for line in body.splitlines() if line.strip() and not line.startswith("#")]


HANDLED = (
    ("bash", "make demo"),
    ("bash", "make airflow"),
    ("bash", "make_data.py"),
    ("text", "my_project/"),
    ("text", "path,label"),
)


def test_every_code_block_is_handled():
    blocks = code_blocks()
    assert len(blocks) == len(HANDLED), [b[1].splitlines()[0] for b in blocks]
    for language, needle in HANDLED:
        block_with(language, needle)


@pytest.fixture(scope="module")
def tried(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "try it" commands, run as written from a folder that has the repository's tests/ beside it."""
    work = tmp_path_factory.mktemp("try-it")
    (work / "tests").symlink_to(REPO / "tests")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = "set -euo pipefail\n" + "\n".join(commands(block_with("bash", "make_data.py")))
    subprocess.run(["bash", "-c", script], cwd=work, env=env, check=True, timeout=120)
    return work


def test_try_it_commands_build_the_project_tree(tried: Path):
    tree = block_with("text", "my_project/")
    stack: list[tuple[int, str]] = []
    listed = []
    for line in tree.splitlines():
        name = line.strip().split()[0]
        if name == "...":
            continue
        depth = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= depth:
            stack.pop()
        path = "/".join([p for _, p in stack] + [name.rstrip("/")])
        listed.append(path)
        if name.endswith("/"):
            stack.append((depth, name.rstrip("/")))
    assert "my_project/data/images/site_a/2026/img_0000.png" in listed
    for path in listed:
        assert (tried / path).exists(), f"the tree in the docs lists {path}, the commands did not make it"


def test_labels_csv_snippet_is_what_the_pipeline_reads(tried: Path):
    snippet = list(csv.reader(io.StringIO(block_with("text", "path,label"))))
    with open(tried / "my_project" / "data" / "labels.csv") as handle:
        generated = list(csv.reader(handle))
    assert snippet[0] == generated[0] == ["path", "label"]
    for row in snippet[1:]:
        assert row in generated, row
        assert (tried / "my_project" / "data" / "images" / row[0]).is_file()
    assert not (tried / "my_project" / "data" / "images" / "labels.csv").exists()  # outside the image folder


def test_make_targets_exist():
    """``make`` commands of the page, as a dry run (the real ones are the suite and the demo themselves)."""
    for needle in ("make demo", "make airflow"):
        for line in commands(block_with("bash", needle)):
            args = line.split()[1:]
            dry = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
            assert dry.returncode == 0, f"{line}: {dry.stderr}"
    port = subprocess.run(["make", "-n", "airflow", "AIRFLOW_PORT=8081"], cwd=REPO, capture_output=True, text=True)
    assert "AIRFLOW__API__PORT=8081" in port.stdout
    assert "`make airflow AIRFLOW_PORT=8081`" in block_with("bash", "make airflow")


def test_cluster_cli_commands_of_the_page(tmp_path):
    """The inline ``airflow-bigdata-ai cluster ...`` commands, against an empty home (nothing running)."""
    found = re.findall(r"``(airflow-bigdata-ai cluster \w+)``", PAGE.read_text())
    assert sorted(set(found)) == ["airflow-bigdata-ai cluster status", "airflow-bigdata-ai cluster stop"]
    env = {**os.environ, "AIRFLOW_BIGDATA_AI_HOME": str(tmp_path / "home")}
    env.pop("AIRFLOW_BIGDATA_AI_STATE_DIR", None)
    status = subprocess.run([str(BIN / "airflow-bigdata-ai"), "cluster", "status"], env=env, capture_output=True)
    assert json.loads(status.stdout)["alive"] is False
    stop = subprocess.run([str(BIN / "airflow-bigdata-ai"), "cluster", "stop"], env=env, capture_output=True)
    assert stop.returncode == 0


def test_included_files_exist():
    included = re.findall(r"^\.\. literalinclude:: (\S+)$", PAGE.read_text(), flags=re.M)
    assert len(included) >= 6
    for rel in included:
        path = (PAGE.parent / rel).resolve()
        assert path.is_file(), rel
        assert PROJECT in path.parents, f"{rel}: the page includes only the tested user project"


PARSE = """
import json, sys
from airflow.dag_processing.dagbag import BundleDagBag
bag = BundleDagBag(sys.argv[1], bundle_path=sys.argv[1])  # what the dag processor parses with
heavy = sorted(m for m in ("torch", "pyspark", "ray", "openvino") if m in sys.modules)
print(json.dumps({"dags": sorted(bag.dag_ids), "errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "heavy": heavy, "tasks": [t.task_id for t in bag.dags["my_vision_pipeline"].tasks]}))
"""


def test_the_dag_file_parses_cheaply(tmp_path):
    """The DAGs folder parsed as Airflow's DAG processor does: no import errors, no heavy imports."""
    dags = tmp_path / "dags"
    shutil.copytree(PROJECT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    out = subprocess.run([sys.executable, "-c", PARSE, str(dags)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["errors"] == {} and seen["dags"] == ["my_vision_pipeline"]
    assert seen["tasks"] == ["preprocess", "train", "infer"]
    assert seen["heavy"] == []
