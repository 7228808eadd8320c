"""Sphinx configuration: built by `make docs` with warnings as errors (the suite runs that build)."""

project = "airflow-bigdata-ai"
author = "airflow-bigdata-ai contributors"
release = "0.1.0"
extensions: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
suppress_warnings: list[str] = []
