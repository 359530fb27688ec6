"""The assets through Dagster's `materialize`, against the simulator and a real PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import date, datetime

import pytest
from isal import igzip
from psycopg import sql

from itresume_pipeline.assets.ingestion import attempt_checks, postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics
from itresume_pipeline.jobs import range_tags
from itresume_pipeline.loading import DayLoad, add_day_partitions, replace_days
from itresume_pipeline.local.simulator import generate_day, render_day_json
from itresume_pipeline_tests.helpers import (
    DAY,
    TEST_ATTEMPTS_PER_DAY,
    TEST_CLIENT_KEY,
    db_rows,
    make_api,
    metadata,
    metric_row,
    run_pipeline,
    step_failures,
)

ASSETS = [raw_attempts, postgres_attempts, daily_metrics]


def run(api, warehouse, landing, *, partition: str | None = None, tags=None, assets=ASSETS):
    """Ingestion and metrics (no sheet) for `partition`, never raising on failure."""
    resources = {"itresume_api": api, "warehouse": warehouse, "landing": landing}
    return run_pipeline(resources, partition=partition, tags=tags, assets=assets)


def test_one_day_end_to_end(api, warehouse, simulator, landing_zone):
    result = run(api, warehouse, landing_zone, partition=DAY.isoformat())
    assert result.success
    records = generate_day(DAY, seed=simulator.seed, attempts_per_day=TEST_ATTEMPTS_PER_DAY)

    attempts = db_rows(warehouse, "attempts")
    assert len(attempts) == len(records) == TEST_ATTEMPTS_PER_DAY
    assert {row[0] for row in attempts} == {r["lti_user_id"] for r in records}
    assert all(datetime(2024, 10, 8) <= row[6] < datetime(2024, 10, 9) for row in attempts)

    [metrics] = db_rows(warehouse, "daily_metrics")
    assert metrics == (DAY, *metric_row(records))

    assert landing_zone.payload_path(DAY).exists()
    assert not list(landing_zone.payload_path(DAY).parent.glob(".*partial"))
    raw_meta = metadata(result, "raw_attempts")
    assert raw_meta["records"] == len(records)
    assert TEST_CLIENT_KEY not in raw_meta["request_url"]
    loaded_meta = metadata(result, "postgres_attempts")
    assert loaded_meta["loaded"] == len(records)
    assert loaded_meta["rejected"] == 0
    metric_meta = metadata(result, "daily_metrics")
    assert metric_meta["attempts"] == len(records)
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 4 and all(e.passed for e in evaluations)


def test_rerunning_a_day_leaves_the_same_rows(api, warehouse, simulator, landing_zone):
    records = generate_day(DAY, seed=simulator.seed, attempts_per_day=TEST_ATTEMPTS_PER_DAY)
    bad = {"lti_user_id": "nope", "passback_params": "{}", "is_correct": None,
           "attempt_type": "run", "created_at": "2024-10-08 10:00:00.000000"}  # fmt: skip
    simulator.set_day_payload(DAY, [*records, bad])
    assert run(api, warehouse, landing_zone, partition=DAY.isoformat()).success
    first = (
        db_rows(warehouse, "attempts"),
        db_rows(warehouse, "attempts_rejected"),
        db_rows(warehouse, "daily_metrics"),
    )
    assert run(api, warehouse, landing_zone, partition=DAY.isoformat()).success
    second = (
        db_rows(warehouse, "attempts"),
        db_rows(warehouse, "attempts_rejected"),
        db_rows(warehouse, "daily_metrics"),
    )
    assert first == second
    assert len(first[0]) == len(records) and len(first[1]) == 1


def test_bad_records_are_quarantined_and_the_rest_load(api, warehouse, simulator, landing_zone):
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
    result = run(api, warehouse, landing_zone, partition=DAY.isoformat())
    assert result.success

    assert len(db_rows(warehouse, "attempts")) == len(good)
    rejected = db_rows(warehouse, "attempts_rejected")
    assert len(rejected) == 5
    assert all(row[0] == DAY for row in rejected)
    reasons = " | ".join(row[1] for row in rejected)
    for field in ("lti_user_id", "attempt_type", "created_at", "passback_params"):
        assert field in reasons
    assert any('"XYZ"' in row[2] for row in rejected)  # the raw record is kept

    meta = metadata(result, "postgres_attempts")
    assert meta["received"] == len(payload)
    assert meta["loaded"] == len(good)
    assert meta["duplicates"] == 1
    assert meta["out_of_window"] == 1
    assert meta["rejected"] == 5
    reject_rate = next(
        e for e in result.get_asset_check_evaluations()
        if e.check_name == "reject_rate_below_threshold"
    )  # fmt: skip
    assert not reject_rate.passed  # 5 of 27 is far above 5 %


def test_truncated_payload_leaves_database_and_landing_unchanged(
    api, warehouse, simulator, landing_zone
):
    assert run(api, warehouse, landing_zone, partition=DAY.isoformat()).success
    before_rows = db_rows(warehouse, "attempts")
    before_metrics = db_rows(warehouse, "daily_metrics")
    before_file = hashlib.sha256(landing_zone.payload_path(DAY).read_bytes()).hexdigest()

    simulator.set_day_payload(DAY, [])  # what the API would say now, if it answered in full
    simulator.inject("truncate", times=10)
    result = run(api, warehouse, landing_zone, partition=DAY.isoformat())
    assert not result.success
    failure = step_failures(result)[0]
    assert "broke off" in failure.step_failure_data.error.message
    assert TEST_CLIENT_KEY not in str(failure.step_failure_data.error.to_string())

    assert db_rows(warehouse, "attempts") == before_rows
    assert db_rows(warehouse, "daily_metrics") == before_metrics
    assert hashlib.sha256(landing_zone.payload_path(DAY).read_bytes()).hexdigest() == before_file
    assert not list(landing_zone.payload_path(DAY).parent.glob(".*partial"))


def test_wrong_key_fails_fast_without_showing_it(api, warehouse, simulator, landing_zone):
    wrong = make_api(simulator, client_key="WRONG-key-123456")
    result = run(wrong, warehouse, landing_zone, partition=DAY.isoformat(), assets=[raw_attempts])
    assert not result.success
    failure = step_failures(result)[0]
    text = failure.step_failure_data.error.to_string()
    assert "401" in text
    assert "WRONG-key-123456" not in text
    assert len(simulator.requests) == 1  # no retries, no RetryPolicy re-execution


def test_empty_day_is_a_valid_partition_with_zero_metrics(api, warehouse, simulator, landing_zone):
    simulator.set_day_payload(DAY, [])
    result = run(api, warehouse, landing_zone, partition=DAY.isoformat())
    assert result.success
    assert db_rows(warehouse, "daily_metrics") == [(DAY, 0, 0, 0)]


def test_a_range_is_one_run_and_equals_day_by_day(api, warehouse, simulator, landing_zone):
    days = [date(2024, 10, d) for d in (6, 7, 8)]
    result = run(
        api, warehouse, landing_zone, tags=range_tags(days[0].isoformat(), days[-1].isoformat())
    )
    assert result.success
    ranged = db_rows(warehouse, "daily_metrics")
    assert [row[0] for row in ranged] == days
    for row, day in zip(ranged, days, strict=True):
        records = generate_day(day, seed=simulator.seed, attempts_per_day=TEST_ATTEMPTS_PER_DAY)
        assert row[1:] == metric_row(records)
    starts = [r for r in simulator.requests if r["path"].endswith("/statistics")]
    assert len(starts) == 3  # one request per day, fetched concurrently


@pytest.mark.parametrize("kind", ["garbage"])
def test_invalid_body_after_retries_fails_and_changes_nothing(
    api, warehouse, simulator, landing_zone, kind
):
    simulator.inject(kind, times=10)
    result = run(api, warehouse, landing_zone, partition=DAY.isoformat())
    assert not result.success
    assert not landing_zone.payload_path(DAY).exists()
    assert not list(landing_zone.payload_path(DAY).parent.glob(".*partial"))


def test_attempt_checks_find_rows_outside_the_window_and_empty_users(warehouse):
    """The checks read the table: rows a run wrote outside its day, and empty user ids."""
    day = date(2024, 10, 8)
    with warehouse.connect() as conn, conn.transaction():
        for partition_day in (day, date(2024, 10, 9)):
            add_day_partitions(conn, warehouse, partition_day)
        conn.execute("SELECT set_config('itresume.run_id', 'run-a', true)")
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (user_id, attempt_type, created_at) VALUES "
                "('u1', 'run', '2024-10-08 01:00'), ('', 'run', '2024-10-08 02:00'), "
                "('u3', 'run', '2024-10-09 00:00')"
            ).format(warehouse.table("attempts"))
        )
    written = DayLoad(day=day, received=3, loaded=3, copied=3)
    checks = {c.check_name: c for c in attempt_checks(warehouse, [day], "run-a", written)}
    assert not checks["created_at_inside_partition"].passed
    assert checks["created_at_inside_partition"].metadata["rows_outside"].value == 1
    assert not checks["user_id_not_null"].passed
    assert checks["user_id_not_null"].metadata["null_user_ids"].value == 1
    assert checks["reject_rate_below_threshold"].passed

    clean = DayLoad(day=day, received=2, loaded=2, copied=2)
    checks = {c.check_name: c for c in attempt_checks(warehouse, [day], "run-a", clean)}
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
