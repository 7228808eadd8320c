"""A backfill started from the Airflow UI in headless Chromium, and the task's links to the shared cluster.

Drives Debian's ``chromium`` (not a Playwright-downloaded browser) with Playwright: opens the DAG page of
``digits_e2e``, fills the Backfill dialog for one date, checks the run appears and succeeds (REST API and
UI), then reads the "Spark UI" and "Ray dashboard" extra links of the ``preprocess`` and ``train`` task
instances and compares them with the XCom values the operators pushed and with the shared cluster's
published endpoint. Screenshots of each step land in the test's tmp dir.

The date (2026-11-05) is not used by ``test_scheduler_backfill``. That test counts the DAG's backfill runs,
so this one removes its run once the backfill has completed (its outputs stay in the store).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

pytestmark = [pytest.mark.system, pytest.mark.integration, pytest.mark.timeout(1800)]

DAG_ID = "digits_e2e"
DATE = "2026-11-05"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LINK_TASKS = ("preprocess", "train")
LOOPBACK_URL = re.compile(r"^http://127\.0\.0\.1:\d+/?$")
UI_TIMEOUT_MS = 120_000  # the machine is shared and loaded: page loads can take a while


class Shots:
    """Numbered screenshots in the test's tmp dir (kept by pytest for the last runs)."""

    def __init__(self, page, folder: Path) -> None:
        self.page, self.folder, self.count = page, folder, 0

    def __call__(self, name: str) -> None:
        self.count += 1
        try:
            self.page.screenshot(path=str(self.folder / f"{self.count:02d}-{name}.png"), full_page=True)
        except Exception as exc:  # a screenshot is for debugging only
            print(f"screenshot {name} failed: {exc}")


@pytest.fixture
def page(tmp_path: Path) -> Iterator:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not installed (make test installs Debian's chromium)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            context.set_default_timeout(UI_TIMEOUT_MS)
            context.set_default_navigation_timeout(UI_TIMEOUT_MS)
            yield context.new_page()
        finally:
            context.close()


def xcom_value(api, run_id: str, task_id: str, key: str) -> str:
    entry = api.api(
        "GET",
        f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/{key}",
        params={"deserialize": True},
    )
    value = entry["value"]
    if isinstance(value, str) and value.startswith('"'):
        value = json.loads(value)
    return str(value)


def fill_backfill_dialog(page, date: str):
    """Trigger -> Backfill -> From/To = date 00:00; returns the dialog, ready to submit."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog").filter(
        has=page.get_by_role("heading", name=re.compile(r"^(Trigger Dag|Run Backfill)"))
    )
    expect(dialog).to_be_visible()
    dialog.get_by_text("Backfill", exact=True).click()
    heading = dialog.get_by_role("heading", name=re.compile(r"^Run Backfill"))
    expect(heading).to_be_visible()
    for label in ("From", "To"):
        dialog.get_by_role("group").filter(has_text=label).get_by_test_id("datetime-input").click()
        picker = page.get_by_role("dialog").filter(has=page.get_by_placeholder("YYYY/MM/DD"))
        picker.get_by_placeholder("YYYY/MM/DD").fill(date.replace("-", "/"))
        picker.get_by_placeholder("HH:mm").fill("00:00")
        heading.click()  # closes the date picker, keeps the dialog
        expect(picker).to_be_hidden()
    expect(dialog.get_by_text("1 run will be triggered")).to_be_visible()
    expect(dialog.get_by_text(re.compile(r"Missing Runs"))).to_be_visible()
    return dialog


def existing_backfill(api, date: str) -> dict | None:
    for backfill in api.api("GET", "/backfills", params={"dag_id": DAG_ID})["backfills"]:
        if backfill["from_date"].startswith(date) and backfill["to_date"].startswith(date):
            return backfill
    return None


def start_backfill_from_ui(page, api, date: str, shot, attempts: int = 4) -> dict:
    """Submit the Backfill dialog; returns the backfill the UI created.

    On SQLite, Airflow answers 503 "Database is locked" when the scheduler holds the write lock at that
    moment (seen once in a few runs on the loaded 2-core box); the backfill may or may not exist then.
    A user would press the button again: so does this, after checking through the API what exists.
    """
    dialog = fill_backfill_dialog(page, date)
    for attempt in range(1, attempts + 1):
        with page.expect_response(lambda r: r.url.endswith("/api/v2/backfills") and r.request.method == "POST") as info:
            dialog.get_by_role("button", name="Run Backfill").click()
        response = info.value
        if response.ok:
            return response.json()
        detail = f"POST /backfills from the UI -> {response.status}: {response.text()[:2000]}"
        assert response.status in (409, 503), detail
        print(f"attempt {attempt}: {detail}")
        shot(f"backfill-refused-{attempt}")
        found = existing_backfill(api, date)
        if found is not None:
            return found
        time.sleep(5)
        if not dialog.is_visible():
            dialog = fill_backfill_dialog(page, date)
    raise AssertionError(f"the UI could not create the backfill in {attempts} attempts: {detail}")


def wait_for_backfill_run(api, backfill_id: int, timeout_s: float = 120) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        runs = api.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"run_type": "backfill"})["dag_runs"]
        mine = [r for r in runs if (r.get("logical_date") or "").startswith(DATE)]
        if mine:
            return mine[0]["dag_run_id"]
        time.sleep(2)
    raise TimeoutError(f"backfill {backfill_id} created no run for {DATE} within {timeout_s}s")


def remove_backfill(api, backfill_id: int, timeout_s: float = 120) -> None:
    """Let the scheduler close the backfill (or cancel it), then delete its run: other tests count runs."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and not api.api("GET", f"/backfills/{backfill_id}").get("completed_at"):
        time.sleep(2)
    if not api.api("GET", f"/backfills/{backfill_id}").get("completed_at"):
        api.api("PUT", f"/backfills/{backfill_id}/cancel")
    runs = api.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"run_type": "backfill"})["dag_runs"]
    for run in runs:
        if (run.get("logical_date") or "").startswith(DATE):
            path = f"/dags/{DAG_ID}/dagRuns/{quote(run['dag_run_id'], safe='')}"
            if run["state"] in ("queued", "running"):  # a run the test gave up on: Airflow refuses to delete it
                api.api("PATCH", path, json={"state": "failed"})
            api.api("DELETE", path)


