"""Outgoing mail: an SMTP relay (ssl, starttls or plain) or, with no host, ``.eml`` files on disk.

Why not ``dagster.make_email_on_run_failure_sensor``: it always logs in, has no plain mode, takes
the password as a plain string at import time and sends a raw ``str`` through ``sendmail``, which
breaks on any non-ASCII (Russian) subject or body. Here messages are ``EmailMessage`` objects sent
with ``send_message``, TLS is always verified, and errors never carry the password.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import smtplib
import ssl
import tempfile
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, field_validator

from itresume_pipeline import settings
from itresume_pipeline.redaction import redact

log = logging.getLogger(__name__)

SECURITY_MODES = ("starttls", "ssl", "none")
DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}
DEFAULT_FROM = "itresume-pipeline@localhost"

#: Resource field -> environment variable (DESIGN §3), for `MailResource.from_env`.
ENV_FIELDS: dict[str, str] = {
    "host": "ITRESUME_SMTP_HOST",
    "port": "ITRESUME_SMTP_PORT",
    "security": "ITRESUME_SMTP_SECURITY",
    "user": "ITRESUME_SMTP_USER",
    "password": "ITRESUME_SMTP_PASSWORD",
    "ca_file": "ITRESUME_SMTP_CA_FILE",
    "from_addr": "ITRESUME_ALERT_FROM",
    "to_addrs": "ITRESUME_ALERT_TO",
}


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


# Transliteration for file names (a Russian subject still gives a readable slug).
# fmt: off
_CYRILLIC = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z",
    "и": "i", "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r",
    "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh",
    "щ": "shch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu", "я": "ya",
}
# fmt: on


def _slug(text: str, limit: int = 60) -> str:
    """A filename-safe ASCII slug (Cyrillic transliterated); 'message' if nothing is left."""
    text = "".join(_CYRILLIC.get(ch, ch) for ch in text.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:limit].strip("-")
    return slug or "message"


class MailResource(ConfigurableResource):
    """Where operator mail goes. With ``host`` empty it is written to ``outbox_dir`` instead."""

    host: str = Field(default="", description="SMTP relay; empty = write .eml files to outbox_dir")
    port: int = Field(default=0, description="0 = 465 for ssl, 587 for starttls, 25 for none")
    security: str = Field(default="starttls", description="starttls | ssl | none")
    user: str = Field(default="", description="SMTP login; empty = no AUTH")
    password: str = Field(default="", description="SMTP password (use an EnvVar)")
    ca_file: str = Field(default="", description="extra CA (PEM) trusted besides the system store")
    timeout_s: float = Field(default=30.0, description="socket timeout for every SMTP step")
    from_addr: str = Field(default=DEFAULT_FROM, description="From: address")
    to_addrs: str = Field(default="", description="comma-separated recipients")
    outbox_dir: str = Field(default="", description="empty = $ITRESUME_HOME/outbox at send time")

    @field_validator("security", mode="before")
    @classmethod
    def _check_security(cls, value: Any) -> Any:
        # An EnvVar is only resolved later (Dagster re-validates the resolved value then).
        if isinstance(value, EnvVar) or not isinstance(value, str):
            return value
        return _normalize_security(value)

    @classmethod
    def from_env(cls, **overrides: Any) -> MailResource:
        """Wire every field to its DESIGN §3 variable if that variable is set *now*.

        Unset variables keep the field defaults (an unset ``EnvVar`` would fail every sensor
        tick), and set ones stay ``EnvVar`` so the password is never shown in the Dagster UI.
        """
        kwargs: dict[str, Any] = {}
        for field, var in ENV_FIELDS.items():
            if os.environ.get(var, "").strip():
                kwargs[field] = EnvVar.int(var) if field == "port" else EnvVar(var)
        kwargs.update(overrides)
        return cls(**kwargs)

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

    def destination(self) -> str:
        """Where `send` would deliver, for logs: ``smtp://host:port`` or the outbox folder."""
        if self.host.strip():
            return f"smtp://{self.host.strip()}:{self.effective_port}"
        return str(self._outbox())

    # -- sending ------------------------------------------------------------------------------

    def send(self, msg: EmailMessage) -> str:
        """Deliver ``msg`` and return where it went (``smtp://host:port`` or the .eml path).

        Missing From/To/Date/Message-ID headers are filled from this resource, so a message
        built (and spooled) without knowing the relay settings still goes out complete.
        """
        self._fill_headers(msg)
        if not self.host.strip():
            return str(self._write_outbox(msg))
        return self._send_smtp(msg)

    def _fill_headers(self, msg: EmailMessage) -> None:
        if msg["From"] is None:
            msg["From"] = self.from_addr or DEFAULT_FROM
        if msg["To"] is None and self.to_addrs.strip():
            msg["To"] = ", ".join(self.recipients)
        if msg["Date"] is None:
            msg["Date"] = formatdate(localtime=False, usegmt=True)
        if msg["Message-ID"] is None:
            msg["Message-ID"] = make_msgid(domain="itresume-pipeline")

    def _outbox(self) -> Path:
        raw = self.outbox_dir.strip()
        return Path(raw).expanduser().absolute() if raw else settings.outbox_dir()

    def _write_outbox(self, msg: EmailMessage) -> Path:
        """Write atomically (temp file + link/rename) so a reader never sees half a message."""
        folder = self._outbox()
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        base = f"{stamp}-{_slug(str(msg['Subject'] or ''))}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(msg.as_bytes())
                fh.flush()
                os.fsync(fh.fileno())
            for n in range(1000):
                target = folder / (f"{base}.eml" if n == 0 else f"{base}-{n}.eml")
                try:
                    os.link(tmp, target)  # unlike rename, never replaces an existing file
                except FileExistsError:
                    continue
                except OSError:  # a filesystem without hard links
                    if target.exists():
                        continue
                    os.replace(tmp, target)
                return target
            raise MailDeliveryError(f"could not find a free file name for {base}.eml in {folder}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _tls_context(self) -> ssl.SSLContext:
        """System trust store plus ``ca_file``; hostname and chain verification stay on."""
        ctx = ssl.create_default_context()
        if self.ca_file.strip():
            ctx.load_verify_locations(cafile=os.path.expanduser(self.ca_file.strip()))
        return ctx

    def _send_smtp(self, msg: EmailMessage) -> str:
        host, port, mode = self.host.strip(), self.effective_port, self.mode
        where = f"smtp://{host}:{port}"
        recipients = self.recipients or [a for _, a in getaddresses(msg.get_all("To", [])) if a]
        if not recipients:
            raise MailDeliveryError(f"{where}: no recipients (set ITRESUME_ALERT_TO)", "config")
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
            detail = redact(f"{type(exc).__name__}: {exc}", secrets=[self.password])
            raise MailDeliveryError(
                f"SMTP {step} failed for {where} ({mode}): {detail}", step
            ) from None
        finally:
            if smtp is not None:
                self._close(smtp)
        if refused:
            log.warning("%s refused some recipients: %s", where, redact(refused))
        return where

    @staticmethod
    def _close(smtp: smtplib.SMTP) -> None:
        """QUIT, ignoring errors: once DATA was accepted the message is out, and a failing QUIT
        must not make the caller retry (and double) it."""
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
