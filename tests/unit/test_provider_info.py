"""Provider metadata validates against Airflow's own schema and Airflow discovers the provider."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import airflow
import jsonschema

from airflow_bigdata_ai.get_provider_info import get_provider_info


def test_provider_info_validates_against_airflow_schema():
    schema_path = os.path.join(os.path.dirname(airflow.__file__), "provider_info.schema.json")
    with open(schema_path) as handle:
        schema = json.load(handle)
    jsonschema.validate(get_provider_info(), schema)


def test_entry_point_is_registered():
    eps = [ep for ep in entry_points(group="apache_airflow_provider") if ep.value.startswith("airflow_bigdata_ai")]
    assert len(eps) == 1 and eps[0].load()() == get_provider_info()


def test_every_declared_class_and_module_imports():
    info = get_provider_info()
    for group in ("operators", "hooks"):
        for entry in info[group]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for dotted in [c["hook-class-name"] for c in info["connection-types"]] + info["extra-links"]:
        module, _, name = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), name), dotted


def test_connection_form_is_declarative_and_token_is_the_password_field():
    conn = get_provider_info()["connection-types"][0]
    assert conn["connection-type"] == "ray_on_spark"
    assert "password" not in conn["ui-field-behaviour"]["hidden-fields"]
    assert conn["ui-field-behaviour"]["relabeling"]["password"] == "Auth token"
    for name, spec in conn["conn-fields"].items():
        assert spec["label"] and "type" in spec["schema"], name


def test_airflow_cli_lists_the_provider():
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "airflow"),
            "providers",
            "get",
            "airflow-bigdata-ai",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "airflow-bigdata-ai" in result.stdout
