"""The assets through Dagster's `materialize`, against the simulator and a real PostgreSQL."""

from __future__ import annotations

import hashlib
import os
from datetime import date, datetime

import psycopg
import pytest
from dagster import DagsterEventType, DagsterInstance, materialize
from isal import igzip
from psycopg import sql

from itresume_pipeline.assets.ingestion import _attempt_checks, postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics
from itresume_pipeline.jobs import range_tags
from itresume_pipeline.landing import LandingZone
from itresume_pipeline.loading import DayLoad, replace_days
from itresume_pipeline.local.simulator import generate_day, render_day_json
from itresume_pipeline_tests.conftest import TEST_ATTEMPTS_PER_DAY, TEST_CLIENT_KEY, make_api

DAY = date(2024, 10, 8)
ASSETS = [raw_attempts, postgres_attempts, daily_metrics]


def zone() -> LandingZone:
    """The landing zone of this test's $ITRESUME_HOME, as the code location binds it."""
    return LandingZone(root=os.environ["ITRESUME_HOME"])


def run(api, warehouse, *, partition: str | None = None, tags=None, assets=ASSETS):
    return materialize(
        assets,
        resources={"itresume_api": api, "warehouse": warehouse, "landing": zone()},
        partition_key=partition,
        tags=tags,
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def table_rows(warehouse, table: str, order: str) -> list[tuple]:
    columns = {
        "attempts": "user_id, oauth_consumer_key, lis_result_sourcedid, lis_outcome_service_url, "
        "is_correct, attempt_type, created_at",
        "attempts_rejected": "partition_date, reason, raw_record",
        "daily_metrics": "date, attempts, successful_attempts, unique_users",
    }[table]
    with psycopg.connect(warehouse.database_url) as conn:
        return conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                sql.SQL(columns), warehouse.table(table), sql.SQL(order)
            )
        ).fetchall()


def expected_metrics(records: list[dict]) -> tuple[int, int, int]:
    return (
        len(records),
        sum(1 for r in records if r["is_correct"] in (1, True)),
        len({r["lti_user_id"] for r in records}),
    )


def materialization(result, asset: str):
    return result.asset_materializations_for_node(asset)[0].metadata


def test_one_day_end_to_end(api, warehouse, simulator):
    result = run(api, warehouse, partition=DAY.isoformat())
    assert result.success
    records = generate_day(DAY, seed=simulator.seed, attempts_per_day=TEST_ATTEMPTS_PER_DAY)

    attempts = table_rows(warehouse, "attempts", "created_at, user_id")
    assert len(attempts) == len(records) == TEST_ATTEMPTS_PER_DAY
    assert {row[0] for row in attempts} == {r["lti_user_id"] for r in records}
    assert all(datetime(2024, 10, 8) <= row[6] < datetime(2024, 10, 9) for row in attempts)

    [metrics] = table_rows(warehouse, "daily_metrics", "date")
    assert metrics == (DAY, *expected_metrics(records))

    assert zone().payload_path(DAY).exists()
    assert not list(zone().payload_path(DAY).parent.glob(".*partial"))
    raw_meta = materialization(result, "raw_attempts")
    assert raw_meta["records"].value == len(records)
    assert TEST_CLIENT_KEY not in raw_meta["request_url"].value
    loaded_meta = materialization(result, "postgres_attempts")
    assert loaded_meta["loaded"].value == len(records)
    assert loaded_meta["rejected"].value == 0
    metric_meta = materialization(result, "daily_metrics")
    assert metric_meta["attempts"].value == len(records)
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 4 and all(e.passed for e in evaluations)


