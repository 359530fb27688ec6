"""Outgoing mail through an SMTP relay (ssl, starttls or plain).

Without ``ITRESUME_SMTP_HOST`` there is nothing to send with. The local profile
(``ITRESUME_PROFILE=local``) is content with the ``.eml`` files of the outbox
(`itresume_pipeline.alerts.Outbox`); in production nobody reads those, so alerts stay pending and
the sensors say on every tick that alerts are not being delivered (`delivery_problem`).

Why not ``dagster.make_email_on_run_failure_sensor``: it always logs in, has no plain mode, takes
the password as a plain string at import time and sends a raw ``str`` through ``sendmail``, which
breaks on any non-ASCII (Russian) subject or body. Here messages are ``EmailMessage`` objects sent
with ``send_message``, TLS is always verified, and errors never carry the password.
"""

from __future__ import annotations

import base64
import logging
import os
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from typing import Any

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, field_validator

from itresume_pipeline import settings
from itresume_pipeline.redaction import redact

log = logging.getLogger(__name__)

SECURITY_MODES = ("starttls", "ssl", "none")
DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}
DEFAULT_FROM = "itresume-pipeline@localhost"

HOST_VAR = "ITRESUME_SMTP_HOST"
PORT_VAR = "ITRESUME_SMTP_PORT"
SECURITY_VAR = "ITRESUME_SMTP_SECURITY"
USER_VAR = "ITRESUME_SMTP_USER"
PASSWORD_VAR = "ITRESUME_SMTP_PASSWORD"
CA_FILE_VAR = "ITRESUME_SMTP_CA_FILE"
FROM_VAR = "ITRESUME_ALERT_FROM"
TO_VAR = "ITRESUME_ALERT_TO"


class MailDeliveryError(RuntimeError):
    """The relay could not take the message. The text names host:port, never the password.

    ``step`` says where it failed: "connect", "starttls" or "login" mean the relay itself is
    unusable (so a caller with several messages may stop trying), "send" is about this message.
    """

    def __init__(self, message: str, step: str = "send") -> None:
        super().__init__(message)
        self.step = step


def _normalize_security(value: str) -> str:
    mode = value.strip().lower()
    if mode not in SECURITY_MODES:
        raise ValueError(f"security must be one of {', '.join(SECURITY_MODES)}; got {value!r}")
    return mode


def _auth_tokens(user: str, password: str) -> list[str]:
    """What AUTH PLAIN and AUTH LOGIN put on the wire: a relay may echo any of it back."""
    if not password:
        return []
    forms = [b"\0" + user.encode() + b"\0" + password.encode(), user.encode(), password.encode()]
    tokens = [base64.b64encode(form).decode("ascii") for form in forms if form]
    # Unpadded too: a reply may quote the token without its trailing "=".
    return [password, *tokens, *(token.rstrip("=") for token in tokens)]


def _describe(exc: BaseException) -> str:
    """``Class: text`` with a relay's reply decoded: the ``bytes`` repr smtplib shows would
    escape a non-ASCII password into a form no literal mask recognises."""
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = exc.smtp_error
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        return f"{type(exc).__name__}: {exc.smtp_code} {text}"
    return f"{type(exc).__name__}: {exc}"


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    """``SMTP.login``, plus UTF-8 credentials: smtplib encodes them as ASCII and fails, while
    AUTH PLAIN (RFC 4616) is defined over UTF-8, so a Cyrillic password must still work."""
    if user.isascii() and password.isascii():
        smtp.login(user, password)
        return
    smtp.ehlo_or_helo_if_needed()
    if not smtp.has_extn("auth") or "PLAIN" not in smtp.esmtp_features["auth"].upper().split():
        raise smtplib.SMTPNotSupportedError("non-ASCII credentials need AUTH PLAIN")
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode("ascii")
    code, resp = smtp.docmd("AUTH", f"PLAIN {token}")
    if code not in (235, 503):  # 503: already authenticated
        raise smtplib.SMTPAuthenticationError(code, resp)


