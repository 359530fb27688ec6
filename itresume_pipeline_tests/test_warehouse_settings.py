"""ITRESUME_DATABASE_URL and ITRESUME_DB_SCHEMA: required outside the local profile, checked
before any connection, and connection failures split into the retryable and the final ones."""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from unittest import mock

import pytest
from dagster import DagsterEventType, DagsterInstance, Failure, materialize
from psycopg.conninfo import make_conninfo

from itresume_pipeline import settings
from itresume_pipeline.assets.ingestion import postgres_attempts
from itresume_pipeline.resources import build_resources
from itresume_pipeline.resources.postgres import PostgresResource, WarehouseError

DAY = date(2024, 10, 8)
PASSWORD = "Canary-Pw-7Hq2Zx9Lm"
MALFORMED = {
    "no scheme": f"postgres:{PASSWORD}@localhost:5432/db",
    "no scheme, no user": "localhost:5432/db",
    "wrong scheme": f"mysql://postgres:{PASSWORD}@localhost:3306/db",
    "port not a number": f"postgresql://postgres:{PASSWORD}@localhost:abc/db",
    "port out of range": f"postgresql://postgres:{PASSWORD}@localhost:99999/db",
    "garbage": "garbage",
    "SQLAlchemy form": f"postgresql+psycopg2://postgres:{PASSWORD}@localhost:5432/db",
    "broken IPv6 host": f"postgresql://postgres:{PASSWORD}@[::1/db",
    "keyword form, bad port": f"host=localhost port=x user=postgres password={PASSWORD}",
    "unknown sslmode": f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/db?sslmode=bogus",
}


@pytest.fixture
def production(itresume_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("ITRESUME_PROFILE")
    return itresume_home


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a server that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def bound_warehouse() -> PostgresResource:
    """The warehouse as the code location binds it from the environment, with a short timeout."""
    bound = build_resources()["warehouse"]
    return PostgresResource(
        database_url=bound.database_url, schema_name=bound.schema_name, connect_timeout_s=2
    )


def connect_error(monkeypatch: pytest.MonkeyPatch, url: str) -> BaseException:
    monkeypatch.setenv("ITRESUME_DATABASE_URL", url)
    warehouse = bound_warehouse().process_config_and_initialize()  # as a run resolves it
    with pytest.raises(Exception) as info, warehouse.connect():
        pass
    return info.value


def assert_no_password(text: str) -> None:
    fragments = {PASSWORD[i : i + 8] for i in range(len(PASSWORD) - 7)}
    assert not [f for f in fragments if f in text], text


def assert_final(error: BaseException) -> None:
    """A Dagster Failure that forbids retries: the RetryPolicy does not re-run the step."""
    assert isinstance(error, Failure) and error.allow_retries is False, repr(error)


def test_an_unset_database_url_outside_the_local_profile_names_it(production: Path) -> None:
    with pytest.raises(settings.SettingError) as info, PostgresResource().connect():
        pass
    assert "ITRESUME_DATABASE_URL is not set" in str(info.value)
    assert not settings.embedded_pg_dir().exists()  # no throwaway server was started


@pytest.mark.parametrize("form", MALFORMED)
def test_a_malformed_database_url_is_a_setting_error_without_the_password(
    production: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    error = connect_error(monkeypatch, MALFORMED[form])
    assert isinstance(error, settings.SettingError), repr(error)
    assert isinstance(error, WarehouseError)  # what callers of the warehouse catch
    assert_final(error)
    assert "ITRESUME_DATABASE_URL" in str(error)
    assert_no_password(str(error))


def test_a_bad_schema_is_a_setting_error(
    pg_url: str, production: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ITRESUME_DB_SCHEMA", "Bad-Schema")
    error = connect_error(monkeypatch, pg_url)
    assert isinstance(error, settings.SettingError) and "ITRESUME_DB_SCHEMA" in str(error)


@pytest.mark.parametrize("what", ["refused", "timeout"])
def test_a_connection_that_may_come_back_stays_retryable_and_names_the_variable(
    production: Path, monkeypatch: pytest.MonkeyPatch, silent_server: int, what: str
) -> None:
    port = free_port() if what == "refused" else silent_server
    error = connect_error(monkeypatch, f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/x")
    assert isinstance(error, WarehouseError) and not isinstance(error, Failure), repr(error)
    message = str(error)
    assert "cannot connect to PostgreSQL" in message and "ITRESUME_DATABASE_URL" in message
    assert ("refused" if what == "refused" else "timeout") in message
    assert_no_password(message)


@pytest.mark.parametrize("wrong", ["user", "dbname"])
def test_a_wrong_role_or_a_missing_database_is_not_retried(
    pg_url: str, production: Path, monkeypatch: pytest.MonkeyPatch, wrong: str
) -> None:
    error = connect_error(monkeypatch, make_conninfo(pg_url, **{wrong: "no_such_name_x1"}))
    assert_final(error)
    assert isinstance(error, WarehouseError)
    message = str(error)
    assert "PostgreSQL refused the connection" in message and "ITRESUME_DATABASE_URL" in message
    assert '"no_such_name_x1" does not exist' in message


def run_load() -> tuple[str, int]:
    """postgres_attempts with the warehouse from the environment; its failure and retries."""
    landing = build_resources()["landing"]
    path = landing.payload_path(DAY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"[]"))
    # Dagster's PLUS_MINUS jitter draws random(): 0 gives the shortest waits (0 s, then 4 s).
    with mock.patch("dagster._core.definitions.policy.random", return_value=0.0):
        result = materialize(
            [postgres_attempts],
            resources={"warehouse": bound_warehouse(), "landing": landing},
            partition_key=DAY.isoformat(),
            instance=DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    assert not result.success
    events = [e for e in result.all_events if e.step_key == "postgres_attempts"]
    [failure] = [e for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
    retries = sum(1 for e in events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY)
    return failure.step_failure_data.error.to_string(), retries


@pytest.mark.parametrize("case", ["unset", "malformed", "wrong role", "refused"])
def test_a_run_retries_only_what_may_come_back(
    pg_url: str, production: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    url = {
        "unset": "",
        "malformed": MALFORMED["SQLAlchemy form"],
        "wrong role": make_conninfo(pg_url, user="no_such_name_x1"),
        "refused": f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/x",
    }[case]
    monkeypatch.setenv("ITRESUME_DATABASE_URL", url)
    text, retries = run_load()
    assert "ITRESUME_DATABASE_URL" in text
    assert_no_password(text)
    assert retries == (2 if case == "refused" else 0)
    assert not settings.embedded_pg_dir().exists()
