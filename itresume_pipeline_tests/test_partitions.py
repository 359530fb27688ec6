"""Daily partitions: a rerun leaves no dead copy, an unchanged payload is not reloaded, and a load
in progress blocks neither readers of other days nor the load of a new day."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import date, timedelta
from typing import Any

import orjson
import psycopg
from isal import igzip
from psycopg import sql

from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics, upsert_daily_metrics
from itresume_pipeline.jobs import range_tags
from itresume_pipeline.loading import replace_days
from itresume_pipeline.local.simulator import ApiSimulator, generate_day, render_day_json
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline_tests.helpers import DAY, metadata, metric_row, run_pipeline
from itresume_pipeline_tests.test_faults_postgres import Gate
from itresume_pipeline_tests.test_faults_postgres import gate as gate  # the fixture

ASSETS = [raw_attempts, postgres_attempts, daily_metrics]


def day_sizes(warehouse: PostgresResource, day: date) -> tuple[int, int]:
    """Rows and bytes on disk of the day's partition of attempts."""
    name = f"{warehouse.schema_name}.attempts_{day:%Y%m%d}"
    with psycopg.connect(warehouse.database_url) as conn:
        return conn.execute(
            sql.SQL("SELECT count(*), pg_relation_size(%s::regclass) FROM {}").format(
                warehouse.table(f"attempts_{day:%Y%m%d}")
            ),
            (name,),
        ).fetchone()


def test_a_rerun_replaces_the_day_without_leaving_a_dead_copy(warehouse, tmp_path) -> None:
    payload = tmp_path / "day.json.gz"
    with igzip.open(payload, "wb") as out:
        out.write(render_day_json(DAY, attempts_per_day=3000))
    sizes = []
    for run in range(3):
        (load,), _ = replace_days(warehouse, {DAY: payload}, run_id=f"run-{run}")
        sizes.append(day_sizes(warehouse, DAY))
        assert (
            load.sha256 == hashlib.sha256(render_day_json(DAY, attempts_per_day=3000)).hexdigest()
        )
    assert sizes[0][0] == load.loaded > 0
    assert sizes == [sizes[0]] * 3  # a DELETE and COPY would have doubled the size
    (skipped,), _ = replace_days(warehouse, {DAY: payload}, run_id="again", skip_unchanged=True)
    assert skipped.unchanged and skipped.loaded == 0 and day_sizes(warehouse, DAY) == sizes[0]


def test_a_lookback_reloads_only_the_days_whose_payload_changed(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse: PostgresResource
) -> None:
    days = [DAY - timedelta(days=2), DAY - timedelta(days=1), DAY]
    tags = range_tags(days[0].isoformat(), days[-1].isoformat())
    first = run_pipeline(resources, partition=None, assets=ASSETS, tags=tags)
    assert first.success
    assert metadata(first, "postgres_attempts")["reloaded_days"] == 3
    late = generate_day(days[1], seed=11, attempts_per_day=small_simulator.attempts_per_day + 5)
    small_simulator.set_day_payload(days[1], late)  # late records for the middle day

    second = run_pipeline(resources, partition=None, assets=ASSETS, tags=tags)

    assert second.success
    loaded = metadata(second, "postgres_attempts")
    assert loaded["reloaded_days"] == 1
    assert loaded["unchanged_days"] == [days[0].isoformat(), days[2].isoformat()]
    with psycopg.connect(warehouse.database_url) as conn:
        stored = conn.execute(
            sql.SQL(
                "SELECT date, attempts, successful_attempts, unique_users FROM {} ORDER BY date"
            ).format(warehouse.table("daily_metrics"))
        ).fetchall()
    records = {d: generate_day(d, attempts_per_day=small_simulator.attempts_per_day) for d in days}
    records[days[1]] = late
    assert stored == [(d, *metric_row(records[d])) for d in days]  # the metrics follow


def test_a_load_in_progress_blocks_neither_other_days_nor_a_new_day(
    warehouse: PostgresResource,
    gate: Gate,
    tmp_path,
) -> None:
    gated, read_day, new_day = DAY, DAY - timedelta(days=1), DAY + timedelta(days=1)
    payloads = {}
    for day in (gated, read_day, new_day):
        payloads[day] = tmp_path / f"{day}.json.gz"
        records = generate_day(day, attempts_per_day=200)
        if day == new_day:  # only morning records: the gate stops rows from noon on
            records = [r for r in records if r["created_at"][11:13] < "12"]
        with igzip.open(payloads[day], "wb") as out:
            out.write(orjson.dumps(records))
    replace_days(warehouse, {read_day: payloads[read_day]}, run_id="seed")
    gate.close()
    loading = threading.Thread(
        target=replace_days, args=(warehouse, {gated: payloads[gated]}), kwargs={"run_id": "held"}
    )
    loading.start()
    try:
        gate.held()
        began = time.monotonic()
        (metrics,) = upsert_daily_metrics(warehouse, read_day, read_day)
        (load,), _ = replace_days(warehouse, {new_day: payloads[new_day]}, run_id="new")
        assert time.monotonic() - began < 5, "waited for the load of another day"
        assert metrics["attempts"] > 0 and load.copied == day_sizes(warehouse, new_day)[0] > 0
    finally:
        gate.open()
        loading.join(30)
    assert day_sizes(warehouse, gated)[0] > 0