class MailResource(ConfigurableResource):
    """The relay operator mail goes through; ``host`` empty means none (see the module doc)."""

    host: str = Field(default="", description="SMTP relay; empty = none, alerts stay queued")
    port: int = Field(default=0, description="0 = 465 for ssl, 587 for starttls, 25 for none")
    security: str = Field(default="starttls", description="starttls | ssl | none")
    user: str = Field(default="", description="SMTP login; empty = no AUTH")
    password: str = Field(default="", description="SMTP password (use an EnvVar)")
    ca_file: str = Field(default="", description="extra CA (PEM) trusted besides the system store")
    timeout_s: float = Field(default=30.0, description="socket timeout for every SMTP step")
    from_addr: str = Field(default=DEFAULT_FROM, description="From: address")
    to_addrs: str = Field(default="", description="comma-separated recipients")

    @field_validator("security", mode="before")
    @classmethod
    def _check_security(cls, value: Any) -> Any:
        # An EnvVar is only resolved later (Dagster re-validates the resolved value then).
        if isinstance(value, EnvVar) or not isinstance(value, str):
            return value
        return _normalize_security(value)

    # -- derived settings ---------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return _normalize_security(self.security or "starttls")

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.mode]

    @property
    def recipients(self) -> list[str]:
        return [addr for _, addr in getaddresses([self.to_addrs]) if addr]

    @property
    def has_relay(self) -> bool:
        return bool(self.host.strip())

    def delivery_problem(self) -> str | None:
        """Why alerts cannot go out right now, naming the variables to set; None if they can.

        Read at send time, because the local profile (and only it) may do without a relay.
        """
        host = self.host.strip()
        if (not host and settings.is_local()) or (host and self.recipients):
            return None
        missing = " and ".join(
            var for var, value in ((HOST_VAR, host), (TO_VAR, self.recipients)) if not value
        )
        return (
            f"alerts are NOT being delivered: {missing} not set. Set {HOST_VAR} and {TO_VAR} "
            f"(and the other ITRESUME_SMTP_* settings); outside {settings.PROFILE_VAR}="
            f"{settings.LOCAL_PROFILE} alerts wait in the outbox"
        )

    # -- sending ------------------------------------------------------------------------------

    def send(self, msg: EmailMessage) -> str:
        """Send ``msg`` through the relay and return ``smtp://host:port``.

        Missing headers are filled first (`address`), so a message queued before the relay
        settings were known still goes out complete.
        """
        problem = self.delivery_problem()
        if problem is None and not self.has_relay:
            problem = f"no relay to send with: {HOST_VAR} is not set"
        if problem is not None:
            raise MailDeliveryError(problem, "config")
        self.address(msg)
        host, port, mode = self.host.strip(), self.effective_port, self.mode
        where = f"smtp://{host}:{port}"
        recipients = self.recipients or [a for _, a in getaddresses(msg.get_all("To", [])) if a]
        if not recipients:
            raise MailDeliveryError(f"{where}: no recipients (set {TO_VAR})", "config")
        step = "connect"
        smtp: smtplib.SMTP | None = None
        try:
            ctx = self._tls_context() if mode != "none" else None
            if mode == "ssl":
                smtp = smtplib.SMTP_SSL(host, port, timeout=self.timeout_s, context=ctx)
            else:
                smtp = smtplib.SMTP(host, port, timeout=self.timeout_s)
            if mode == "starttls":
                step = "starttls"
                smtp.starttls(context=ctx)
            if self.user:
                step = "login"
                _login(smtp, self.user, self.password)
            step = "send"
            refused = smtp.send_message(msg, to_addrs=recipients)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            # `from None`: the chained original could carry connection state; the class name and
            # the (redacted) server reply are what an operator needs.
            # Masked before anything else touches it: relays echo the AUTH exchange in replies.
            detail = redact(_describe(exc), secrets=_auth_tokens(self.user, self.password))
            raise MailDeliveryError(
                f"SMTP {step} failed for {where} ({mode}): {detail}", step
            ) from None
        finally:
            if smtp is not None:
                self._close(smtp)
        if refused:
            secrets = _auth_tokens(self.user, self.password)
            log.warning("%s refused some recipients: %s", where, redact(refused, secrets=secrets))
        return where

    def address(self, msg: EmailMessage) -> EmailMessage:
        """Fill the From/To/Date/Message-ID headers ``msg`` lacks from this resource."""
        if msg["From"] is None:
            msg["From"] = self.from_addr or DEFAULT_FROM
        if msg["To"] is None and self.to_addrs.strip():
            msg["To"] = ", ".join(self.recipients)
        if msg["Date"] is None:
            msg["Date"] = formatdate(localtime=False, usegmt=True)
        if msg["Message-ID"] is None:
            msg["Message-ID"] = make_msgid(domain="itresume-pipeline")
        return msg

    def _tls_context(self) -> ssl.SSLContext:
        """System trust store plus ``ca_file``; hostname and chain verification stay on."""
        ctx = ssl.create_default_context()
        if self.ca_file.strip():
            ctx.load_verify_locations(cafile=os.path.expanduser(self.ca_file.strip()))
        return ctx

    @staticmethod
    def _close(smtp: smtplib.SMTP) -> None:
        """QUIT, ignoring errors: once DATA was accepted the message is out, and a failing QUIT
        must not make the caller retry (and double) it."""
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
