"""Fresh imports of the example DAG files, so a DAG reads the scale and connection a test has just set."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_example_dag(file_name: str, factory: str, module_name: str) -> Any:
    """Execute ``dags_examples/<file_name>`` as ``module_name`` and return ``factory()`` (the DAG)."""
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(REPO, "dags_examples", file_name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, factory)()