def test_rerunning_a_day_leaves_the_same_rows(api, warehouse, simulator):
    records = generate_day(DAY, seed=simulator.seed, attempts_per_day=TEST_ATTEMPTS_PER_DAY)
    bad = {"lti_user_id": "nope", "passback_params": "{}", "is_correct": None,
           "attempt_type": "run", "created_at": "2024-10-08 10:00:00.000000"}  # fmt: skip
    simulator.set_day_payload(DAY, [*records, bad])
    assert run(api, warehouse, partition=DAY.isoformat()).success
    first = (
        table_rows(
            warehouse, "attempts", "created_at, user_id, attempt_type, lis_result_sourcedid"
        ),
        table_rows(warehouse, "attempts_rejected", "reason"),
        table_rows(warehouse, "daily_metrics", "date"),
    )
    assert run(api, warehouse, partition=DAY.isoformat()).success
    second = (
        table_rows(
            warehouse, "attempts", "created_at, user_id, attempt_type, lis_result_sourcedid"
        ),
        table_rows(warehouse, "attempts_rejected", "reason"),
        table_rows(warehouse, "daily_metrics", "date"),
    )
    assert first == second
    assert len(first[0]) == len(records) and len(first[1]) == 1


def test_bad_records_are_quarantined_and_the_rest_load(api, warehouse, simulator):
    good = generate_day(DAY, seed=simulator.seed, attempts_per_day=20)
    payload = [
        *good,
        good[0],  # an exact duplicate: loaded once, counted
        {**good[1], "created_at": "2024-10-09 00:00:00.000000"},  # next day: out of window
        {**good[2], "lti_user_id": "XYZ"},
        {**good[3], "attempt_type": "compile"},
        {**good[4], "created_at": "2024-02-30 10:00:00"},
        {**good[5], "passback_params": "__import__('os').system('true')"},
        "not an object",
    ]
    simulator.set_day_payload(DAY, payload)
    result = run(api, warehouse, partition=DAY.isoformat())
    assert result.success

    assert len(table_rows(warehouse, "attempts", "created_at")) == len(good)
    rejected = table_rows(warehouse, "attempts_rejected", "reason")
    assert len(rejected) == 5
    assert all(row[0] == DAY for row in rejected)
    reasons = " | ".join(row[1] for row in rejected)
    for field in ("lti_user_id", "attempt_type", "created_at", "passback_params"):
        assert field in reasons
    assert any('"XYZ"' in row[2] for row in rejected)  # the raw record is kept

    meta = materialization(result, "postgres_attempts")
    assert meta["received"].value == len(payload)
    assert meta["loaded"].value == len(good)
    assert meta["duplicates"].value == 1
    assert meta["out_of_window"].value == 1
    assert meta["rejected"].value == 5
    reject_rate = next(
        e for e in result.get_asset_check_evaluations()
        if e.check_name == "reject_rate_below_threshold"
    )  # fmt: skip
    assert not reject_rate.passed  # 5 of 27 is far above 5 %


def test_truncated_payload_leaves_database_and_landing_unchanged(api, warehouse, simulator):
    assert run(api, warehouse, partition=DAY.isoformat()).success
    before_rows = table_rows(warehouse, "attempts", "created_at, user_id, lis_result_sourcedid")
    before_metrics = table_rows(warehouse, "daily_metrics", "date")
    before_file = hashlib.sha256(zone().payload_path(DAY).read_bytes()).hexdigest()

    simulator.set_day_payload(DAY, [])  # what the API would say now, if it answered in full
    simulator.inject("truncate", times=10)
    result = run(api, warehouse, partition=DAY.isoformat())
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert "broke off" in failure.step_failure_data.error.message
    assert TEST_CLIENT_KEY not in str(failure.step_failure_data.error.to_string())

    assert table_rows(warehouse, "attempts", "created_at, user_id, lis_result_sourcedid") == (
        before_rows
    )
    assert table_rows(warehouse, "daily_metrics", "date") == before_metrics
    assert hashlib.sha256(zone().payload_path(DAY).read_bytes()).hexdigest() == before_file
    assert not list(zone().payload_path(DAY).parent.glob(".*partial"))


