"""Nothing leaked: secrets stay out of logs, events, metadata, exceptions and e-mails.

Every secret is set to a recognizable value (the API key, the SMTP password, a Sheets
service-account private key, a database password inside ITRESUME_DATABASE_URL), the resources
are wired from the environment exactly as the code location wires them, and a series of
successful and failing runs goes through every boundary: the API, PostgreSQL, the Sheets API
(the real OAuth flow, against the emulator) and an SMTP relay that requires STARTTLS and AUTH.
Afterwards every place a secret could end up is searched for any of them.

The second half checks that identifiers taken from configuration are validated or quoted, and
that no SQL statement in the product code is built by string formatting.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import gzip
import json
import logging
import re
import ssl
import traceback
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import dagster as dg
import psycopg
import pytest
import trustme
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from dagster import DagsterInstance, EnvVar
from dagster._serdes import serialize_value
from dagster._utils.error import serializable_error_info_from_exc_info
from psycopg import sql

from itresume_pipeline.assets.reporting import sheets_report
from itresume_pipeline.landing import LandingZone
from itresume_pipeline.loading import replace_days
from itresume_pipeline.local.sheets_emulator import SheetsEmulator
from itresume_pipeline.local.simulator import ApiSimulator, render_day_json
from itresume_pipeline.partitions import day_bounds
from itresume_pipeline.payload import count_records
from itresume_pipeline.redaction import redact
from itresume_pipeline.resources import build_alert_resources, build_resources
from itresume_pipeline.resources.api import ItResumeApiResource
from itresume_pipeline.resources.mail import MailDeliveryError, MailResource
from itresume_pipeline.resources.postgres import PostgresResource, WarehouseError
from itresume_pipeline.resources.sheets import SheetsError, SheetsResource
from itresume_pipeline.sensors import alert_outbox_flush, run_failure_alert
from itresume_pipeline_tests.helpers import (
    DAY,
    TEST_CLIENT,
    SmtpSink,
    failure_text,
    free_port,
    run_pipeline,
    write_credentials,
)

# Dagster flags the yaml-style python_logs handlers (what dagster.yaml ships) as beta.
pytestmark = pytest.mark.filterwarnings("ignore::dagster.BetaWarning")

CLIENT_KEY = "ck-LEAKCANARY-api-7f3e2a"
SMTP_USER = "alerts-bot"
SMTP_PASSWORD = "smtp-LEAKCANARY-pw-91b4"
DB_PASSWORD = "pg-LEAKCANARY-pw-33c8"
SHEET_ID = "secret-test-sheet"
REPO = Path(__file__).resolve().parent.parent


# -- canaries --------------------------------------------------------------------------------


class Canaries:
    """The secrets, and every form they could take in text: raw, URL-encoded, and for the
    private key any 20-character piece of its base64 body."""

    def __init__(self, private_key_pem: str) -> None:
        self.needles: dict[str, str] = {}
        for name, secret in (
            ("client key", CLIENT_KEY),
            ("SMTP password", SMTP_PASSWORD),
            ("DB password", DB_PASSWORD),
        ):
            for form in (secret, quote(secret, safe=""), quote_plus(secret)):
                self.needles[form] = name
        body = [line for line in private_key_pem.splitlines() if "-----" not in line]
        for line in body:
            for start in range(0, len(line) - 19, 20):
                piece = line[start : start + 20]
                for form in (piece, quote(piece, safe=""), json.dumps(piece)[1:-1]):
                    self.needles[form] = "private key"

    def found_in(self, text: str) -> list[str]:
        return sorted({name for needle, name in self.needles.items() if needle in text})

    def assert_absent(self, where: str, text: str) -> None:
        leaked = self.found_in(text)
        assert not leaked, f"{', '.join(leaked)} leaked into {where}"


def file_texts(root: Path) -> Iterator[tuple[Path, str]]:
    """Every file under `root` as text (gzip files decompressed; binary bytes replaced)."""
    if not root.exists():
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            with contextlib.suppress(OSError, EOFError):
                data = gzip.decompress(data)
        yield path, data.decode("utf-8", "replace")


def with_password(url: str, password: str) -> str:
    """`url` with `password` set in its user info (user `postgres` if it had none)."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0] or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{hostport}"))


