"""A reference rewritten through Airflow's REST API is refused by the task that reads it (issue 15, hostile input).

Real scheduler and API server (the session's ``example_airflow`` services, default connection = the embedded
default, so the key is the deployment's generated one, the services' ``$AIRFLOW_BIGDATA_AI_HOME/reference.key``).
A small DAG preprocesses a few
digits once; three training tasks read the preprocessing task's XCom (``return_value`` and two more keys the
test adds with the genuine value), held back by a gate task until the test has rewritten each with
``PATCH .../xcomEntries/{key}``: a validly signed reference of another date, the genuine reference moved to
another DAG's output (signature kept), and one moved outside the store root with the signature stripped. The
three trainings then run at once; each fails without retries, naming the field; none reaches the cluster.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import replace
from typing import Any

import pytest

from airflow_bigdata_ai.connection import DEFAULT_CONN_ID, ConnectionSettings
from airflow_bigdata_ai.shards import Producer, ShardSet

pytestmark = [pytest.mark.system, pytest.mark.integration, pytest.mark.timeout(900)]

DAG_ID = "abai_xcom_tampering"
KEYS = {"other_date": "return_value", "other_dag": "tampered_other_dag", "outside_root": "tampered_outside"}
DAG_FILE = f'''"""airflow DAG: preprocess once, then gated trainings reading its XCom (tests/system)."""
import os
import time

import pendulum
from airflow.sdk import DAG, Asset, task

from airflow_bigdata_ai.operators.preprocess import SparkPreprocessOperator
from airflow_bigdata_ai.operators.train import RayTrainOperator

with DAG("{DAG_ID}", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC"), params={{"gate": ""}}):

    @task
    def images() -> str:
        from airflow_bigdata_ai.examples.datasets.examples import example_scale, prepare_digits_source

        return prepare_digits_source(example_scale().digits_limit)

    prep = SparkPreprocessOperator(
        task_id="preprocess",
        source={{"uri": images(), "labels": "folders"}},
        transform=[{{"op": "convert", "mode": "L"}}, {{"op": "to_tensor", "dtype": "float32"}}],
        outlets=[Asset("abai_xcom_tampering_features")],
    )

    @task
    def gate(**context) -> None:
        deadline = time.monotonic() + 600
        while not os.path.exists(context["params"]["gate"]) and time.monotonic() < deadline:
            time.sleep(0.3)

    opened = gate()
    prep >> opened
    for case, key in {KEYS!r}.items():
        opened >> RayTrainOperator(
            task_id=f"train_{{case}}",
            train_data=prep.output[key],
            model_factory="airflow_bigdata_ai.examples.models.digits:make_digits_cnn",
            epochs=1,
            retries=2,
        )
'''


def _wait_state(api: Any, run_id: str, task_id: str, states: tuple[str, ...], timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    ti: dict[str, Any] = {}
    while time.monotonic() < deadline:
        ti = api.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")
        if ti["state"] in states:
            return ti
        if ti["state"] in ("failed", "upstream_failed") and ti["state"] not in states:
            raise AssertionError(f"{task_id} ended {ti['state']}")
        time.sleep(1)
    raise TimeoutError(f"{task_id} still {ti.get('state')} after {timeout_s}s")


def test_rewritten_references_are_refused_through_the_rest_api(
    example_airflow: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    services = example_airflow.services
    dag_file = os.path.join(services.dags_folder, f"{DAG_ID}.py")
    with open(dag_file, "w") as handle:
        handle.write(DAG_FILE)
    try:
        services.wait_for_dag(DAG_ID, timeout_s=180)
        flag = tmp_path / "gate"
        body = {"logical_date": "2026-11-24T00:00:00Z", "conf": {"gate": str(flag)}}
        run_id = services.api("POST", f"/dags/{DAG_ID}/dagRuns", json=body)["dag_run_id"]
        _wait_state(services, run_id, "preprocess", ("success",))
        prep_done = time.monotonic()
        xcoms = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/preprocess/xcomEntries"
        value = services.api("GET", f"{xcoms}/return_value")["value"]
        genuine = ShardSet.coerce(json.loads(value) if isinstance(value, str) else value)
        # the embedded default's key: generated once into the deployment's home, shared by every task
        monkeypatch.setenv("AIRFLOW_BIGDATA_AI_HOME", example_airflow.state_home)
        policy = ConnectionSettings.from_parts(
            DEFAULT_CONN_ID, None, None, {"state_dir": example_airflow.cluster_state_dir}
        ).reference_policy()
        policy.check(genuine, "preprocess XCom", require_signature=True)

        # the asset event carries the same signed reference (it did not carry any before: post_execute got None)
        events = services.api("GET", "/assets/events", params={"source_dag_id": DAG_ID, "source_run_id": run_id})
        extras = [e["extra"] for e in events["asset_events"]]
        assert [x.get("reference", {}).get("signature") for x in extras] == [genuine.signature], extras

        other_date = policy.sign(  # what GET .../xcomEntries of the 2026-11-23 run returns: validly signed
            replace(
                genuine,
                manifest_uri=genuine.manifest_uri.replace("ds=2026-11-24", "ds=2026-11-23"),
                producer=Producer(DAG_ID, "preprocess", "scheduled__2026-11-23T00:00:00+00:00", "2026-11-23", 1),
            )
        )
        other_dag = replace(genuine, manifest_uri=genuine.manifest_uri.replace(f"/{DAG_ID}/", "/digits_e2e/"))
        outside = replace(genuine, manifest_uri="file:///etc/abai/_manifests/x.json", signature="")
        tampered = {"other_date": other_date, "other_dag": other_dag, "outside_root": outside}
        expected = {
            "other_date": "produced by dag .* run 'scheduled__2026-11-23.*not by 'preprocess' in this run",
            "other_dag": "the signature of the ShardSet reference does not match: it was changed",
            "outside_root": "not signed, so the signature does not match",
        }
        for case, key in KEYS.items():
            if key != "return_value":  # another entry of the same task, holding the genuine value first
                entry = {"key": key, "value": genuine.to_dict()}
                services.api("POST", xcoms, json=entry)
            services.api("PATCH", f"{xcoms}/{key}", json={"value": tampered[case].to_dict()})
        flag.touch()
        for case in KEYS:
            ti = _wait_state(services, run_id, f"train_{case}", ("failed", "up_for_retry"), timeout_s=300)
            assert ti["state"] == "failed" and ti["try_number"] == 1, ti  # AirflowFailException: no retry
            log = os.path.join(
                services.home, "logs", f"dag_id={DAG_ID}", f"run_id={run_id}", f"task_id=train_{case}", "attempt=1.log"
            )
            with open(log, errors="replace") as handle:
                text = handle.read()
            assert re.search(f"AirflowFailException.*train_data: .*{expected[case]}", text), text[-3000:]
            assert "Attached to shared cluster" not in text, "refused before the cluster was touched"
            print(f"{case}: refused ({ti['duration']:.1f} s)")
        print(f"test time {time.monotonic() - started:.1f} s ({time.monotonic() - prep_done:.1f} s after preprocess)")
    finally:
        (tmp_path / "gate").touch()  # release the gate if an assertion left it waiting
        os.remove(dag_file)
