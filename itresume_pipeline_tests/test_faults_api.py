"""Fault injection at the API boundary, asserting the end state everywhere a run writes.

Every scenario runs the whole graph (raw_attempts -> postgres_attempts -> daily_metrics ->
sheets_report) through `dagster.materialize` against the API simulator, a real PostgreSQL and
the Sheets emulator, then compares the rows in PostgreSQL, the landing zone and the sheet with
what they were before the run. The helpers here are shared by the other `test_faults_*` modules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

import orjson
import psycopg
import pytest
from dagster import DagsterEventType, DagsterInstance, materialize
from psycopg import sql

from itresume_pipeline import landing
from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics, upsert_daily_metrics
from itresume_pipeline.assets.reporting import sheets_report
from itresume_pipeline.loading import replace_days
from itresume_pipeline.local.sheets_emulator import SheetsEmulator
from itresume_pipeline.local.simulator import ApiSimulator, generate_day
from itresume_pipeline.partitions import day_bounds
from itresume_pipeline.payload import count_records
from itresume_pipeline.records import validate_record
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline.resources.sheets import SheetsResource
from itresume_pipeline_tests.conftest import TEST_CLIENT, TEST_CLIENT_KEY, make_api

DAY = date(2024, 10, 8)
ALL_ASSETS = [raw_attempts, postgres_attempts, daily_metrics, sheets_report]
SHEET_ID = "faults-sheet"
WORKSHEET = "daily_metrics"
HEADER = ["date", "attempts", "successful_attempts", "unique_users"]
ATTEMPT_COLUMNS = (
    "user_id, oauth_consumer_key, lis_result_sourcedid, lis_outcome_service_url, is_correct, "
    "attempt_type, created_at"
)
SMALL_DAY = 120  # records per day in these scenarios: enough to matter, cheap to load


# -- shared helpers --------------------------------------------------------------------------


def run_pipeline(
    resources: dict[str, Any],
    *,
    partition: str | None = DAY.isoformat(),
    assets: list[Any] | None = None,
    instance: DagsterInstance | None = None,
    tags: dict[str, str] | None = None,
) -> Any:
    """One run of `assets` (default: all four) for one partition; never raises on failure."""
    return materialize(
        assets or ALL_ASSETS,
        resources=resources,
        partition_key=partition,
        tags=tags,
        instance=instance or DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def db_rows(warehouse: PostgresResource, table: str) -> list[tuple]:
    """A table's business columns (no lineage), in a stable order."""
    columns, order = {
        "attempts": (ATTEMPT_COLUMNS, ATTEMPT_COLUMNS),
        "attempts_rejected": ("partition_date, reason, raw_record", "reason, raw_record"),
        "daily_metrics": ("date, attempts, successful_attempts, unique_users", "date"),
    }[table]
    with psycopg.connect(warehouse.database_url) as conn:
        return conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                sql.SQL(columns), warehouse.table(table), sql.SQL(order)
            )
        ).fetchall()


def db_state(warehouse: PostgresResource) -> dict[str, list[tuple]]:
    return {t: db_rows(warehouse, t) for t in ("attempts", "attempts_rejected", "daily_metrics")}


def landing_state() -> dict[str, str]:
    """Every file in the landing folder (hidden temp files included) -> sha256."""
    folder = landing.landing_path(DAY).parent
    if not folder.exists():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def partial_files() -> list[str]:
    folder = landing.landing_path(DAY).parent
    return [p.name for p in folder.glob(f"*{landing.TEMP_SUFFIX}")] if folder.exists() else []


def sheet_values(emulator: SheetsEmulator) -> list[list[str]] | None:
    try:
        return emulator.values(SHEET_ID, WORKSHEET)
    except KeyError:  # the worksheet was never created
        return None


def expected_attempts(records: list[dict]) -> list[tuple]:
    """What `attempts` must hold for these (valid, in-window, distinct) records, sorted."""
    return sorted((tuple(validate_record(r)) for r in records), key=repr)


def metric_row(records: list[dict]) -> tuple[int, int, int]:
    return (
        len(records),
        sum(1 for r in records if r["is_correct"] in (1, True)),
        len({r["lti_user_id"] for r in records}),
    )


def step_failures(result: Any) -> list[Any]:
    return [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]


def failure_text(result: Any) -> str:
    """Everything a failed run says about its failures: messages, causes and stacks."""
    parts = []
    for event in step_failures(result):
        data = event.step_failure_data
        parts.append(data.error.to_string() if data.error else "")
        if data.user_failure_data is not None:
            parts.append(data.user_failure_data.description or "")
    return "\n".join(parts)


def retries_of(result: Any) -> int:
    return sum(1 for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY)


def metadata(result: Any, asset: str) -> dict[str, Any]:
    return {
        k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()
    }


def api_requests(simulator: ApiSimulator) -> list[dict]:
    return [r for r in simulator.requests if r["path"].endswith("/statistics")]


@pytest.fixture
def emulator() -> Iterator[SheetsEmulator]:
    with SheetsEmulator() as emu:
        emu.create_spreadsheet(SHEET_ID)
        yield emu


def make_sheets(emulator: SheetsEmulator, **overrides: Any) -> SheetsResource:
    config: dict[str, Any] = {
        "emulator_host": emulator.host_port,
        "spreadsheet_id": SHEET_ID,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
    }
    return SheetsResource(**{**config, **overrides})


