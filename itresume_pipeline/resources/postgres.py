"""The PostgreSQL warehouse: connections, idempotent migrations and the per-day load.

psycopg 3 is used for its fast COPY. Migrations run once per process and schema, under an
advisory lock, so concurrent first runs cannot race each other.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from functools import cache
from pathlib import Path

import psycopg
from dagster import ConfigurableResource
from psycopg import sql
from pydantic import Field

from itresume_pipeline import settings
from itresume_pipeline.embedded_postgres import embedded_server_uri
from itresume_pipeline.redaction import redact

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MIGRATION_LOCK_KEY = 0x17_5E_5A_3E  # arbitrary, constant: "itresume migrations"
DAY_LOCK_NAMESPACE = 0x17_5E_5A_3F  # advisory locks of one partition day

_migrated: set[tuple[str, str]] = set()
_migrated_lock = threading.Lock()


class WarehouseError(Exception):
    """A database problem, with any password already removed from the message."""


@cache
def load_sql(name: str) -> str:
    """SQL lives in `.sql` files beside the code that runs it."""
    return (SQL_DIR / name).read_text("utf-8")


class PostgresResource(ConfigurableResource):
    """Where attempts, rejects and metrics live."""

    database_url: str = Field(
        default="",
        description="libpq URI (ITRESUME_DATABASE_URL); empty: embedded PostgreSQL under "
        "$ITRESUME_HOME/pg.",
    )
    schema_name: str = Field(
        default="", description="Schema for our tables; empty: ITRESUME_DB_SCHEMA, else itresume."
    )
    connect_timeout_s: int = Field(default=10, ge=1)

    @property
    def location(self) -> str:
        """Where the data went, printable: the URI without its password."""
        return redact(f"{self._conninfo()} (schema {self._schema()})")

    def table(self, name: str) -> sql.Composed:
        """A schema-qualified, quoted table identifier."""
        return sql.Identifier(self._schema(), name)

    def query(self, filename: str) -> sql.Composed:
        """A `.sql` file with `{schema}` bound to our quoted schema."""
        return sql.SQL(load_sql(filename)).format(schema=sql.Identifier(self._schema()))

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A migrated connection; the caller's `with conn.transaction()` scopes atomic work."""
        conninfo = self._conninfo()
        try:
            conn = psycopg.connect(
                conninfo, autocommit=autocommit, connect_timeout=self.connect_timeout_s
            )
        except psycopg.Error as error:  # ProgrammingError too: a malformed URI, quoted whole
            raise WarehouseError(
                f"cannot connect to PostgreSQL at {redact(conninfo)}: {redact(str(error))}"
            ) from None
        with conn:
            self._migrate_once(conn, conninfo)
            yield conn

    def lock_days(self, conn: psycopg.Connection, days: list[date]) -> None:
        """Serialize writers of the same day (transaction-scoped advisory locks, sorted order)."""
        for day in sorted(set(days)):
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (DAY_LOCK_NAMESPACE, day.toordinal())
            )

    # -- internals ----------------------------------------------------------------------------

    def _schema(self) -> str:
        name = self.schema_name or settings.env("ITRESUME_DB_SCHEMA", settings.DEFAULT_SCHEMA)
        if not SCHEMA_NAME.match(name):
            raise WarehouseError(
                f"ITRESUME_DB_SCHEMA={name!r} is not a plain lowercase identifier "
                "(letters, digits, underscore; at most 63 characters)"
            )
        return name

    def _conninfo(self) -> str:
        url = self.database_url or settings.env("ITRESUME_DATABASE_URL")
        return url or embedded_server_uri(settings.embedded_pg_dir())

    def _migrate_once(self, conn: psycopg.Connection, conninfo: str) -> None:
        key = (conninfo, self._schema())
        if key in _migrated:
            return
        with _migrated_lock:
            if key in _migrated:
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
                conn.execute(self.query("schema.sql"))
            if not conn.autocommit:
                conn.commit()
            _migrated.add(key)


def forget_migrations() -> None:
    """Tests drop schemas between cases; make the next connection migrate again."""
    with _migrated_lock:
        _migrated.clear()
