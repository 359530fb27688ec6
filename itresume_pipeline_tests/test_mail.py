"""MailResource against a real SMTP server (aiosmtpd) in all three security modes, and `redact`.

No SMTP mocks: each test starts an aiosmtpd Controller on a free port, with a trustme CA for TLS,
or, to see what a relay echoes back, a small socket server of its own (`EchoingRelay`).
The relay (`smtp_server`), its login and `mail_for` come from helpers.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socketserver
import threading
import traceback
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from dagster import EnvVar

from itresume_pipeline.alerts import Outbox
from itresume_pipeline.redaction import redact
from itresume_pipeline.resources import build_alert_resources
from itresume_pipeline.resources.mail import MailDeliveryError, MailResource
from itresume_pipeline.settings import SettingError
from itresume_pipeline_tests.helpers import SMTP_PASSWORD, free_port, mail_for, smtp_server


def russian_message() -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = "Сбой загрузки за 2024-10-08: ошибка API"
    msg.set_content("Привет! Загрузка упала.\nЁжик в тумане — «кавычки» и эмодзи ✅\n")
    return msg


# -- delivery -----------------------------------------------------------------------------------


@pytest.mark.parametrize("security", ["none", "starttls", "ssl"])
def test_each_security_mode_delivers_utf8_intact(
    security: str, tls_ca: tuple[trustme.CA, Path]
) -> None:
    ca, ca_path = tls_ca
    with smtp_server(security, ca) as (sink, port):
        where = mail_for(port, security, ca_path).send(russian_message())
    assert where == f"smtp://localhost:{port}"
    assert len(sink.envelopes) == 1
    env = sink.envelopes[0]
    assert env.mail_from == "alerts@example.test"
    assert sorted(env.rcpt_tos) == ["oncall@example.test", "ops@example.test"]
    got = sink.messages()[0]
    assert got["Subject"] == "Сбой загрузки за 2024-10-08: ошибка API"
    assert "Ёжик в тумане — «кавычки» и эмодзи ✅" in got.get_content()


def test_plain_relay_without_auth(tls_ca: tuple[trustme.CA, Path]) -> None:
    with smtp_server("none") as (sink, port):
        mail_for(port, "none", None, user="", password="").send(russian_message())
    assert len(sink.envelopes) == 1


def test_wrong_password_is_rejected_without_leaking_it(tls_ca: tuple[trustme.CA, Path]) -> None:
    ca, ca_path = tls_ca
    wrong = "WRONG-pass-9f3c"
    with smtp_server("starttls", ca) as (sink, port):
        mail = mail_for(port, "starttls", ca_path, password=wrong)
        with pytest.raises(MailDeliveryError) as info:
            mail.send(russian_message())
    text = "".join(traceback.format_exception(info.value))
    assert f"localhost:{port}" in str(info.value)
    assert "login" in str(info.value) and "SMTPAuthenticationError" in str(info.value)
    assert wrong not in text and SMTP_PASSWORD not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert sink.envelopes == []


def test_tls_is_verified_without_the_ca(tls_ca: tuple[trustme.CA, Path]) -> None:
    """The test CA is not in the system store, so both TLS modes must refuse the server."""
    ca, _ = tls_ca
    for security in ("ssl", "starttls"):
        with smtp_server(security, ca) as (sink, port):
            with pytest.raises(MailDeliveryError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
                mail_for(port, security, None).send(russian_message())
            assert sink.envelopes == []


def test_server_down_raises_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    mail = mail_for(port, "none", None, timeout_s=2.0)
    with pytest.raises(MailDeliveryError, match=rf"connect failed for smtp://localhost:{port}"):
        mail.send(russian_message())


def test_no_recipients_is_an_error_naming_the_variable() -> None:
    with pytest.raises(MailDeliveryError, match="ITRESUME_ALERT_TO not set") as info:
        mail_for(25, "none", None, to_addrs="").send(russian_message())
    assert info.value.step == "config"


# -- outbox -------------------------------------------------------------------------------------


def test_the_local_delivery_is_the_move_into_the_outbox_folder(tmp_path: Path) -> None:
    """No relay in the local profile: the queued file itself becomes the readable .eml."""
    outbox = Outbox(tmp_path / "outbox")
    msg = MailResource(to_addrs="ops@example.test").address(russian_message())
    assert outbox.enqueue("run-1", msg)
    assert outbox.flush(None).sent == ["run-1"]
    assert outbox.flush(None).sent == [] and not outbox.enqueue("run-1", msg)
    assert sorted(p.name for p in (tmp_path / "outbox").glob("*.eml")) == ["run-1.eml"]
    got = message_from_bytes(
        (tmp_path / "outbox" / "run-1.eml").read_bytes(), policy=policy.default
    )
    assert got["Subject"] == "Сбой загрузки за 2024-10-08: ошибка API"
    assert got["To"] == "ops@example.test" and got["From"]
    assert "Ёжик в тумане" in got.get_content()


def test_the_outbox_is_under_itresume_home_unless_set_read_at_each_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ITRESUME_OUTBOX_DIR", raising=False)
    monkeypatch.setenv("ITRESUME_HOME", str(tmp_path))
    assert Outbox().root == tmp_path / "outbox"
    monkeypatch.setenv("ITRESUME_OUTBOX_DIR", str(tmp_path / "x"))
    assert Outbox().root == tmp_path / "x"


# -- configuration ------------------------------------------------------------------------------


def test_security_is_validated_and_ports_default() -> None:
    with pytest.raises(ValueError, match="'starttls', 'ssl' or 'none'"):
        MailResource(security="tls")
    assert MailResource(security="ssl").effective_port == 465
    assert MailResource(security="starttls").effective_port == 587
    assert MailResource(security="none").effective_port == 25
    assert MailResource(security="ssl", port=2465).effective_port == 2465


MAIL_VARS = (
    "ITRESUME_SMTP_HOST",
    "ITRESUME_SMTP_PORT",
    "ITRESUME_SMTP_SECURITY",
    "ITRESUME_SMTP_USER",
    "ITRESUME_SMTP_PASSWORD",
    "ITRESUME_SMTP_CA_FILE",
    "ITRESUME_ALERT_FROM",
    "ITRESUME_ALERT_TO",
    "ITRESUME_PROFILE",
)


def alert_mail() -> MailResource:
    """The relay as the alerting code location binds it from the environment."""
    return build_alert_resources()["mail"]


@pytest.fixture
def mail_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Production (no profile), no mail setting inherited from the shell, a private home."""
    for var in MAIL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ITRESUME_HOME", str(tmp_path / "home"))
    return monkeypatch


