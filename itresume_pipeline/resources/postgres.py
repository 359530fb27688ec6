"""The PostgreSQL warehouse: connections, versioned migrations and the per-day locks.
A refused or timed-out connection is retried, a wrong password, role or database is not, and a
malformed URL or schema is a `SettingError`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import psycopg
from dagster import ConfigurableResource, Failure
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field

from itresume_pipeline import settings
from itresume_pipeline.redaction import redact

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MIGRATION_LOCK_KEY = 0x17_5E_5A_3E  # arbitrary, constant: "itresume migrations"
DAY_LOCK_NAMESPACE = 0x17_5E_5A_3F  # advisory locks of one partition day
SCHEMA_VERSION = 3  # raise it with every change to schema.sql (2: day partitions; 3: row_count)
DATABASE_URL_VAR = "ITRESUME_DATABASE_URL"
SCHEMA_VAR = "ITRESUME_DB_SCHEMA"
URL_FORM = "postgresql://user:password@host:port/dbname"
# libpq's own words for failures that no retry can cure: the server said who or what is wrong.
REFUSALS = re.compile(
    "authentication failed|no password supplied|no pg_hba.conf entry|"
    "permission denied for database|does not exist"  # role "x" / database "x"
)


class WarehouseError(Exception):
    """A database problem, with any password already removed from the message; retryable."""


class WarehouseSettingError(settings.SettingError, WarehouseError):
    """The warehouse is configured wrongly: the message names the variable; never retried."""


class WarehouseRefused(WarehouseError, Failure):
    """The server refused us (credentials, role, database): waiting will not help."""

    def __init__(self, message: str) -> None:
        Failure.__init__(self, description=message, allow_retries=False)


def check_database_url(url: str) -> str:
    """Refuse what libpq would misread, before connecting; never echo the value (a password)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme and not url.lower().startswith(("postgresql://", "postgres://")):
        shown = f" {scheme!r}" if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]{0,30}", scheme) else ""
        raise WarehouseSettingError(
            f"{DATABASE_URL_VAR} has the scheme{shown}: libpq takes {URL_FORM} "
            "(no driver suffix such as +psycopg2, which is SQLAlchemy's form)"
        )
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        raise WarehouseSettingError(
            f"{DATABASE_URL_VAR} is not a libpq connection string: use {URL_FORM}"
        ) from None
    for port in filter(None, params.get("port", "").split(",")):
        if not (port.isdigit() and 0 < int(port) < 65536):
            shown = f" {port!r}" if len(port) <= 6 else ""  # longer is no port: maybe a password
            raise WarehouseSettingError(
                f"{DATABASE_URL_VAR} has the port{shown}: a port is a number from 1 to 65535"
            )
    return url


def connect_error(conninfo: str, error: psycopg.Error) -> WarehouseError:
    """The exception for a failed connection: retryable only if the cause may pass."""
    reason = redact(str(error).removeprefix("connection failed: "))
    where = f"PostgreSQL at {redact(conninfo)} ({DATABASE_URL_VAR})"
    if "invalid " in reason and "connection is bad" in str(error):  # libpq refused an option
        return WarehouseSettingError(f"{DATABASE_URL_VAR} is invalid: {reason}")
    if REFUSALS.search(reason):
        return WarehouseRefused(f"PostgreSQL refused the connection, {where}: {reason}")
    return WarehouseError(f"cannot connect to {where}: {reason}")


class PostgresResource(ConfigurableResource):
    """Where attempts, rejects and metrics live."""

    database_url: str = Field(
        default="",
        description=f"libpq URI, bound to {DATABASE_URL_VAR} (an EnvVar: it may carry a password); "
        "empty: the embedded PostgreSQL under $ITRESUME_HOME/pg in the local profile, an error "
        "naming the variable elsewhere.",
    )
    schema_name: str = Field(
        default=settings.DEFAULT_SCHEMA, description=f"Schema for our tables ({SCHEMA_VAR})."
    )
    connect_timeout_s: int = Field(default=10, ge=1)

    @property
    def location(self) -> str:
        """Where the data goes, printable: the URI without its password, or what is wrong."""
        try:
            return redact(f"{self._conninfo()} (schema {self._schema()})")
        except settings.SettingError as error:
            return str(error)

    def table(self, name: str) -> sql.Composed:
        return sql.Identifier(self._schema(), name)

    def query(self, filename: str) -> sql.Composed:
        """A `.sql` file with `{schema}` bound to our quoted schema."""
        text = (SQL_DIR / filename).read_text("utf-8")
        return sql.SQL(text).format(schema=sql.Identifier(self._schema()))

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A migrated connection; the caller's `with conn.transaction()` scopes atomic work."""
        conninfo = self._conninfo()
        self._schema()  # a bad schema fails before any connection
        try:
            conn = psycopg.connect(
                conninfo, autocommit=autocommit, connect_timeout=self.connect_timeout_s
            )
        except psycopg.Error as error:
            raise connect_error(conninfo, error) from None
        with conn:
            if self._schema_version(conn) < SCHEMA_VERSION:
                self._migrate(conn)
            yield conn

    def lock_days(self, conn: psycopg.Connection, days: list[date]) -> None:
        """Serialize writers of the same day (transaction-scoped, sorted: no deadlock)."""
        for day in sorted(set(days)):
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (DAY_LOCK_NAMESPACE, day.toordinal())
            )

    def _schema(self) -> str:
        name = self.schema_name
        if not SCHEMA_NAME.match(name):
            raise WarehouseSettingError(
                f"{SCHEMA_VAR}={name!r} is not a plain lowercase identifier "
                "(letters, digits, underscore; at most 63 characters)"
            )
        return name

    def _conninfo(self) -> str:
        url = self.database_url.strip()
        if url:
            return check_database_url(url)
        if not settings.is_local():
            raise settings.missing(
                DATABASE_URL_VAR,
                needed_for=f"the PostgreSQL warehouse ({URL_FORM}); only {settings.PROFILE_VAR}="
                f"{settings.LOCAL_PROFILE} starts an embedded server instead",
            )
        from itresume_pipeline.local.embedded_postgres import embedded_server_uri  # on demand

        return embedded_server_uri(settings.embedded_pg_dir())

    def _schema_version(self, conn: psycopg.Connection) -> int:
        """The recorded version, 0 if none, from a table no load locks: a fresh process never
        waits behind a running load."""
        with conn.transaction():
            name = f'"{self._schema()}".schema_version'
            if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None:
                return 0
            query = sql.SQL("SELECT max(version) FROM {}").format(self.table("schema_version"))
            return conn.execute(query).fetchone()[0] or 0

    def _migrate(self, conn: psycopg.Connection) -> None:
        """schema.sql (which also upgrades version 1 in place) under the migration lock."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            if self._schema_version(conn) >= SCHEMA_VERSION:
                return  # another process migrated while we waited for the lock
            conn.execute(self.query("schema.sql"))
            conn.execute(self.query("schema_version_record.sql"), {"version": SCHEMA_VERSION})