def test_wrong_key_fails_fast_without_showing_it(api, warehouse, simulator):
    wrong = make_api(simulator, client_key="WRONG-key-123456")
    result = run(wrong, warehouse, partition=DAY.isoformat(), assets=[raw_attempts])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    text = failure.step_failure_data.error.to_string()
    assert "401" in text
    assert "WRONG-key-123456" not in text
    assert len(simulator.requests) == 1  # no retries, no RetryPolicy re-execution


def test_empty_day_is_a_valid_partition_with_zero_metrics(api, warehouse, simulator):
    simulator.set_day_payload(DAY, [])
    result = run(api, warehouse, partition=DAY.isoformat())
    assert result.success
    assert table_rows(warehouse, "daily_metrics", "date") == [(DAY, 0, 0, 0)]


def test_a_range_is_one_run_and_equals_day_by_day(api, warehouse, simulator):
    days = [date(2024, 10, d) for d in (6, 7, 8)]
    result = run(api, warehouse, tags=range_tags(days[0].isoformat(), days[-1].isoformat()))
    assert result.success
    ranged = table_rows(warehouse, "daily_metrics", "date")
    assert [row[0] for row in ranged] == days
    for row, day in zip(ranged, days, strict=True):
        records = generate_day(day, seed=simulator.seed, attempts_per_day=TEST_ATTEMPTS_PER_DAY)
        assert row[1:] == expected_metrics(records)
    starts = [r for r in simulator.requests if r["path"].endswith("/statistics")]
    assert len(starts) == 3  # one request per day, fetched concurrently


@pytest.mark.parametrize("kind", ["garbage"])
def test_invalid_body_after_retries_fails_and_changes_nothing(api, warehouse, simulator, kind):
    simulator.inject(kind, times=10)
    result = run(api, warehouse, partition=DAY.isoformat())
    assert not result.success
    assert not zone().payload_path(DAY).exists()
    assert not list(zone().payload_path(DAY).parent.glob(".*partial"))


def test_attempt_checks_find_rows_outside_the_window_and_empty_users(warehouse):
    """The checks read the table: rows a run wrote outside its day, and empty user ids."""
    day = date(2024, 10, 8)
    with warehouse.connect() as conn, conn.transaction():
        conn.execute("SELECT set_config('itresume.run_id', 'run-a', true)")
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (user_id, attempt_type, created_at) VALUES "
                "('u1', 'run', '2024-10-08 01:00'), ('', 'run', '2024-10-08 02:00'), "
                "('u3', 'run', '2024-10-09 00:00')"
            ).format(warehouse.table("attempts"))
        )
    written = DayLoad(day=day, received=3, loaded=3, copied=3)
    checks = {c.check_name: c for c in _attempt_checks(warehouse, [day], "run-a", written)}
    assert not checks["created_at_inside_partition"].passed
    assert checks["created_at_inside_partition"].metadata["rows_outside"].value == 1
    assert not checks["user_id_not_null"].passed
    assert checks["user_id_not_null"].metadata["null_user_ids"].value == 1
    assert checks["reject_rate_below_threshold"].passed

    clean = DayLoad(day=day, received=2, loaded=2, copied=2)
    checks = {c.check_name: c for c in _attempt_checks(warehouse, [day], "run-a", clean)}
    assert checks["created_at_inside_partition"].passed


def test_a_load_larger_than_the_copy_queue_streams_through_it(warehouse, tmp_path):
    """~30 MB of COPY data through a writer queue of 8 MB: the parser waits, nothing is lost."""
    day = date(2024, 10, 8)
    payload = tmp_path / "day.json.gz"
    with igzip.open(payload, "wb", compresslevel=1) as out:
        out.write(render_day_json(day, attempts_per_day=80_000))
    (load,), _ = replace_days(warehouse, {day: payload}, run_id="big-run")
    assert load.received == 80_000
    assert load.copied == load.loaded == 80_000 - load.duplicates - load.rejected
    with warehouse.connect() as conn:
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE run_id = 'big-run'").format(
                warehouse.table("attempts")
            )
        ).fetchone()[0]
    assert count == load.loaded