class RootCapture(logging.Handler):
    """Everything logged by any library at any level, formatted with tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @contextlib.contextmanager
    def installed(self) -> Iterator[RootCapture]:
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        try:
            yield self
        finally:
            root.removeHandler(self)
            root.setLevel(old_level)


@contextlib.contextmanager
def smtp_relay(ca: trustme.CA, port: int | None = None) -> Iterator[tuple[SmtpSink, int]]:
    """An SMTP relay that requires STARTTLS and AUTH with SMTP_USER / SMTP_PASSWORD."""

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)

    sink = SmtpSink()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    port = port or free_port()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
    )
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


def no_jitter() -> Any:
    """Dagster's retry jitter draws random(); 0 makes a first retry immediate."""
    return mock.patch("dagster._core.definitions.policy.random", return_value=0.0)


# -- the world: every secret set, every boundary real -----------------------------------------


@pytest.fixture
def world(
    itresume_home: Path,
    warehouse: PostgresResource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    private_key_pem: str,
    tls_ca: tuple[trustme.CA, Path],
) -> Iterator[dict[str, Any]]:
    """The environment of a production deployment, with canary secrets and local doubles."""
    ca, ca_path = tls_ca
    with (
        ApiSimulator(client=TEST_CLIENT, client_key=CLIENT_KEY, attempts_per_day=60) as api,
        SheetsEmulator(require_auth=True) as emulator,
        smtp_relay(ca) as (sink, smtp_port),
    ):
        emulator.create_spreadsheet(SHEET_ID)
        credentials = write_credentials(
            tmp_path / "service-account.json", emulator.token_uri, private_key_pem
        )
        env = {
            "ITRESUME_API_URL": api.url,
            "ITRESUME_CLIENT": TEST_CLIENT,
            "ITRESUME_CLIENT_KEY": CLIENT_KEY,
            "ITRESUME_DATABASE_URL": with_password(warehouse.database_url, DB_PASSWORD),
            "ITRESUME_DB_SCHEMA": warehouse.schema_name,
            "ITRESUME_SHEETS_SPREADSHEET_ID": SHEET_ID,
            "ITRESUME_SHEETS_CREDENTIALS": str(credentials),
            "ITRESUME_SMTP_HOST": "localhost",
            "ITRESUME_SMTP_PORT": str(smtp_port),
            "ITRESUME_SMTP_SECURITY": "starttls",
            "ITRESUME_SMTP_USER": SMTP_USER,
            "ITRESUME_SMTP_PASSWORD": SMTP_PASSWORD,
            "ITRESUME_SMTP_CA_FILE": str(ca_path),
            "ITRESUME_ALERT_FROM": "pipeline@example.test",
            "ITRESUME_ALERT_TO": "ops@example.test",
            "ITRESUME_LOG_DIR": str(tmp_path / "logs"),
            "ITRESUME_ALERT_SPOOL_DIR": str(tmp_path / "spool"),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # As the code locations wire them: EnvVar secrets.
        resources = {**build_resources(), **build_alert_resources()}
        # Only what a deployment would tune differently in a test: the Sheets API root (the
        # emulator instead of Google, with the real OAuth flow) and millisecond backoffs.
        tuned = {"max_attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02}
        resources["sheets"] = SheetsResource(
            **{**dict(resources["sheets"]), "api_base_url": emulator.url, **tuned}
        )
        resources["itresume_api"] = ItResumeApiResource(
            url=api.url,
            client=EnvVar("ITRESUME_CLIENT"),
            client_key=EnvVar("ITRESUME_CLIENT_KEY"),
            max_attempts=2,
            backoff_base_s=0.01,
            backoff_max_s=0.02,
        )
        yield {
            "api": api,
            "emulator": emulator,
            "sink": sink,
            "resources": resources,
            "env": env,
            "tmp": tmp_path,
        }


def _alert_ticks(instance: DagsterInstance, mail: MailResource, cursor: str | None) -> str | None:
    defs = dg.Definitions(sensors=[run_failure_alert, alert_outbox_flush], resources={"mail": mail})
    context = dg.build_sensor_context(
        instance=instance,
        repository_def=defs.get_repository_def(),
        resources={"mail": mail},
        cursor=cursor,
    )
    result = defs.resolve_sensor_def("run_failure_alert").evaluate_tick(context)
    for reaction in result.dagster_run_reactions or []:
        assert not reaction.error, reaction.error
    return result.cursor


def test_no_secret_reaches_logs_events_metadata_exceptions_or_emails(
    world: dict[str, Any],
    private_key_pem: str,
    monkeypatch: pytest.MonkeyPatch,
    itresume_home: Path,
) -> None:
    canaries = Canaries(private_key_pem)
    api: ApiSimulator = world["api"]
    emulator: SheetsEmulator = world["emulator"]
    resources = world["resources"]
    # The shipped logging set-up at its most talkative, plus the HTTP libraries' own loggers:
    # urllib3 logs every request line, query string included, at DEBUG.
    shipped = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "dagster.yaml").read_text())
    logs = {**shipped["python_logs"], "python_log_level": "DEBUG"}
    logs["managed_python_loggers"] += ["urllib3", "requests", "gspread", "google"]
    capture = RootCapture()
    with (
        DagsterInstance.ephemeral(settings={"python_logs": logs}) as instance,
        capture.installed(),
        no_jitter(),
    ):
        cursor = _alert_ticks(instance, resources["mail"], None)  # the daemon's first tick

        def run(**kwargs: Any) -> Any:
            return run_pipeline(resources, instance=instance, **kwargs)

        ok = run()
        assert ok.success, failure_text(ok)
        api.inject("status", code=503)
        retried = run()  # a retried request: its warning is logged
        assert retried.success
        echo = json.dumps(
            {"errors": [f"bad client_key {CLIENT_KEY}", f"url ?client_key={CLIENT_KEY}"]}
        )
        api.inject("status", code=400, body=echo)
        failures = {"400 echoing the key": run()}
        api.inject("status", code=401, body=echo)
        failures["401 echoing the key"] = run()
        api.inject("reset", times=5)
        failures["connection resets"] = run()
        api.inject("truncate", times=5)
        failures["truncated bodies"] = run()
        emulator.inject(429, times=100, retry_after=0)
        failures["Sheets 429 storm"] = run(assets=[sheets_report])
        emulator.clear_faults()
        emulator.inject(403, times=10)
        failures["Sheets 403"] = run(assets=[sheets_report])
        emulator.clear_faults()
        dead = with_password(f"postgresql://postgres@127.0.0.1:{free_port()}/itresume", DB_PASSWORD)
        monkeypatch.setenv("ITRESUME_DATABASE_URL", dead)
        failures["database down"] = run(assets=[sheets_report])
        monkeypatch.setenv("ITRESUME_DATABASE_URL", world["env"]["ITRESUME_DATABASE_URL"])

        for name, result in failures.items():
            assert not result.success, name
        for _ in range(len(failures)):  # a tick takes a few runs; the daemon ticks again
            cursor = _alert_ticks(instance, resources["mail"], cursor)

        # -- search every place a secret could have gone ------------------------------------
        sinks: dict[str, str] = {}
        for run_record in instance.get_runs():
            run_id = run_record.run_id
            sinks[f"run {run_id} record"] = serialize_value(run_record)
            sinks[f"run {run_id} event log"] = "\n".join(
                serialize_value(entry) for entry in instance.all_logs(run_id)
            )
        for result in [ok, retried, *failures.values()]:
            sinks[f"run {result.run_id} metadata"] = "\n".join(
                repr(e.step_materialization_data.materialization.metadata)
                for e in result.get_asset_materialization_events()
            )
        for name, result in failures.items():
            sinks[f"exception texts of '{name}'"] = failure_text(result)
        for path, text in file_texts(itresume_home):
            sinks[f"ITRESUME_HOME file {path.relative_to(itresume_home)}"] = text
        for path, text in file_texts(world["tmp"] / "logs"):
            sinks[f"log file {path.name}"] = text
        for path, text in file_texts(world["tmp"] / "spool"):
            sinks[f"alert spool file {path.name}"] = text
        sinks["Python logging, every logger at DEBUG"] = "\n".join(capture.lines)
        envelopes = world["sink"].envelopes
        sinks["e-mails as sent"] = "\n".join(
            e.original_content.decode("utf-8", "replace") for e in envelopes
        )
        sinks["e-mails as read"] = "\n".join(m.get_content() for m in world["sink"].messages())

    for where, text in sinks.items():
        canaries.assert_absent(where, text)

    # ...and the search was not vacuous: the secrets were used, and the sinks hold the events.
    assert any(r["status"] == 200 for r in api.requests)  # the API accepted CLIENT_KEY
    assert emulator.token_requests and all(
        r.bearer for r in emulator.log if r.path.startswith("/v4")
    )
    assert len(envelopes) == len(failures)  # the relay accepted SMTP_PASSWORD, once per failure
    assert "download finished" in "".join(t for w, t in sinks.items() if w.startswith("log file"))
    assert "urllib3" in sinks["Python logging, every logger at DEBUG"]
    texts = {name: failure_text(result) for name, result in failures.items()}
    assert "HTTP 400" in texts["400 echoing the key"] and "***" in texts["400 echoing the key"]
    assert (
        "cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1"
        in texts["database down"]
    )
    assert "Google Sheets API answered 429" in texts["Sheets 429 storm"]


