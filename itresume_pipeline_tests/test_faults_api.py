"""Fault injection at the API boundary, asserting the end state everywhere a run writes.

Every scenario runs the whole graph (raw_attempts -> postgres_attempts -> daily_metrics ->
sheets_report) through `dagster.materialize` against the API simulator, a real PostgreSQL and
the Sheets emulator, then compares the rows in PostgreSQL, the landing zone and the sheet with
what they were before the run. The shared helpers are in helpers.py, the fixtures in conftest.py.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson
import pytest

from itresume_pipeline import landing
from itresume_pipeline.local.sheets_emulator import SheetsEmulator
from itresume_pipeline.local.simulator import ApiSimulator
from itresume_pipeline_tests.helpers import (
    DAY,
    HEADER,
    SHEET_ID,
    SMALL_DAY,
    TEST_CLIENT,
    TEST_CLIENT_KEY,
    WORKSHEET,
    day_records,
    db_rows,
    db_state,
    expected_attempts,
    failure_text,
    make_api,
    metadata,
    metric_row,
    retries_of,
    run_pipeline,
    seed_day,
    sheet_values,
    step_failures,
)


def landing_state(resources: dict[str, Any]) -> dict[str, str]:
    """Every file in the landing folder (hidden temp files included) -> sha256."""
    folder = resources["landing"].directory
    if not folder.exists():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def partial_files(resources: dict[str, Any]) -> list[str]:
    folder = resources["landing"].directory
    return [p.name for p in folder.glob(f"*{landing.TEMP_SUFFIX}")] if folder.exists() else []


def api_requests(simulator: ApiSimulator) -> list[dict]:
    return [r for r in simulator.requests if r["path"].endswith("/statistics")]


def assert_day_complete(
    result: Any, resources: dict[str, Any], emulator: SheetsEmulator, records: list[dict]
) -> None:
    """The run succeeded and every store holds exactly `records` for DAY."""
    warehouse = resources["warehouse"]
    assert result.success, failure_text(result)
    rows = db_rows(warehouse, "attempts")
    assert sorted(rows, key=repr) == expected_attempts(records)
    assert db_rows(warehouse, "daily_metrics") == [(DAY, *metric_row(records))]
    values = sheet_values(emulator)
    assert values == [HEADER, [DAY.isoformat(), *map(str, metric_row(records))]]
    assert resources["landing"].payload_path(DAY).exists() and not partial_files(resources)
    assert all(e.passed for e in result.get_asset_check_evaluations())


# -- scenarios -------------------------------------------------------------------------------


def test_two_5xx_then_ok_gives_the_complete_day_everywhere(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator
) -> None:
    small_simulator.inject("status", code=502)
    small_simulator.inject("status", code=503)
    result = run_pipeline(resources)
    assert_day_complete(result, resources, emulator, day_records(small_simulator))
    assert len(api_requests(small_simulator)) == 3
    raw = metadata(result, "raw_attempts")
    assert raw["attempts"] == 3 and raw["records"] == SMALL_DAY
    assert retries_of(result) == 0  # the client retried; Dagster never had to


FAULTS = {
    # name: (how to break the API, what the failure must say)
    "connection-reset": (lambda sim: sim.inject("reset", times=10), "ConnectionError"),
    "read-timeout": (lambda sim: sim.inject("slow", seconds=3.0, times=10), "Timeout"),
    "5xx-forever": (lambda sim: sim.inject("status", code=503, times=10), "HTTP 503"),
    "truncated-body": (lambda sim: sim.inject("truncate", times=10), "broke off mid-body"),
    "html-garbage": (lambda sim: sim.inject("garbage", times=10), "invalid payload"),
    "truncated-json": (
        lambda sim: sim.set_day_payload(DAY, b'[{"lti_user_id": "0123456789abcdef", "pass'),
        "payload is truncated",
    ),
    "trailing-garbage": (
        lambda sim: sim.set_day_payload(DAY, b'[]{"lti_user_id": 1}'),
        "unexpected data after the array",
    ),
    "not-an-array": (
        lambda sim: sim.set_day_payload(DAY, b'"errors"'),
        "not a JSON array",
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_transport_and_body_faults_are_retried_then_fail_changing_nothing(
    fault: str, resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator
) -> None:
    """After a good run, a broken API leaves PostgreSQL, the sheet and the landing zone as
    they were, with no half-written landing file, and says clearly what went wrong."""
    resources["itresume_api"] = make_api(small_simulator, max_attempts=3, read_timeout_s=0.3)
    seed_day(resources)
    before = (db_state(warehouse), sheet_values(emulator), landing_state(resources))
    small_simulator.requests.clear()

    inject, phrase = FAULTS[fault]
    inject(small_simulator)
    result = run_pipeline(resources)

    assert not result.success
    text = failure_text(result)
    assert phrase in text and "gave up after 3 attempts" in text, text
    assert TEST_CLIENT_KEY not in text
    # Bounded: max_attempts tries, then stop. A slow answer is logged only once it is sent,
    # so count the injected faults consumed where there are any.
    pending = small_simulator.pending_faults
    assert (10 - pending if pending else len(api_requests(small_simulator))) == 3
    assert [e.step_key for e in step_failures(result)] == ["raw_attempts"]
    assert retries_of(result) == 0  # no Dagster-level re-execution on top of the client's
    assert (db_state(warehouse), sheet_values(emulator), landing_state(resources)) == before
    assert not partial_files(resources)


def test_a_200_error_object_fails_at_once_quoting_the_api_without_the_key(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator
) -> None:
    """`{"errors": ...}` with HTTP 200 is the API speaking, not a proxy's hiccup: no retry, and
    its words are quoted, masked first, so a key it echoes never shows, not even in part."""
    seed_day(resources)
    before = (db_state(warehouse), sheet_values(emulator), landing_state(resources))
    small_simulator.requests.clear()
    message = f"no such key {TEST_CLIENT_KEY} for client {TEST_CLIENT}"
    small_simulator.set_day_payload(DAY, orjson.dumps({"errors": message}))

    result = run_pipeline(resources)

    assert not result.success
    text = failure_text(result)
    assert "HTTP 200 with an error instead of data: no such key *** for client" in text, text
    assert not any(TEST_CLIENT_KEY[i : i + 8] in text for i in range(len(TEST_CLIENT_KEY) - 7))
    assert len(api_requests(small_simulator)) == 1 and retries_of(result) == 0
    assert (db_state(warehouse), sheet_values(emulator), landing_state(resources)) == before
    assert not partial_files(resources)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_fail_at_once_naming_the_client_not_the_key(
    status: int, resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator
) -> None:
    seed_day(resources)
    before = (db_state(warehouse), sheet_values(emulator), landing_state(resources))
    small_simulator.requests.clear()

    wrong_key = "WRONG-key-e8c1d5"
    if status == 401:  # the API itself refuses the key
        resources["itresume_api"] = make_api(small_simulator, client_key=wrong_key)
    else:
        small_simulator.inject("status", code=403, times=5)
    result = run_pipeline(resources)

    assert not result.success
    text = failure_text(result)
    assert f"HTTP {status}" in text and f"client {TEST_CLIENT!r}" in text
    assert "ITRESUME_CLIENT_KEY" in text  # what to fix
    assert wrong_key not in text and TEST_CLIENT_KEY not in text
    assert len(api_requests(small_simulator)) == 1 and retries_of(result) == 0
    assert (db_state(warehouse), sheet_values(emulator), landing_state(resources)) == before


def test_an_empty_day_is_a_valid_partition_with_a_zero_row_everywhere(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator
) -> None:
    small_simulator.set_day_payload(DAY, [])
    result = run_pipeline(resources)
    assert_day_complete(result, resources, emulator, [])
    assert db_rows(warehouse, "attempts_rejected") == []
    assert emulator.values(SHEET_ID, WORKSHEET) == [HEADER, [DAY.isoformat(), "0", "0", "0"]]
    with landing.open_payload(resources["landing"].payload_path(DAY)) as stream:
        assert stream.read() == b"[]"
    loaded = metadata(result, "postgres_attempts")
    assert (loaded["received"], loaded["loaded"], loaded["rejected"]) == (0, 0, 0)


def test_records_outside_the_window_are_counted_not_loaded(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator
) -> None:
    good = day_records(small_simulator)[:30]
    template = good[0]

    def at(moment: str) -> dict:
        return {**template, "created_at": moment}

    first_instant = at("2024-10-08 00:00:00.000000")  # start is inclusive
    outside = [
        at("2024-10-07 23:59:59.999999"),  # a microsecond early
        at("2024-10-09 00:00:00.000000"),  # end is exclusive
        at("2024-10-09 00:00:00"),
        at("1999-01-01 00:00:00"),
        at("2099-12-31 23:59:59"),
    ]
    small_simulator.set_day_payload(DAY, [*good, first_instant, *outside])
    result = run_pipeline(resources)

    assert_day_complete(result, resources, emulator, [*good, first_instant])
    loaded = metadata(result, "postgres_attempts")
    assert loaded["out_of_window"] == len(outside)
    assert loaded["received"] == len(good) + 1 + len(outside)
    assert loaded["loaded"] == len(good) + 1 and loaded["rejected"] == 0
    assert db_rows(warehouse, "attempts_rejected") == []  # out of window is not "bad"
    rows = db_rows(warehouse, "attempts")
    assert min(r[6] for r in rows) == datetime(2024, 10, 8)
    assert max(r[6] for r in rows) < datetime(2024, 10, 9)
