"""The PostgreSQL warehouse: connections, versioned migrations and the per-day locks.

psycopg 3 is used for its fast COPY. The warehouse is `database_url` (ITRESUME_DATABASE_URL), a
libpq URI or keyword string, checked before any connection; only the local profile may start the
embedded server instead. Connection failures are sorted by whether waiting can cure them: a
refused or timed-out connection is retried (Dagster's RetryPolicy), a wrong password, role or
database is not, and a malformed URL or schema is a `SettingError`.

Migrations run under an advisory lock, so concurrent first runs cannot race, and only when the
schema is missing or older than `SCHEMA_VERSION`. The version is read from a table of its own,
which no load locks: a fresh process never waits behind a running load, whose locks the DDL
(`CREATE INDEX IF NOT EXISTS` included) would otherwise have to wait for. Every connection reads
it (two catalog-sized queries), so nothing is cached per process and a schema dropped under a
running process is simply made again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from functools import cache
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
SCHEMA_VERSION = 1  # raise it with every change to schema.sql
DATABASE_URL_VAR = "ITRESUME_DATABASE_URL"
SCHEMA_VAR = "ITRESUME_DB_SCHEMA"
URL_FORM = "postgresql://user:password@host:port/dbname"
URI_SCHEMES = ("postgresql://", "postgres://")
# libpq's own words for failures that no retry can cure: the server said who or what is wrong.
REFUSALS = (
    "authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "permission denied for database",
    "does not exist",  # role "x" / database "x"
)


class WarehouseError(Exception):
    """A database problem, with any password already removed from the message; retryable."""


class WarehouseSettingError(settings.SettingError, WarehouseError):
    """The warehouse is configured wrongly: the message names the variable; never retried."""


class WarehouseRefused(WarehouseError, Failure):
    """The server refused us (credentials, role, database): waiting will not help."""

    def __init__(self, message: str) -> None:
        Failure.__init__(self, description=message, allow_retries=False)


@cache
def load_sql(name: str) -> str:
    """SQL lives in `.sql` files beside the code that runs it."""
    return (SQL_DIR / name).read_text("utf-8")


def check_database_url(url: str) -> str:
    """Refuse what libpq would misread, before connecting; never echo the value (a password)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme and not url.lower().startswith(URI_SCHEMES):
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
    if any(words in reason for words in REFUSALS):
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
        """A schema-qualified, quoted table identifier."""
        return sql.Identifier(self._schema(), name)

    def query(self, filename: str) -> sql.Composed:
        """A `.sql` file with `{schema}` bound to our quoted schema."""
        return sql.SQL(load_sql(filename)).format(schema=sql.Identifier(self._schema()))

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
        """Serialize writers of the same day (transaction-scoped advisory locks, sorted order)."""
        for day in sorted(set(days)):
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (DAY_LOCK_NAMESPACE, day.toordinal())
            )

    # -- internals ----------------------------------------------------------------------------

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
        """The schema's recorded version, 0 if none; reads only the catalog and a table of ours
        that no load locks."""
        with conn.transaction():
            found = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'schema_version'",
                (self._schema(),),
            ).fetchone()
            if not found:
                return 0
            row = conn.execute(
                sql.SQL("SELECT max(version) FROM {}").format(self.table("schema_version"))
            ).fetchone()
        return row[0] or 0

    def _migrate(self, conn: psycopg.Connection) -> None:
        """The DDL, once per version: under the migration lock, rechecked once it is held."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            if self._schema_version(conn) >= SCHEMA_VERSION:
                return  # another process migrated while we waited for the lock
            conn.execute(self.query("schema.sql"))
            conn.execute(
                sql.SQL("INSERT INTO {} (version) VALUES (%s) ON CONFLICT DO NOTHING").format(
                    self.table("schema_version")
                ),
                (SCHEMA_VERSION,),
            )