# -- exception texts, raised directly --------------------------------------------------------


def exception_text(exc: BaseException) -> str:
    """What Python prints and what Dagster records for an exception, causes included."""
    printed = "".join(traceback.format_exception(exc))
    recorded = serializable_error_info_from_exc_info((type(exc), exc, exc.__traceback__))
    return printed + "\n" + recorded.to_string()


def test_exceptions_raised_at_each_boundary_carry_no_secret(
    world: dict[str, Any], private_key_pem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canaries = Canaries(private_key_pem)
    api: ApiSimulator = world["api"]
    raised: dict[str, BaseException] = {}

    start, end = day_bounds(DAY)
    client = ItResumeApiResource(
        url=api.url, client=TEST_CLIENT, client_key=CLIENT_KEY, max_attempts=1
    )
    for fault in ("reset", "truncate", "garbage"):
        api.inject(fault)
        with pytest.raises(Exception) as info:
            client.download(start, end, tmp_path / "x.json.gz", validate_stream=count_records)
        raised[f"API {fault}"] = info.value
    slow = ItResumeApiResource(
        url=api.url, client=TEST_CLIENT, client_key=CLIENT_KEY, max_attempts=1, read_timeout_s=0.2
    )
    api.inject("slow", seconds=1.0)
    with pytest.raises(Exception) as info:
        slow.download(start, end, tmp_path / "x.json.gz")
    raised["API read timeout"] = info.value

    for label, url in {
        "refused": f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{free_port()}/x",
        "bad IPv6 URI": f"postgresql://postgres:{DB_PASSWORD}@[::1/x",
        "bad port": f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:notaport/x",
        "keyword form": f"host=127.0.0.1 port={free_port()} user=postgres password={DB_PASSWORD}",
    }.items():
        warehouse = PostgresResource(database_url=url, connect_timeout_s=2)
        with pytest.raises(WarehouseError) as info, warehouse.connect():
            pass
        raised[f"PostgreSQL {label}"] = info.value
        assert canaries.found_in(warehouse.location) == []

    broken = private_key_pem.replace("\n", "\n ", 3)  # still recognizable, no longer a key
    creds = write_credentials(tmp_path / "broken.json", world["emulator"].token_uri, broken)
    sheets = SheetsResource(spreadsheet_id=SHEET_ID, credentials_path=str(creds), max_attempts=1)
    with pytest.raises(SheetsError) as info:
        sheets.upsert_rows(
            [{"date": "2024-10-08", "attempts": 1, "successful_attempts": 1, "unique_users": 1}]
        )
    raised["Sheets broken key"] = info.value
    dead_token = write_credentials(
        tmp_path / "dead.json", f"http://127.0.0.1:{free_port()}/token", private_key_pem
    )
    sheets = SheetsResource(
        spreadsheet_id=SHEET_ID, credentials_path=str(dead_token), max_attempts=1
    )
    with pytest.raises(SheetsError) as info:
        sheets.read_rows()
    raised["Sheets token endpoint down"] = info.value

    env = world["env"]
    mail = MailResource(
        host=env["ITRESUME_SMTP_HOST"],
        port=int(env["ITRESUME_SMTP_PORT"]),
        security="starttls",
        user=SMTP_USER,
        password="wrong-" + SMTP_PASSWORD,  # it contains the real one: a leak would show
        ca_file=env["ITRESUME_SMTP_CA_FILE"],
        to_addrs="ops@example.test",
    )
    message = EmailMessage()
    message["Subject"] = "test"
    message.set_content("body")
    with pytest.raises(MailDeliveryError) as info:
        mail.send(message)
    raised["SMTP wrong password"] = info.value

    for where, exc in raised.items():
        canaries.assert_absent(f"the exception of '{where}'", exception_text(exc))
    assert "SMTP login failed" in str(raised["SMTP wrong password"])
    assert "cannot connect to PostgreSQL" in str(raised["PostgreSQL refused"])


# -- identifiers from configuration, and parameterized SQL -----------------------------------

MALICIOUS_SCHEMAS = [
    "x; drop table y",
    'itresume"; DROP SCHEMA public CASCADE; --',
    "public.attempts",
    "Itresume",
    "1starts_with_digit",
    "ünïcode",
    "a" * 64,
    "tab\there",
]


@pytest.mark.parametrize("name", MALICIOUS_SCHEMAS)
def test_a_malicious_schema_name_is_refused_before_any_sql(
    pg_url: str, itresume_home: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    sentinel = f"sentinel_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(sentinel)))
        conn.execute(sql.SQL("CREATE TABLE {}.y (v int)").format(sql.Identifier(sentinel)))
    try:
        for warehouse in (
            PostgresResource(database_url=pg_url, schema_name=name),
            _from_env(monkeypatch, pg_url, name),
        ):
            with pytest.raises(WarehouseError) as info, warehouse.connect():
                pass
            message = str(info.value)
            assert "ITRESUME_DB_SCHEMA" in message and "not a plain lowercase identifier" in message
            assert repr(name) in message  # says exactly which value is wrong
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                (sentinel,),
            ).fetchone() == (1,)
            assert conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = ANY(%s)", (["x", name],)
            ).fetchone() == (0,)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(sentinel)))


