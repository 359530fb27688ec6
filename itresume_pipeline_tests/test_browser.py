"""The Dagster UI in a real browser: launch one partition from the asset graph, end to end.

A fresh instance is started the way `make dev` does it (itresume_pipeline/local/dev.py): the shipped
`dagster.yaml` in a new DAGSTER_HOME, run/event/schedule storage in a new PostgreSQL database,
and `dagster dev` (webserver + daemon + code server) in a process group of its own. The
warehouse is a new schema in the test PostgreSQL, the API is the simulator.

Headless Chromium is Debian's (`/usr/bin/chromium`, installed by `.ci/run`), driven through
Playwright's `executable_path`: Playwright's own browser downloads are impossible here. The test
opens the `itresume` asset group, clicks "Materialize all…", types yesterday's partition key into
the partition dialog and launches one run; it then waits for that run to succeed (GraphQL) and
for its rows in PostgreSQL. Screenshots go to the test's temp directory; the asset graph also
goes to docs/images/asset-graph.png when that file is missing or ITRESUME_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Page, expect, sync_playwright
from psycopg import sql

from itresume_pipeline.local.dev import dagster_storage_url, install_instance_config
from itresume_pipeline.local.simulator import ApiSimulator
from itresume_pipeline_tests.helpers import TEST_CLIENT, TEST_CLIENT_KEY

ROOT = Path(__file__).resolve().parents[1]
README_IMAGE = ROOT / "docs" / "images" / "asset-graph.png"
CHROMIUM = os.environ.get("ITRESUME_CHROMIUM", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.processes,
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run installs it)",
    ),
]
# Without the background-networking flags Chromium keeps dialling Google on this closed network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCATION = "itresume_pipeline"
GROUP = "itresume"
ASSETS = ("raw_attempts", "postgres_attempts", "daily_metrics", "sheets_report")
ATTEMPTS_PER_DAY = 200

# Bounded but generous: a 2-CPU machine with a browser and Dagster's four processes is slow.
SERVER_READY_S = 150.0
UI_TIMEOUT_MS = 60_000
RUN_FINISHED_S = 240.0
STOP_GRACE_S = 15.0
TERMINAL_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass(frozen=True)
class DagsterUi:
    """A running `dagster dev` and where its instance and warehouse live."""

    url: str
    pg_url: str
    schema: str
    home: Path
    server_log: Path
    shots: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def graphql(base_url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST a query to the webserver's GraphQL endpoint and return `data`."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{base_url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.load(response)
    assert not payload.get("errors"), payload["errors"]
    return payload["data"]


def _wait_for_server(url: str, child: subprocess.Popen[bytes], log: Path) -> float:
    began = time.monotonic()
    while time.monotonic() - began < SERVER_READY_S:
        if child.poll() is not None:
            pytest.fail(f"dagster dev exited with {child.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=3) as response:
                if response.status == 200:
                    return time.monotonic() - began
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(1.0)
    pytest.fail(f"dagster dev not ready after {SERVER_READY_S:.0f} s:\n{_tail(log)}")


def _stop_group(child: subprocess.Popen[bytes]) -> None:
    """SIGINT to the whole group (webserver, daemon, code servers, run workers), then SIGKILL."""
    began = time.monotonic()
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(child.pid, signal.SIGINT)
        child.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    if child.poll() is None:
        child.wait(timeout=30)
    print(f"dagster dev stopped in {time.monotonic() - began:.0f} s")


def _child_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ITRESUME_*/DAGSTER_* setting, plus `settings`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ITRESUME_", "DAGSTER_")) and name != "SHEETS_EMULATOR_HOST"
    }
    env.update(settings)
    return env


@pytest.fixture
def dagster_ui(pg_url: str, tmp_path: Path) -> Iterator[DagsterUi]:
    """`dagster dev` on a fresh instance (own DAGSTER_HOME and storage database)."""
    token = uuid.uuid4().hex[:10]
    storage_db = f"itresume_browser_{token}"
    schema = f"test_browser_{token}"
    home = tmp_path / "home"
    cwd = tmp_path / "cwd"  # not the checkout: Dagster would load a developer's ./.env from it
    shots = tmp_path / "screenshots"
    for directory in (home, cwd, shots):
        directory.mkdir()
    dagster_home = home / "dagster"
    install_instance_config(ROOT, dagster_home)
    server_log = tmp_path / "dagster-dev.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    today = datetime.now(UTC).date()

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(storage_db)))
    simulator = ApiSimulator(
        client=TEST_CLIENT, client_key=TEST_CLIENT_KEY, attempts_per_day=ATTEMPTS_PER_DAY
    ).start()
    child: subprocess.Popen[bytes] | None = None
    try:
        env = _child_env(
            DAGSTER_HOME=str(dagster_home),
            DAGSTER_PG_URL=dagster_storage_url(pg_url, storage_db),
            ITRESUME_HOME=str(home),
            ITRESUME_DATABASE_URL=pg_url,
            ITRESUME_DB_SCHEMA=schema,
            ITRESUME_API_URL=simulator.url,
            ITRESUME_CLIENT=TEST_CLIENT,
            ITRESUME_CLIENT_KEY=TEST_CLIENT_KEY,
            # A week of partitions: a readable graph, and yesterday is always among them.
            ITRESUME_START_DATE=(today - timedelta(days=7)).isoformat(),
            ITRESUME_DAGSTER_URL=url,
            # Production profile: the report is a CSV sheet only because it is asked for by name.
            ITRESUME_SHEETS_BACKEND="csv",
        )
        command = [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        with server_log.open("wb") as log:
            child = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ready_s = _wait_for_server(url, child, server_log)
        print(f"dagster dev ready in {ready_s:.0f} s at {url}")
        yield DagsterUi(
            url=url, pg_url=pg_url, schema=schema, home=home, server_log=server_log, shots=shots
        )
    finally:
        if child is not None:
            _stop_group(child)
        simulator.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(storage_db)
                )
            )


def _runs_for_partition(base_url: str, day: str) -> list[dict[str, Any]]:
    data = graphql(
        base_url,
        """
        query Runs($tags: [ExecutionTag!]) {
          runsOrError(filter: {tags: $tags}) {
            ... on Runs { results { runId status tags { key value } } }
          }
        }
        """,
        {"tags": [{"key": "dagster/partition", "value": day}]},
    )
    return data["runsOrError"]["results"]


def wait_for_run(ui: DagsterUi, day: str) -> dict[str, Any]:
    """The run launched for `day`, once it has finished."""
    deadline = time.monotonic() + RUN_FINISHED_S
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = _runs_for_partition(ui.url, day)
        if runs and runs[0]["status"] in TERMINAL_STATUSES:
            return runs[0]
        time.sleep(2.0)
    pytest.fail(
        f"no finished run for {day} after {RUN_FINISHED_S:.0f} s: {runs}\n{_tail(ui.server_log)}"
    )


def _screenshot(page: Page, path: Path) -> Path:
    page.screenshot(path=str(path))
    return path


def launch_partition_from_asset_graph(page: Page, ui: DagsterUi, day: str) -> None:
    """Asset graph -> "Materialize all…" -> type the partition key -> "Launch 1 run"."""
    page.goto(f"{ui.url}/locations/{LOCATION}/asset-groups/{GROUP}", wait_until="domcontentloaded")
    for asset in ASSETS:
        expect(page.get_by_text(asset, exact=True).first).to_be_visible()
    _screenshot(page, ui.shots / "1-asset-graph.png")

    page.get_by_role("button", name="Materialize all").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"Launch runs to materialize {len(ASSETS)} assets")).to_be_visible()
    # The partition selector is the dialog's only text box; it takes keys and [a...b] ranges.
    keys = dialog.get_by_role("textbox").first
    keys.fill(day)
    keys.press("Enter")
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    launch = dialog.get_by_role("button", name="Launch 1 run")
    expect(launch).to_be_enabled()
    _screenshot(page, ui.shots / "2-partition-dialog.png")
    launch.click()
    expect(dialog).to_be_hidden()


@pytest.mark.timeout(600)
def test_materialize_one_partition_from_the_asset_graph(dagster_ui: DagsterUi) -> None:
    ui = dagster_ui
    day = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    # A fresh instance greets the first visitor with a newsletter dialog; mark it as seen.
    assert graphql(ui.url, "mutation { setNuxSeen }")["setNuxSeen"] is True

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=UI_TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 600}, device_scale_factor=2)
            page.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            # Should the dialog show up anyway, it is dismissed whenever it blocks an action.
            page.add_locator_handler(
                page.get_by_text("Join the Dagster community"),
                lambda _: page.get_by_role("button", name="Skip").click(),
            )
            began = time.monotonic()
            launch_partition_from_asset_graph(page, ui, day)
            print(f"run launched from the UI in {time.monotonic() - began:.0f} s")
            run = wait_for_run(ui, day)
            print(f"run {run['status']} after {time.monotonic() - began:.0f} s")
            tags = {tag["key"]: tag["value"] for tag in run["tags"]}
            assert tags.get("dagster/from_ui") == "true", tags
            page.goto(f"{ui.url}/runs/{run['runId']}", wait_until="domcontentloaded")
            expect(page.get_by_text(f"partition: {day}")).to_be_visible()
            if run["status"] == "SUCCESS":
                expect(page.get_by_text("Success", exact=True).first).to_be_visible()
            _screenshot(page, ui.shots / "3-run.png")
            assert run["status"] == "SUCCESS", f"run {run['runId']}: {run['status']}\n" + _tail(
                ui.server_log
            )

            # The graph again, now showing the materialized partition: the README's picture.
            page.goto(f"{ui.url}/locations/{LOCATION}/asset-groups/{GROUP}")
            expect(page.get_by_text("3 / 3 Passed")).to_be_visible()
            page.wait_for_timeout(1500)  # let the edges and the partition bars settle
            graph = _screenshot(page, ui.shots / "4-asset-graph-after.png")
        finally:
            browser.close()

    if not README_IMAGE.exists() or os.environ.get("ITRESUME_UPDATE_SCREENSHOTS") == "1":
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(graph, README_IMAGE)

    with psycopg.connect(ui.pg_url) as conn:
        loaded = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {}.attempts"
                " WHERE created_at >= %s AND created_at < %s AND run_id = %s"
            ).format(sql.Identifier(ui.schema)),
            (date.fromisoformat(day), date.fromisoformat(day) + timedelta(days=1), run["runId"]),
        ).fetchone()
        metrics = conn.execute(
            sql.SQL("SELECT attempts FROM {}.daily_metrics WHERE date = %s").format(
                sql.Identifier(ui.schema)
            ),
            (date.fromisoformat(day),),
        ).fetchone()
    assert loaded is not None and loaded[0] > 0, f"no attempts for {day} in {ui.schema}"
    assert metrics is not None and metrics[0] == loaded[0], (metrics, loaded)

    # The run wrote its stages to the dated log file.
    logs = "".join(p.read_text() for p in sorted((ui.home / "logs").glob("*.txt")))
    assert f"run={run['runId'][:8]}" in logs
    assert "download finished" in logs
