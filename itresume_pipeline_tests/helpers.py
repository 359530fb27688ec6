"""Plain helpers shared by several test modules: constants, builders and readers, no fixtures.

They live here rather than in conftest.py because test modules import them by name, and
pytest's conftest.py is meant to be loaded by pytest, not imported; the fixtures that use them
are in conftest.py. Sections: the test client, a pipeline run and the stores it writes, an SMTP
relay, Google credentials, and a time limit for calls that may hang.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from dagster import DagsterEventType, DagsterInstance, materialize
from psycopg import sql

from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics, upsert_daily_metrics
from itresume_pipeline.assets.reporting import sheets_report
from itresume_pipeline.loading import replace_days
from itresume_pipeline.local.sheets_emulator import SheetsEmulator
from itresume_pipeline.local.simulator import ApiSimulator, generate_day
from itresume_pipeline.partitions import day_bounds
from itresume_pipeline.payload import count_records
from itresume_pipeline.resources.api import ItResumeApiResource
from itresume_pipeline.resources.mail import MailResource
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline.resources.sheets import SheetsResource
from itresume_pipeline_tests.reference import reference_attempt

# -- the test client ---------------------------------------------------------------------------

TEST_CLIENT = "test-client"
TEST_CLIENT_KEY = "sEcReT-KeY-4f1d9c"  # recognizable, so leak tests can search for it
TEST_ATTEMPTS_PER_DAY = 300


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


# -- a pipeline run and the stores it writes ---------------------------------------------------

DAY = date(2024, 10, 8)
ALL_ASSETS = [raw_attempts, postgres_attempts, daily_metrics, sheets_report]
SHEET_ID = "faults-sheet"
WORKSHEET = "daily_metrics"
HEADER = ["date", "attempts", "successful_attempts", "unique_users"]
ATTEMPT_COLUMNS = (
    "user_id, oauth_consumer_key, lis_result_sourcedid, lis_outcome_service_url, is_correct, "
    "attempt_type, created_at"
)
SMALL_DAY = 120  # records per day in the whole-graph scenarios: enough to matter, cheap to load


def run_pipeline(
    resources: dict[str, Any],
    *,
    partition: str | None = DAY.isoformat(),
    assets: list[Any] | None = None,
    instance: DagsterInstance | None = None,
    tags: dict[str, str] | None = None,
) -> Any:
    """One run of `assets` (default: all four) for one partition; never raises on failure."""
    return materialize(
        assets or ALL_ASSETS,
        resources=resources,
        partition_key=partition,
        tags=tags,
        instance=instance or DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def make_sheets(emulator: SheetsEmulator, **overrides: Any) -> SheetsResource:
    """The real Sheets client against the emulator, with millisecond backoffs."""
    config: dict[str, Any] = {
        "emulator_host": emulator.host_port,
        "spreadsheet_id": SHEET_ID,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
    }
    return SheetsResource(**{**config, **overrides})


def db_rows(warehouse: PostgresResource, table: str) -> list[tuple]:
    """A table's business columns (no lineage), in a stable order."""
    columns, order = {
        "attempts": (ATTEMPT_COLUMNS, ATTEMPT_COLUMNS),
        "attempts_rejected": ("partition_date, reason, raw_record", "reason, raw_record"),
        "daily_metrics": ("date, attempts, successful_attempts, unique_users", "date"),
    }[table]
    with psycopg.connect(warehouse.database_url) as conn:
        return conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                sql.SQL(columns), warehouse.table(table), sql.SQL(order)
            )
        ).fetchall()


def db_state(warehouse: PostgresResource) -> dict[str, list[tuple]]:
    return {t: db_rows(warehouse, t) for t in ("attempts", "attempts_rejected", "daily_metrics")}


def sheet_values(emulator: SheetsEmulator) -> list[list[str]] | None:
    try:
        return emulator.values(SHEET_ID, WORKSHEET)
    except KeyError:  # the worksheet was never created
        return None


def day_records(simulator: ApiSimulator, day: date = DAY) -> list[dict]:
    """The records the simulator serves for `day`, generated again from its seed."""
    return generate_day(day, seed=simulator.seed, attempts_per_day=simulator.attempts_per_day)


def expected_attempts(records: list[dict]) -> list[tuple]:
    """What `attempts` must hold for these (valid, in-window, distinct) records, sorted."""
    return sorted((tuple(reference_attempt(r)) for r in records), key=repr)


def metric_row(records: list[dict]) -> tuple[int, int, int]:
    return (
        len(records),
        sum(1 for r in records if r["is_correct"] in (1, True)),
        len({r["lti_user_id"] for r in records}),
    )


