"""sheets_report end to end: the whole graph through `materialize` into the Sheets emulator."""

from __future__ import annotations

import csv
import os
from datetime import date

from dagster import DagsterInstance, materialize

from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics
from itresume_pipeline.assets.reporting import sheets_report
from itresume_pipeline.jobs import range_tags
from itresume_pipeline.landing import LandingZone
from itresume_pipeline.local.sheets_emulator import SheetsEmulator
from itresume_pipeline.resources import sheets_resource
from itresume_pipeline.resources.sheets import SheetsResource

ALL_ASSETS = [raw_attempts, postgres_attempts, daily_metrics, sheets_report]
HEADER = ["date", "attempts", "successful_attempts", "unique_users"]
SHEET_ID = "report-sheet"


def run_all(api, warehouse, sheets, *, partition=None, tags=None):
    return materialize(
        ALL_ASSETS,
        resources={
            "itresume_api": api,
            "warehouse": warehouse,
            "landing": LandingZone(root=os.environ["ITRESUME_HOME"]),  # the test's home
            "sheets": sheets,
        },
        partition_key=partition,
        tags=tags,
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def metrics_rows(warehouse) -> list[list[str]]:
    import psycopg
    from psycopg import sql

    with psycopg.connect(warehouse.database_url) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT date, attempts, successful_attempts, unique_users FROM {} ORDER BY date"
            ).format(warehouse.table("daily_metrics"))
        ).fetchall()
    return [[d.isoformat(), str(a), str(s), str(u)] for d, a, s, u in rows]


def test_out_of_order_days_and_a_range_keep_one_ascending_row_per_day(api, warehouse):
    with SheetsEmulator() as emulator:
        emulator.create_spreadsheet(SHEET_ID)
        sheets = SheetsResource(
            emulator_host=emulator.host_port, spreadsheet_id=SHEET_ID, backoff_base_s=0.01
        )
        for day in ("2024-10-05", "2024-10-01", "2024-10-03"):
            result = run_all(api, warehouse, sheets, partition=day)
            assert result.success
        result = run_all(api, warehouse, sheets, tags=range_tags("2024-10-01", "2024-10-07"))
        assert result.success

        values = emulator.values(SHEET_ID, "daily_metrics")
        assert values[0] == HEADER
        assert [row[0] for row in values[1:]] == [f"2024-10-0{d}" for d in range(1, 8)]
        assert values[1:] == metrics_rows(warehouse)
        [check] = [
            e for e in result.get_asset_check_evaluations() if e.asset_key.path == ["sheets_report"]
        ]
        assert check.passed

        emulator.reset_log()
        again = run_all(api, warehouse, sheets, partition="2024-10-03")
        assert again.success
        assert emulator.write_calls() == 0  # re-running a day changes nothing
        assert emulator.values(SHEET_ID, "daily_metrics") == values


def test_an_injected_429_is_retried(api, warehouse):
    with SheetsEmulator() as emulator:
        emulator.create_spreadsheet(SHEET_ID)
        sheets = SheetsResource(
            emulator_host=emulator.host_port,
            spreadsheet_id=SHEET_ID,
            backoff_base_s=0.01,
            backoff_max_s=0.05,
        )
        emulator.inject(429, times=2, retry_after=0)
        result = run_all(api, warehouse, sheets, partition=date(2024, 10, 8).isoformat())
        assert result.success
        assert emulator.values(SHEET_ID, "daily_metrics")[1:] == metrics_rows(warehouse)


def test_with_nothing_configured_the_report_is_a_flagged_local_csv(api, warehouse, itresume_home):
    result = run_all(api, warehouse, sheets_resource(), partition="2024-10-08")
    assert result.success
    path = itresume_home / "sheets" / "daily_metrics.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle)) == [HEADER, *metrics_rows(warehouse)]
    metadata = result.asset_materializations_for_node("sheets_report")[0].metadata
    assert metadata["sheet_mode"].value == "local-csv"
    assert metadata["local_csv_not_google"].value is True


def step_failure_text(result) -> str:
    """What the failed steps say: the user failure's description, else the error."""
    texts = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None:
            texts.append(data.user_failure_data.description or "")
        texts.append(data.error.to_string() if data.error else "")
    return "\n".join(texts)


def sheet_check(result):
    return [
        e for e in result.get_asset_check_evaluations() if e.asset_key.path == ["sheets_report"]
    ]


def test_in_production_a_missing_sheet_setting_fails_the_run_and_writes_no_file(
    api, warehouse, itresume_home, monkeypatch
):
    monkeypatch.delenv("ITRESUME_PROFILE")

    result = run_all(api, warehouse, sheets_resource(), partition="2024-10-08")

    assert not result.success
    text = step_failure_text(result)
    assert "ITRESUME_SHEETS_SPREADSHEET_ID is not set" in text
    assert "ITRESUME_SHEETS_CREDENTIALS is not set" in text
    assert not (itresume_home / "sheets").exists()
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def test_a_title_row_above_the_header_keeps_the_history_in_its_columns(api, warehouse):
    with SheetsEmulator() as emulator:
        emulator.create_spreadsheet(SHEET_ID, sheets=["daily_metrics"])
        emulator.set_values(SHEET_ID, "daily_metrics", [["Daily report"], HEADER])
        sheets = SheetsResource(emulator_host=emulator.host_port, spreadsheet_id=SHEET_ID)
        for day in ("2024-10-02", "2024-10-01"):
            result = run_all(api, warehouse, sheets, partition=day)
            assert result.success

        assert emulator.values(SHEET_ID, "daily_metrics") == [
            ["Daily report"],
            HEADER,
            *metrics_rows(warehouse),
        ]
        [check] = sheet_check(result)
        assert check.passed


def test_a_sheet_without_a_findable_header_fails_the_check_and_the_run(api, warehouse):
    broken = [["Daily report"], ["Date", "Attempts", "Successful", "Users"], ["2024-10-01", 1]]
    with SheetsEmulator() as emulator:
        emulator.create_spreadsheet(SHEET_ID, sheets=["daily_metrics"])
        emulator.set_values(SHEET_ID, "daily_metrics", broken)
        sheets = SheetsResource(emulator_host=emulator.host_port, spreadsheet_id=SHEET_ID)

        result = run_all(api, warehouse, sheets, partition="2024-10-08")

        assert not result.success
        assert "worksheet 'daily_metrics' has no header row" in step_failure_text(result)
        [check] = sheet_check(result)
        assert not check.passed
        assert "no header row" in check.metadata["error"].value
        assert emulator.raw_values(SHEET_ID, "daily_metrics") == broken
        assert emulator.write_calls() == 0
        assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