def _from_env(monkeypatch: pytest.MonkeyPatch, pg_url: str, name: str) -> PostgresResource:
    """The warehouse as the code location builds it from the environment."""
    monkeypatch.setenv("ITRESUME_DATABASE_URL", pg_url)
    monkeypatch.setenv("ITRESUME_DB_SCHEMA", name)
    return build_resources()["warehouse"].process_config_and_initialize()


def test_a_schema_named_like_a_keyword_is_quoted_and_works(
    pg_url: str, landing_zone: LandingZone
) -> None:
    """`select` passes validation; it only works because every use of it is quoted."""
    warehouse = PostgresResource(database_url=pg_url, schema_name="select")
    path = landing_zone.payload_path(DAY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(render_day_json(DAY, attempts_per_day=25)))
    try:
        [load], _ = replace_days(warehouse, {DAY: path}, run_id="keyword")
        assert load.loaded == 25
        with psycopg.connect(pg_url) as conn:
            assert conn.execute('SELECT count(*) FROM "select".attempts').fetchone() == (25,)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute('DROP SCHEMA IF EXISTS "select" CASCADE')


@pytest.mark.parametrize(
    "worksheet",
    ['It\'s "Q4" report', "'; DROP TABLE x; --", "a!b:c", "Отчёт 'за' день", "x'!A1:B2"],
)
def test_worksheet_names_with_quotes_are_used_verbatim_and_safely(worksheet: str) -> None:
    row = {"date": "2024-10-08", "attempts": 5, "successful_attempts": 2, "unique_users": 3}
    with SheetsEmulator() as emulator:
        emulator.create_spreadsheet(SHEET_ID, sheets=["Sheet1"])
        emulator.set_values(SHEET_ID, "Sheet1", [["untouched"]])
        sheets = SheetsResource(
            emulator_host=emulator.host_port, spreadsheet_id=SHEET_ID, worksheet=worksheet
        )
        sheets.upsert_rows([row])
        assert emulator.sheet_titles(SHEET_ID) == ["Sheet1", worksheet]
        assert emulator.values(SHEET_ID, worksheet) == [
            ["date", "attempts", "successful_attempts", "unique_users"],
            ["2024-10-08", "5", "2", "3"],
        ]
        assert emulator.values(SHEET_ID, "Sheet1") == [["untouched"]]
        assert sheets.read_rows()["2024-10-08"]["attempts"] == 5