def test_backfill_from_the_ui_and_cluster_links(example_airflow, page, tmp_path: Path):
    from playwright.sync_api import expect

    api = example_airflow.services
    base = api.base_url
    shot = Shots(page, tmp_path)
    started = time.time()
    # Unpausing starts a scheduled run; the backfill's run goes beside it. Both train on the small shared
    # cluster: the cluster's admission queue runs one training at a time (before it, both hung).
    api.wait_for_dag(DAG_ID)

    backfill_id = None
    try:
        page.goto(f"{base}/dags/{DAG_ID}")
        expect(page.get_by_role("button", name="Trigger Dag")).to_be_visible()
        shot("dag-page")

        backfill = start_backfill_from_ui(page, api, DATE, shot)
        backfill_id = backfill["id"]
        assert backfill["dag_id"] == DAG_ID
        assert backfill["from_date"].startswith(DATE) and backfill["to_date"].startswith(DATE), backfill
        shot("backfill-started")

        run_id = wait_for_backfill_run(api, backfill_id)
        states = api.wait_for_runs(DAG_ID, [run_id], timeout_s=1200)
        assert states == {run_id: "success"}, states
        print(f"backfill run {run_id} succeeded {time.time() - started:.0f}s after the test started")

        # The run as the UI shows it: in the DAG's run list, and its own page in the success state.
        page.goto(f"{base}/dags/{DAG_ID}/runs")
        run_link = page.get_by_role("link", name=run_id, exact=True)
        expect(run_link.first).to_be_visible()
        shot("runs-list")
        run_link.first.click()
        expect(page).to_have_url(re.compile(re.escape(f"/dags/{DAG_ID}/runs/")))
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        shot("run-page")

        endpoint_file = os.path.join(example_airflow.cluster_state_dir, "endpoint.json")
        with open(endpoint_file) as handle:
            endpoint = json.load(handle)

        for task_id in LINK_TASKS:
            page.goto(f"{base}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{task_id}/details")
            spark = page.get_by_role("link", name="Spark UI", exact=True)
            ray = page.get_by_role("link", name="Ray dashboard", exact=True)
            expect(spark).to_be_visible()
            expect(ray).to_be_visible()
            shot(f"{task_id}-extra-links")

            spark_href, ray_href = spark.get_attribute("href"), ray.get_attribute("href")
            assert spark_href and LOOPBACK_URL.match(spark_href), spark_href
            assert ray_href and LOOPBACK_URL.match(ray_href), ray_href
            assert spark_href == xcom_value(api, run_id, task_id, "spark_ui_url")
            assert ray_href == xcom_value(api, run_id, task_id, "ray_dashboard_url")
            assert spark_href == endpoint["spark_ui_url"], "the link shows the shared cluster's Spark UI"
            assert ray_href == endpoint["ray_dashboard_url"], "the link shows the shared cluster's Ray dashboard"
            links = api.api("GET", f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/links")[
                "extra_links"
            ]
            assert links == {"Spark UI": spark_href, "Ray dashboard": ray_href}
    except BaseException:
        shot("failure")
        raise
    finally:
        if backfill_id is None:
            backfill_id = (existing_backfill(api, DATE) or {}).get("id")
        if backfill_id is not None:
            remove_backfill(api, backfill_id)
        print(f"browser backfill test took {time.time() - started:.0f}s")
