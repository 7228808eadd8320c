"""The package's tree shows the library's surface; example-only code lives in ``airflow_bigdata_ai.examples``."""

from __future__ import annotations

import ast
import pathlib

import airflow_bigdata_ai

PACKAGE = pathlib.Path(airflow_bigdata_ai.__file__).parent
LIBRARY = {
    "__init__.py", "__main__.py", "cli.py", "connection.py", "get_provider_info.py", "links.py", "usercode",
    "cluster", "hooks", "infer", "models", "operators", "preprocess", "shards", "train", "examples",
    "tables", "lineage.py", "jobs", "triggers",
}  # fmt: skip
EXAMPLE_ONLY = ("datasets", "demo.py", "report.py", "assets.py", "transforms.py", "sample_data.py")


def test_top_level_holds_only_the_library_and_one_examples_package() -> None:
    found = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert found == LIBRARY, f"unexpected top-level entries: {sorted(found ^ LIBRARY)}"
    for name in EXAMPLE_ONLY:
        assert (PACKAGE / "examples" / name).exists(), name
    assert not list((PACKAGE / "models").glob("digits*")) and not list((PACKAGE / "models").glob("traffic*"))


def test_the_library_never_imports_the_examples() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "examples" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            offenders += [
                f"{path.relative_to(PACKAGE)}: {n}" for n in names if n.startswith("airflow_bigdata_ai.examples")
            ]
    assert not offenders, offenders