@pytest.mark.parametrize("worksheet", ["../../outside", "/etc/passwd", "..", "a/b\\c"])
def test_a_worksheet_name_cannot_escape_the_local_sheet_folder(
    tmp_path: Path, worksheet: str
) -> None:
    local = tmp_path / "sheets"
    sheets = SheetsResource(backend="csv", local_dir=str(local), worksheet=worksheet)
    row = {"date": "2024-10-08", "attempts": 5, "successful_attempts": 2, "unique_users": 3}
    sheets.upsert_rows([row])
    assert [p.parent for p in tmp_path.rglob("*.csv")] == [local]


SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|COPY|CREATE|DROP|ALTER|TRUNCATE|GRANT)\b")


def _formatted_sql(tree: ast.AST) -> list[ast.AST]:
    """Places where text holding SQL keywords is built with f-strings, %, + or str.format."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            if SQL_WORDS.search(text):
                found.append(node)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
            texts = [s.value for s in (node.left, node.right) if isinstance(s, ast.Constant)]
            if any(isinstance(t, str) and SQL_WORDS.search(t) for t in texts):
                found.append(node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
            and isinstance(node.func.value, ast.Constant)
            and isinstance(node.func.value.value, str)
            and SQL_WORDS.search(node.func.value.value)
        ):
            found.append(node)
    return found


def test_no_sql_statement_is_built_by_string_formatting() -> None:
    """Values travel as parameters; identifiers only through psycopg.sql.Identifier."""
    offenders = []
    for path in sorted((REPO / "itresume_pipeline").rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        offenders += [f"{path.relative_to(REPO)}:{n.lineno}" for n in _formatted_sql(tree)]
    assert offenders == []
    for path in sorted((REPO / "itresume_pipeline" / "sql").glob("*.sql")):
        placeholders = set(re.findall(r"(?<!%)\{([^}]*)\}", path.read_text("utf-8")))
        assert placeholders <= {"schema"}, (path.name, placeholders)  # schema: an Identifier


def test_the_sql_scan_would_catch_formatting() -> None:
    bad = ast.parse(
        'f"SELECT * FROM {t}"\n"DELETE FROM x WHERE a = %s" % v\n"DROP {}".format(t)\n'
        '"SELECT " + x\n'
    )
    assert len(_formatted_sql(bad)) == 4
    good = ast.parse('f"download finished: {n} records"\nsql.SQL("SELECT {}").format(x)\n')
    assert _formatted_sql(good) == []


# -- secrets cut short or encoded --------------------------------------------------------------

ODD_PASSWORD = "s3cr3t/pw+LEAK=ok&x ü"  # characters that URL encoding and base64 both change


def _leaked_bytes(text: str, secret: bytes, size: int = 8) -> list[bytes]:
    """Pieces of `secret` that base64-decoding any stretch of `text` gives back."""
    windows = {secret[i : i + size] for i in range(len(secret) - size + 1)}
    found = []
    for run in re.findall(r"[A-Za-z0-9+/_-]{4,}", text):
        for skip in range(4):
            chunk = run[skip:]
            chunk = chunk[: len(chunk) - len(chunk) % 4].replace("-", "+").replace("_", "/")
            decoded = base64.b64decode(chunk) if chunk else b""
            found += [w for w in windows if w in decoded]
    return found


def test_any_eight_characters_of_a_configured_secret_are_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error text cut by someone else (the API, a proxy) holds only part of the key."""
    monkeypatch.setenv("ITRESUME_CLIENT_KEY", CLIENT_KEY)
    for start in range(len(CLIENT_KEY) - 7):
        for end in range(start + 8, len(CLIENT_KEY) + 1):
            piece = CLIENT_KEY[start:end]
            assert redact(f"no such key {piece}… (cut)") == "no such key ***… (cut)", piece
    assert redact(f"x{CLIENT_KEY[3:12]}y") == "x***y"


def test_url_encoded_and_base64_forms_of_a_secret_are_masked_even_cut_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ITRESUME_SMTP_PASSWORD", ODD_PASSWORD)
    secret = ODD_PASSWORD.encode()
    for encoded in (quote(ODD_PASSWORD, safe=""), quote_plus(ODD_PASSWORD)):
        lower_hex = re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)
        for text in (encoded, lower_hex, encoded[:14]):
            out = redact(f"url ...&pw={text}")
            assert out == "url ...&pw=***", (text, out)
    auth_plain = b"\0" + SMTP_USER.encode() + b"\0" + secret  # what SMTP AUTH PLAIN sends
    for prefix in (b"", b"a", b"ab", b"abc", auth_plain[: -len(secret)]):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(prefix + secret + b"!").decode()
            out = redact(f"send: 'AUTH PLAIN {text}'")
            assert "***" in out and not _leaked_bytes(out, secret), (prefix, out)