@pytest.fixture
def small_simulator() -> Iterator[ApiSimulator]:
    with ApiSimulator(
        client=TEST_CLIENT, client_key=TEST_CLIENT_KEY, attempts_per_day=SMALL_DAY
    ) as sim:
        yield sim


@pytest.fixture
def resources(
    small_simulator: ApiSimulator, warehouse: PostgresResource, emulator: SheetsEmulator
) -> dict[str, Any]:
    """The real resources against the doubles, with millisecond API backoffs and 3 tries."""
    return {
        "itresume_api": make_api(small_simulator, max_attempts=3),
        "warehouse": warehouse,
        "sheets": make_sheets(emulator),
    }


def day_records(simulator: ApiSimulator, day: date = DAY) -> list[dict]:
    return generate_day(day, seed=simulator.seed, attempts_per_day=simulator.attempts_per_day)


def seed_day(resources: dict[str, Any], day: date = DAY) -> None:
    """A complete earlier load of `day` in every store, made without Dagster (it is faster):
    the state a failed run must leave untouched."""
    final = landing.landing_path(day)
    temp = landing.temp_path_for(final)
    resources["itresume_api"].download(*day_bounds(day), temp, validate_stream=count_records)
    landing.publish(temp, final)
    replace_days(resources["warehouse"], {day: final}, run_id="seed")
    rows = upsert_daily_metrics(resources["warehouse"], day, day)
    resources["sheets"].upsert_rows(rows)


def assert_day_complete(
    result: Any, warehouse: PostgresResource, emulator: SheetsEmulator, records: list[dict]
) -> None:
    """The run succeeded and every store holds exactly `records` for DAY."""
    assert result.success, failure_text(result)
    rows = db_rows(warehouse, "attempts")
    assert sorted(rows, key=repr) == expected_attempts(records)
    assert db_rows(warehouse, "daily_metrics") == [(DAY, *metric_row(records))]
    values = sheet_values(emulator)
    assert values == [HEADER, [DAY.isoformat(), *map(str, metric_row(records))]]
    assert landing.landing_path(DAY).exists() and not partial_files()
    assert all(e.passed for e in result.get_asset_check_evaluations())


# -- scenarios -------------------------------------------------------------------------------


def test_two_5xx_then_ok_gives_the_complete_day_everywhere(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator
) -> None:
    small_simulator.inject("status", code=502)
    small_simulator.inject("status", code=503)
    result = run_pipeline(resources)
    assert_day_complete(result, warehouse, emulator, day_records(small_simulator))
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
    before = (db_state(warehouse), sheet_values(emulator), landing_state())
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
    assert (db_state(warehouse), sheet_values(emulator), landing_state()) == before
    assert not partial_files()


def test_a_200_error_object_fails_at_once_quoting_the_api_without_the_key(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator
) -> None:
    """`{"errors": ...}` with HTTP 200 is the API speaking, not a proxy's hiccup: no retry, and
    its words are quoted, masked first, so a key it echoes never shows, not even in part."""
    seed_day(resources)
    before = (db_state(warehouse), sheet_values(emulator), landing_state())
    small_simulator.requests.clear()
    message = f"no such key {TEST_CLIENT_KEY} for client {TEST_CLIENT}"
    small_simulator.set_day_payload(DAY, orjson.dumps({"errors": message}))

    result = run_pipeline(resources)

    assert not result.success
    text = failure_text(result)
    assert "HTTP 200 with an error instead of data: no such key *** for client" in text, text
    assert not any(TEST_CLIENT_KEY[i : i + 8] in text for i in range(len(TEST_CLIENT_KEY) - 7))
    assert len(api_requests(small_simulator)) == 1 and retries_of(result) == 0
    assert (db_state(warehouse), sheet_values(emulator), landing_state()) == before
    assert not partial_files()


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_fail_at_once_naming_the_client_not_the_key(
    status: int, resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator
) -> None:
    seed_day(resources)
    before = (db_state(warehouse), sheet_values(emulator), landing_state())
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
    assert (db_state(warehouse), sheet_values(emulator), landing_state()) == before


def test_an_empty_day_is_a_valid_partition_with_a_zero_row_everywhere(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator
) -> None:
    small_simulator.set_day_payload(DAY, [])
    result = run_pipeline(resources)
    assert_day_complete(result, warehouse, emulator, [])
    assert db_rows(warehouse, "attempts_rejected") == []
    assert emulator.values(SHEET_ID, WORKSHEET) == [HEADER, [DAY.isoformat(), "0", "0", "0"]]
    with landing.open_payload(landing.landing_path(DAY)) as stream:
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

    assert_day_complete(result, warehouse, emulator, [*good, first_instant])
    loaded = metadata(result, "postgres_attempts")
    assert loaded["out_of_window"] == len(outside)
    assert loaded["received"] == len(good) + 1 + len(outside)
    assert loaded["loaded"] == len(good) + 1 and loaded["rejected"] == 0
    assert db_rows(warehouse, "attempts_rejected") == []  # out of window is not "bad"
    rows = db_rows(warehouse, "attempts")
    assert min(r[6] for r in rows) == datetime(2024, 10, 8)
    assert max(r[6] for r in rows) < datetime(2024, 10, 9)