def test_the_alert_location_reads_checked_values_and_keeps_the_password_an_envvar(
    mail_env: pytest.MonkeyPatch,
) -> None:
    mail_env.setenv("ITRESUME_SMTP_HOST", "relay.example.test")
    mail_env.setenv("ITRESUME_SMTP_PORT", "2525")
    mail_env.setenv("ITRESUME_SMTP_SECURITY", "NONE")
    mail_env.setenv("ITRESUME_SMTP_USER", "bot")
    mail_env.setenv("ITRESUME_SMTP_PASSWORD", "pw-from-env")
    mail_env.setenv("ITRESUME_ALERT_TO", "a@example.test, Дежурный <b@example.test>")
    mail = alert_mail()
    assert isinstance(mail.password, EnvVar)  # the UI shows the variable, never the value
    assert "pw-from-env" not in repr(mail)
    resolved = mail.process_config_and_initialize()
    assert (resolved.host, resolved.port, resolved.security) == ("relay.example.test", 2525, "none")
    assert resolved.password == "pw-from-env"
    assert resolved.recipients == ["a@example.test", "b@example.test"]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ITRESUME_SMTP_SECURITY", "tls"),
        ("ITRESUME_SMTP_PORT", "0"),
        ("ITRESUME_SMTP_PORT", "smtp"),
        ("ITRESUME_SMTP_PORT", "70000"),
        ("ITRESUME_ALERT_TO", "ops@example.test, oncall"),
        ("ITRESUME_ALERT_TO", "@example.test"),
        ("ITRESUME_ALERT_FROM", "alerts"),
        ("ITRESUME_ALERT_FROM", "a@example.test, b@example.test"),
        ("ITRESUME_SMTP_CA_FILE", "/nonexistent/ca.pem"),
    ],
)
def test_a_bad_mail_setting_is_an_error_naming_it(
    mail_env: pytest.MonkeyPatch, var: str, value: str
) -> None:
    mail_env.setenv(var, value)
    with pytest.raises(SettingError, match=var):
        alert_mail()


