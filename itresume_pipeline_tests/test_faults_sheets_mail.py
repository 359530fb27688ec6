"""Sheets and e-mail faults: a 429 storm, a hand-edited sheet, a relay that is down.

The alerts are driven the way the daemon drives them: real failed runs of the pipeline in a
persistent test instance, then `evaluate_tick` of the real sensors with their cursors, against a
real SMTP server (aiosmtpd) that is down at first and comes up later.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from unittest import mock

import dagster as dg
import pytest
from dagster import DagsterEventType, DagsterInstance

from itresume_pipeline.alerts import Outbox
from itresume_pipeline.assets.reporting import sheets_report
from itresume_pipeline.local.sheets_emulator import SheetsEmulator
from itresume_pipeline.local.simulator import ApiSimulator
from itresume_pipeline.resources.mail import MailResource
from itresume_pipeline.resources.sheets import SheetsResource
from itresume_pipeline.sensors import alert_outbox_flush, run_failure_alert
from itresume_pipeline_tests.helpers import (
    DAY,
    HEADER,
    SHEET_ID,
    TEST_CLIENT,
    TEST_CLIENT_KEY,
    WORKSHEET,
    day_records,
    db_rows,
    failure_text,
    free_port,
    mail_for,
    make_api,
    make_sheets,
    metric_row,
    run_pipeline,
    seed_day,
    sheet_values,
    smtp_server,
)

DAGSTER_URL = "http://dagster.example.test:3000"


def no_jitter() -> Any:
    """Dagster's PLUS_MINUS jitter draws random(); 0 makes a first retry immediate."""
    return mock.patch("dagster._core.definitions.policy.random", return_value=0.0)


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DagsterInstance]:
    """A persistent instance (the sensors read its event log) and an outbox of this test's own."""
    monkeypatch.setenv("ITRESUME_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("ITRESUME_DAGSTER_URL", DAGSTER_URL)
    with dg.instance_for_test() as inst:
        yield inst


class Ticks:
    """The two alert sensors evaluated as the daemon would, failure-sensor cursor kept."""

    def __init__(self, instance: DagsterInstance) -> None:
        self.instance = instance
        self.cursor: str | None = None
        self.first_cursor: str | None = None  # to replay from, like a daemon that crashed

    def _defs(self, mail: MailResource) -> dg.Definitions:
        return dg.Definitions(
            sensors=[run_failure_alert, alert_outbox_flush],
            resources={"mail": mail},
        )

    def failure(self, mail: MailResource, cursor: str | None = None) -> Any:
        defs = self._defs(mail)
        context = dg.build_sensor_context(
            instance=self.instance,
            repository_def=defs.get_repository_def(),
            resources={"mail": mail},
            cursor=cursor if cursor is not None else self.cursor,
        )
        result = defs.resolve_sensor_def("run_failure_alert").evaluate_tick(context)
        for reaction in result.dagster_run_reactions or []:
            assert not reaction.error, reaction.error
        if cursor is None:
            self.cursor = result.cursor
            self.first_cursor = self.first_cursor or result.cursor
        return result

    def flush(self, mail: MailResource) -> str:
        defs = self._defs(mail)
        context = dg.build_sensor_context(
            instance=self.instance,
            repository_def=defs.get_repository_def(),
            resources={"mail": mail},
        )
        return defs.resolve_sensor_def("alert_outbox_flush").evaluate_tick(context).skip_message


def assert_alert(msg: EmailMessage, run_id: str, step: str, *words: str) -> None:
    """The e-mail names the job, the partition, the failed step, the error and the run link."""
    subject, body = str(msg["Subject"]), msg.get_content().replace("\r\n", "\n")
    assert "FAILED __ephemeral_asset_job__" in subject and DAY.isoformat() in subject
    assert f"Failed:     {step}" in body and f"Partition:  {DAY.isoformat()}" in body
    assert f"{DAGSTER_URL}/runs/{run_id}" in body
    for word in words:
        assert word in body, word
    assert TEST_CLIENT_KEY not in subject + body


# -- Sheets ----------------------------------------------------------------------------------


def test_a_429_storm_fails_after_bounded_retries_and_mails_once(
    resources: dict[str, Any],
    small_simulator: ApiSimulator,
    warehouse,
    emulator: SheetsEmulator,
    instance: DagsterInstance,
) -> None:
    """Retries are bounded at both levels (client tries x asset retries), the run fails with a
    clear error, PostgreSQL holds the new day, the sheet keeps its old row; and the failure,
    retried step and all, produces exactly one e-mail."""
    resources["sheets"] = make_sheets(emulator, max_attempts=3)
    seed_day(resources)
    old_sheet = sheet_values(emulator)
    new = day_records(small_simulator)[:70]
    small_simulator.set_day_payload(DAY, new)
    ticks = Ticks(instance)
    with smtp_server("none") as (sink, port):
        mail = mail_for(port, "none", None)
        ticks.failure(mail)  # the daemon's first tick only sets the cursor

        emulator.reset_log()
        emulator.inject(429, times=1000, retry_after=0)
        with no_jitter():
            result = run_pipeline(resources, instance=instance)

        assert not result.success
        text = failure_text(result)
        assert "Google Sheets API answered 429" in text and "after 3 attempts" in text, text
        assert [e.step_key for e in result.all_events if e.event_type.value == "STEP_FAILURE"] == [
            "sheets_report"
        ]
        retries = [
            e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY
        ]
        assert retries == []  # the client retried; Dagster does not re-execute the step
        assert len(emulator.requests) == 3  # 3 client attempts, then stop
        assert emulator.write_calls() == 0
        assert sheet_values(emulator) == old_sheet  # not half-written
        assert db_rows(warehouse, "daily_metrics") == [(DAY, *metric_row(new))]  # DB is fine

        for _ in range(3):  # ticks and a replay from the first cursor: still one e-mail
            ticks.failure(mail)
        ticks.failure(mail, cursor=ticks.first_cursor)
        assert ticks.flush(mail) == "no pending alerts"
    assert len(sink.envelopes) == 1
    assert_alert(sink.messages()[0], result.run_id, "sheets_report", "429", "after 3 attempts")

    emulator.clear_faults()  # the quota is back: the next run fixes the sheet
    fixed = run_pipeline(resources, assets=[sheets_report])
    assert fixed.success
    assert sheet_values(emulator) == [HEADER, [DAY.isoformat(), *map(str, metric_row(new))]]


def test_a_row_edited_by_hand_is_corrected_by_the_next_run(
    resources: dict[str, Any], small_simulator: ApiSimulator, emulator: SheetsEmulator
) -> None:
    seed_day(resources)
    right = [DAY.isoformat(), *map(str, metric_row(day_records(small_simulator)))]
    assert sheet_values(emulator) == [HEADER, right]
    # Someone "fixes" the numbers, clears a cell, pastes a stale copy of the row and adds a
    # column of their own.
    emulator.set_values(
        SHEET_ID,
        WORKSHEET,
        [
            [*HEADER, "note"],
            [DAY.isoformat(), 999999, "", 3, "checked by hand"],
            [DAY.isoformat(), 1, 1, 1, ""],
        ],
    )
    sheets: SheetsResource = resources["sheets"]
    assert sheets.read_rows()[DAY.isoformat()]["attempts"] == 999999

    result = run_pipeline(resources)

    assert result.success, failure_text(result)
    assert sheet_values(emulator) == [[*HEADER, "note"], [*right, "checked by hand"]]
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name.startswith("sheet")]
    assert check.passed