def seed_day(resources: dict[str, Any], day: date = DAY) -> None:
    """A complete earlier load of `day` in every store, made without Dagster (it is faster):
    the state a failed run must leave untouched."""
    zone = resources["landing"]
    temp = zone.download_temp(day)
    resources["itresume_api"].download(*day_bounds(day), temp, validate_stream=count_records)
    zone.publish_download(day, temp)
    replace_days(resources["warehouse"], {day: zone.payload_path(day)}, run_id="seed")
    rows = upsert_daily_metrics(resources["warehouse"], day, day)
    resources["sheets"].upsert_rows(rows)


def step_failures(result: Any) -> list[Any]:
    return [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]


def failure_text(result: Any) -> str:
    """Everything a failed run says about its failures: messages, causes and stacks."""
    parts = []
    for event in step_failures(result):
        data = event.step_failure_data
        parts.append(data.error.to_string() if data.error else "")
        if data.user_failure_data is not None:
            parts.append(data.user_failure_data.description or "")
    return "\n".join(parts)


def retries_of(result: Any) -> int:
    return sum(1 for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY)


def metadata(result: Any, asset: str) -> dict[str, Any]:
    return {
        k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()
    }


# -- an SMTP relay -----------------------------------------------------------------------------

SMTP_USER = "bot"
SMTP_PASSWORD = "s3cret-Пароль"  # non-ASCII on purpose: it must survive AUTH and never leak


def free_port() -> int:
    """aiosmtpd needs a concrete port (its ready-check connects to it), so pick one ourselves."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpSink:
    """Keeps every message the server accepted."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        return [
            message_from_bytes(e.original_content, policy=policy.default)  # type: ignore[misc]
            for e in self.envelopes
        ]


def smtp_login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    """aiosmtpd's authenticator: only SMTP_USER with SMTP_PASSWORD gets in."""
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@contextlib.contextmanager
def smtp_server(
    security: str, ca: trustme.CA | None = None, port: int | None = None
) -> Iterator[tuple[SmtpSink, int]]:
    """A real SMTP server speaking ``security`` ("none", "starttls" or "ssl") with AUTH."""
    sink = SmtpSink()
    kw: dict[str, Any] = {
        "hostname": "127.0.0.1",
        "port": port or free_port(),
        "authenticator": smtp_login,
    }
    if security != "none":
        assert ca is not None
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    if security == "none":
        controller = Controller(sink, auth_require_tls=False, **kw)
    elif security == "starttls":
        controller = Controller(sink, tls_context=server_ctx, require_starttls=True, **kw)
    else:  # implicit TLS is not seen by aiosmtpd as TLS, so AUTH must not require it
        controller = Controller(
            sink, ssl_context=server_ctx, server_hostname="localhost", auth_require_tls=False, **kw
        )
    controller.start()
    try:
        yield sink, kw["port"]
    finally:
        controller.stop()


def mail_for(port: int, security: str, ca_file: Path | None, **kw: Any) -> MailResource:
    """The real mail client for a relay from `smtp_server`, with its login."""
    fields: dict[str, Any] = {
        "host": "localhost",
        "port": port,
        "security": security,
        "user": SMTP_USER,
        "password": SMTP_PASSWORD,
        "ca_file": str(ca_file) if ca_file else "",
        "timeout_s": 5.0,
        "from_addr": "alerts@example.test",
        "to_addrs": "ops@example.test, Дежурный <oncall@example.test>",
    }
    fields.update(kw)
    return MailResource(**fields)


# -- Google credentials ------------------------------------------------------------------------


def write_credentials(path: Path, token_uri: str, private_key: str) -> Path:
    """A service-account key file whose token endpoint is `token_uri` (the emulator's)."""
    info = {
        "type": "service_account",
        "project_id": "itresume-test",
        "private_key_id": "k1",
        "private_key": private_key,
        "client_email": "robot@itresume-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


# -- a time limit for calls that may hang ------------------------------------------------------


def within(seconds: float, call: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
    """Run `call` on a daemon thread; fail the test if it is not done in `seconds`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed back to the test
            outcome["error"] = error

    began = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    elapsed = time.monotonic() - began
    assert not worker.is_alive(), f"still running after {seconds} s"
    return outcome.get("value"), outcome.get("error"), elapsed


def terminate_once(process: subprocess.Popen[bytes], limit_s: float = 15.0) -> str:
    """One SIGTERM, as the UI's Terminate, `dagster run terminate` and systemd send it; the
    process must be gone within `limit_s`. Returns what it printed."""
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    output, _ = process.communicate(timeout=limit_s)
    assert time.monotonic() - sent < limit_s
    return output.decode(errors="replace")


def sheet_day(n: int) -> str:
    """Day `n` (1-based) of October 2024, as the sheet's ISO date."""
    return (date(2024, 10, 1) + timedelta(days=n - 1)).isoformat()


def sheet_metric(n: int, scale: int = 1) -> dict[str, Any]:
    """A deterministic metrics row for day `n`; `scale` changes the values, not the date."""
    return {
        "date": sheet_day(n),
        "attempts": 100 * n * scale,
        "successful_attempts": 10 * n * scale,
        "unique_users": n + scale,
    }