def test_a_user_without_a_password_names_the_password_variable(
    mail_env: pytest.MonkeyPatch,
) -> None:
    mail_env.setenv("ITRESUME_SMTP_USER", "bot")
    with pytest.raises(SettingError, match="ITRESUME_SMTP_PASSWORD"):
        alert_mail()


def test_no_host_in_production_refuses_instead_of_writing_an_unread_file(
    mail_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mail = alert_mail().process_config_and_initialize()
    problem = mail.delivery_problem() or ""
    assert "NOT being delivered" in problem
    assert "ITRESUME_SMTP_HOST" in problem and "ITRESUME_ALERT_TO" in problem
    with pytest.raises(MailDeliveryError, match="ITRESUME_SMTP_HOST") as info:
        mail.send(russian_message())
    assert info.value.step == "config"
    assert not (tmp_path / "home" / "outbox").exists()

    mail_env.setenv("ITRESUME_PROFILE", "local")  # the local rig: the outbox is the inbox
    assert mail.delivery_problem() is None
    with pytest.raises(MailDeliveryError, match="no relay"):  # nothing to send with, locally
        mail.send(russian_message())


def test_alerts_wait_without_a_relay_and_go_out_once_when_it_is_configured(
    mail_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox")
    assert outbox.enqueue("run-1", russian_message())
    unconfigured = alert_mail().process_config_and_initialize()
    for _ in range(2):
        result = outbox.flush(unconfigured)
        assert list(result.failed) == ["run-1"] and "ITRESUME_SMTP_HOST" in result.failed["run-1"]
    assert outbox.pending_keys() == ["run-1"] and outbox.sent_keys() == []

    with smtp_server("none") as (sink, port):
        mail_env.setenv("ITRESUME_SMTP_HOST", "localhost")
        mail_env.setenv("ITRESUME_SMTP_PORT", str(port))
        mail_env.setenv("ITRESUME_SMTP_SECURITY", "none")
        mail_env.setenv("ITRESUME_ALERT_TO", "ops@example.test")
        configured = alert_mail().process_config_and_initialize()
        assert outbox.flush(configured).sent == ["run-1"]
        assert outbox.flush(configured).sent == []
    assert len(sink.envelopes) == 1
    assert sink.messages()[0]["Subject"] == russian_message()["Subject"]


# -- a relay that echoes the AUTH exchange ------------------------------------------------------


class _EchoHandler(socketserver.StreamRequestHandler):
    """Speaks just enough SMTP to take AUTH, and quotes every AUTH line in its 535 reply."""

    mechanisms = "PLAIN"

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self) -> None:
        self._reply("220 echo.test ESMTP")
        for raw in self.rfile:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self._reply("250-echo.test")
                self._reply(f"250 AUTH {self.server.mechanisms}")  # type: ignore[attr-defined]
            elif line.upper().startswith("AUTH LOGIN"):
                self._reply("334 UGFzc3dvcmQ6")
                answer = self.rfile.readline().decode().strip()
                self._reply(f"535 5.7.8 rejected {line!r} then {answer!r}")
            elif verb == "AUTH":
                self._reply(f"535 5.7.8 rejected {line!r}")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("250 ok")


@contextlib.contextmanager
def echoing_relay(mechanisms: str) -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    server.mechanisms = mechanisms  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _wire_forms(user: str, password: str) -> list[str]:
    raw = [f"\0{user}\0{password}", user, password]
    tokens = [base64.b64encode(form.encode()).decode() for form in raw]
    return [password, *tokens, *(token.rstrip("=") for token in tokens)]


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, *args: Any) -> None:
        self.lines.append(msg)

    def warning(self, msg: str, *args: Any) -> None:
        self.lines.append(msg)


