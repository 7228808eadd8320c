"""The documentation builds with warnings as errors (what ``make docs`` runs), into a tmp dir."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(REPO, "docs")


def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            DOCS,
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    for page in ("index", "getting-started", "operator-preprocess", "operator-train", "operator-infer", "hook"):
        assert (tmp_path / "html" / f"{page}.html").exists(), page
    # the examples come from dags_examples/ through literalinclude markers: the code must be in the page
    html = (tmp_path / "html" / "operator-train.html").read_text()
    assert "RayTrainOperator" in html and "make_digits_cnn" in html