# -- e-mail ----------------------------------------------------------------------------------


def test_smtp_down_then_up_delivers_the_alert_later_exactly_once(
    resources: dict[str, Any], small_simulator: ApiSimulator, instance: DagsterInstance
) -> None:
    port = free_port()  # nothing listens here yet: the relay is down
    mail = mail_for(port, "none", None, timeout_s=2.0)
    ticks = Ticks(instance)
    ticks.failure(mail)

    resources["itresume_api"] = make_api(small_simulator, client_key="WRONG-key-4410aa")
    failed = run_pipeline(resources, instance=instance)
    assert not failed.success

    ticks.failure(mail)  # the failure is seen while the relay is down: queued, not lost
    outbox = Outbox()
    assert outbox.pending_keys() == [failed.run_id] and outbox.sent_keys() == []
    assert "1 still pending" in ticks.flush(mail)
    assert outbox.pending_keys() == [failed.run_id]

    with smtp_server("none", port=port) as (sink, _):
        assert "sent 1" in ticks.flush(mail)
        assert ticks.flush(mail) == "no pending alerts"
        ticks.failure(mail)
        ticks.failure(mail, cursor=ticks.first_cursor)  # a replay of the whole history
        assert ticks.flush(mail) == "no pending alerts"
    assert len(sink.envelopes) == 1
    assert outbox.pending_keys() == [] and outbox.sent_keys() == [failed.run_id]
    assert_alert(
        sink.messages()[0], failed.run_id, "raw_attempts", "HTTP 401", f"client {TEST_CLIENT!r}"
    )
    assert "WRONG-key-4410aa" not in sink.messages()[0].get_content()