@pytest.mark.parametrize(
    ("mechanisms", "password"),
    [("PLAIN", "ascii-Pass-7731"), ("LOGIN", "ascii-Pass-7731"), ("PLAIN", SMTP_PASSWORD)],
)
def test_an_echoed_auth_exchange_never_reaches_errors_or_tick_logs(
    tmp_path: Path, mechanisms: str, password: str
) -> None:
    user = "alerts-bot-user"
    outbox = Outbox(tmp_path / "outbox")
    outbox.enqueue("run-1", russian_message())
    logger = _Lines()
    with echoing_relay(mechanisms) as port:
        mail = mail_for(port, "none", None, user=user, password=password)
        with pytest.raises(MailDeliveryError) as info:
            mail.send(russian_message())
        result = outbox.flush(mail, logger)
    error = "".join(traceback.format_exception(info.value))
    assert "535" in error and "rejected" in error and "***" in error  # the echo, masked
    seen = "\n".join([error, *result.failed.values(), *logger.lines])
    assert "rejected" in result.failed["run-1"]
    for form in _wire_forms(user, password):
        fragments = {form[i : i + 8] for i in range(max(1, len(form) - 7))}
        assert not [f for f in fragments if f in seen], form


# -- redaction (shared by every module; kept here with the other secret-handling tests) ----------


def test_redact_patterns() -> None:
    cases = {
        "GET /api?client=c&client_key=abc123&start=x": "client_key=***&start=x",
        "password='my pass' user=u": "password='***' user=u",
        '{"token": "tok-1", "access_token":"at-2"}': '{"token": "***", "access_token":"***"}',
        "Authorization: Bearer eyJhbGciOi.JIUzI1": "Authorization: Bearer ***",
        "postgresql://loader:Pa55w0rd@db:5432/x": "postgresql://loader:***@db:5432/x",
        "see http://localhost:3000/runs/1 and a@b": "see http://localhost:3000/runs/1 and a@b",
    }
    for raw, expected in cases.items():
        assert expected in redact(raw), raw
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASC\n"
    pem += "-----END PRIVATE KEY-----\n"
    assert redact(f"key={json.dumps(pem)} end").count("MIIE") == 0
    assert redact("x " + pem + " y") == "x ***\n y"
    assert redact("truncated -----BEGIN RSA PRIVATE KEY-----\nMIIEvQIBADAN") == "truncated ***"


def test_redact_literal_secrets_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
    creds = tmp_path / "sa.json"
    creds.write_text(
        json.dumps(
            {"private_key": f"-----BEGIN PRIVATE KEY-----\n{key_body}\n-----END PRIVATE KEY-----\n"}
        )
    )
    monkeypatch.setenv("ITRESUME_CLIENT_KEY", "K3y/with+chars")
    monkeypatch.setenv("ITRESUME_SMTP_PASSWORD", "smtp-Пароль")
    monkeypatch.setenv("ITRESUME_SHEETS_CREDENTIALS", str(creds))
    text = (
        "echo K3y/with+chars and url-encoded K3y%2Fwith%2Bchars; "
        f"pw smtp-Пароль; key line {key_body}"
    )
    out = redact(text)
    for secret in ("K3y/with+chars", "K3y%2Fwith%2Bchars", "smtp-Пароль", key_body):
        assert secret not in out
    assert out.count("***") == 4
    assert redact("x", secrets=["abc-extra"]) == "x"
    assert redact("has abc-extra", secrets=["abc-extra"]) == "has ***"


def test_redact_never_raises() -> None:
    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert redact(None) == ""
    assert redact(Bad()) == "[redaction failed; text withheld]"
    assert redact(12345) == "12345"
    os.environ.pop("ITRESUME_SHEETS_CREDENTIALS", None)
    assert redact("plain text") == "plain text"
