"""Both code locations load, their public surface is what the README documents, and a bad
setting stops the location that needs it, with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, Definitions

from itresume_pipeline import defs
from itresume_pipeline.alerting import defs as alerting_defs

REPO = Path(__file__).resolve().parent.parent


def test_definitions_are_loadable():
    Definitions.validate_loadable(defs)


def test_asset_keys_snapshot():
    graph = defs.resolve_asset_graph()
    keys = sorted(key.to_user_string() for key in graph.get_all_asset_keys())
    assert keys == ["daily_metrics", "postgres_attempts", "raw_attempts", "sheets_report"]


def test_asset_checks_snapshot():
    graph = defs.resolve_asset_graph()
    checks = sorted(
        f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys
    )
    assert checks == [
        "daily_metrics:metrics_match_recount",
        "postgres_attempts:created_at_inside_partition",
        "postgres_attempts:reject_rate_below_threshold",
        "postgres_attempts:user_id_not_null",
        "sheets_report:sheet_matches_daily_metrics",
    ]


def test_lineage():
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("postgres_attempts")).parent_keys == {AssetKey("raw_attempts")}
    assert graph.get(AssetKey("daily_metrics")).parent_keys == {AssetKey("postgres_attempts")}
    assert graph.get(AssetKey("sheets_report")).parent_keys == {AssetKey("daily_metrics")}


def test_jobs_and_sensors_snapshot():
    repository = defs.get_repository_def()
    assert sorted(
        job.name for job in repository.get_all_jobs() if not job.name.startswith("__")
    ) == ["itresume_daily"]
    assert repository.sensor_defs == []  # they live in the alerting location
    assert sorted(defs.resources) == ["itresume_api", "landing", "sheets", "warehouse"]


def test_the_alerting_location_holds_the_sensors():
    Definitions.validate_loadable(alerting_defs)
    repository = alerting_defs.get_repository_def()
    sensors = {sensor.name: sensor for sensor in repository.sensor_defs}
    assert sorted(sensors) == ["alert_outbox_flush", "dead_run_detector", "run_failure_alert"]
    assert all(s.default_status.value == "RUNNING" for s in sensors.values())
    assert sorted(alerting_defs.resources) == ["mail"]
    assert repository.get_all_jobs() == [] and repository.schedule_defs == []


def test_partitions_are_utc_days_from_the_configured_start():
    partitions = defs.resolve_assets_def("raw_attempts").partitions_def
    assert partitions.timezone == "UTC"
    assert partitions.get_first_partition_key() == "2023-04-01"


# -- checks at load, the way an operator runs them ------------------------------------------------


def _clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITRESUME_", "DAGSTER_"))}
    return {**env, **settings}


def _dagster(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dagster", *args],
        cwd=REPO,
        env=_clean_env(**settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.processes
def test_validate_the_workspace_passes_with_defaults():
    out = _dagster("definitions", "validate", "-w", "workspace.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "itresume_pipeline" in text and "itresume_alerting" in text


@pytest.mark.processes
@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ITRESUME_SMTP_SECURITY", "tls"),
        ("ITRESUME_SMTP_PORT", "0"),
        ("ITRESUME_ALERT_TO", "oncall"),
        ("ITRESUME_LOG_RETENTION_DAYS", "three"),
    ],
)
def test_validate_the_workspace_reports_a_bad_alert_setting_by_name(var: str, value: str):
    out = _dagster("definitions", "validate", "-w", "workspace.yaml", **{var: value})
    assert out.returncode != 0
    assert f"{var}={value!r}" in out.stdout + out.stderr


@pytest.mark.processes
def test_a_bad_start_date_stops_the_pipeline_location_naming_it_but_not_the_alerts():
    bad = {"ITRESUME_START_DATE": "first of april"}
    pipeline = _dagster("definitions", "validate", "-m", "itresume_pipeline", **bad)
    assert pipeline.returncode != 0
    assert "ITRESUME_START_DATE='first of april' is not a date" in pipeline.stdout + pipeline.stderr
    alerting = _dagster("definitions", "validate", "-m", "itresume_pipeline.alerting", **bad)
    assert alerting.returncode == 0, alerting.stdout + alerting.stderr


def _python(code: str) -> str:
    """Run `code` in a fresh interpreter (imports start from nothing); return its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


@pytest.mark.processes
def test_the_alerting_location_imports_nothing_of_the_pipeline_assets():
    code = (
        "import sys, itresume_pipeline.alerting\n"
        "print(sorted(m for m in sys.modules if m.startswith(('itresume_pipeline.assets', "
        "'itresume_pipeline.partitions', 'itresume_pipeline.definitions'))))\n"
    )
    assert _python(code).strip().splitlines()[-1] == "[]"


@pytest.mark.processes
def test_importing_changes_no_logger_and_the_pipeline_location_installs_the_redaction():
    """The urllib3 filter is set up explicitly, once, where the pipeline location loads."""
    code = (
        "import logging, itresume_pipeline.alerting, itresume_pipeline.logs\n"
        "pool = logging.getLogger('urllib3.connectionpool')\n"
        "print(len(pool.filters))\n"
        "import itresume_pipeline.definitions\n"
        "print([type(f).__name__ for f in pool.filters])\n"
    )
    assert _python(code).split() == ["0", "['RedactingFilter']"]
