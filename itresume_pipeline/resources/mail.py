"""Mail through an SMTP relay (ssl, starttls or plain), TLS verified. Not Dagster's e-mail sensor:
it always logs in, has no plain mode, and its raw ``str`` breaks on a non-ASCII subject."""

import base64
import contextlib
import logging
import os
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Literal, get_args

from dagster import ConfigurableResource
from pydantic import Field

from itresume_pipeline import settings
from itresume_pipeline.redaction import redact

SecurityMode = Literal["starttls", "ssl", "none"]
SECURITY_MODES: tuple[str, ...] = get_args(SecurityMode)
DEFAULT_FROM = "itresume-pipeline@localhost"
HOST_VAR = "ITRESUME_SMTP_HOST"
TO_VAR = "ITRESUME_ALERT_TO"


class MailDeliveryError(RuntimeError):
    """The relay did not take the message; a ``step`` other than "send" means none can go out."""

    def __init__(self, message: str, step: str = "send") -> None:
        super().__init__(message)
        self.step = step


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    """``SMTP.login`` takes ASCII only; AUTH PLAIN (RFC 4616) takes UTF-8: a Cyrillic password."""
    if user.isascii() and password.isascii():
        smtp.login(user, password)
        return
    smtp.ehlo_or_helo_if_needed()
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
    code, resp = smtp.docmd("AUTH", f"PLAIN {token}")
    if code not in (235, 503):  # 503: already authenticated
        raise smtplib.SMTPAuthenticationError(code, resp)


class MailResource(ConfigurableResource):
    """The relay operator mail goes through; no ``host``, no relay."""

    host: str = Field(default="", description="SMTP relay; empty = none, alerts stay queued")
    port: int = Field(default=0, description="0 = 465 for ssl, 587 for starttls, 25 for none")
    security: SecurityMode = Field(default="starttls", description="starttls | ssl | none")
    user: str = Field(default="", description="SMTP login; empty = no AUTH")
    password: str = Field(default="", description="SMTP password (use an EnvVar)")
    ca_file: str = Field(default="", description="extra CA (PEM) trusted besides the system store")
    timeout_s: float = Field(default=30.0, description="socket timeout for every SMTP step")
    from_addr: str = Field(default=DEFAULT_FROM, description="From: address")
    to_addrs: str = Field(default="", description="comma-separated recipients")

    @property
    def effective_port(self) -> int:
        return self.port or {"ssl": 465, "starttls": 587, "none": 25}[self.security]

    @property
    def recipients(self) -> list[str]:
        return [addr for _, addr in getaddresses([self.to_addrs]) if addr]

    def delivery_problem(self) -> str | None:
        """Why alerts cannot go out, naming the variables; locally the outbox folder is read."""
        if (not self.host and settings.is_local()) or (self.host and self.recipients):
            return None
        settings_given = ((HOST_VAR, self.host), (TO_VAR, self.recipients))
        unset = " and ".join(var for var, given in settings_given if not given)
        return (
            f"alerts are NOT being delivered: {unset} not set. Set {HOST_VAR} and {TO_VAR} "
            f"(and the other ITRESUME_SMTP_* settings); outside {settings.PROFILE_VAR}="
            f"{settings.LOCAL_PROFILE} alerts wait in the outbox"
        )

    def send(self, msg: EmailMessage) -> str:
        """Send ``msg``, its missing headers filled first; returns smtp://host:port."""
        if not (self.host and self.recipients):
            problem = self.delivery_problem() or f"no relay to send with: {HOST_VAR} is not set"
            raise MailDeliveryError(problem, "config")
        self.address(msg)
        host, port, mode = self.host, self.effective_port, self.security
        where = f"smtp://{host}:{port}"
        # What AUTH puts on the wire, which relays echo in errors; `redact` masks its base64 too.
        secrets = [self.password, self.user, f"\0{self.user}\0{self.password}"]
        step, smtp = "connect", None
        try:
            context = ssl.create_default_context()
            if self.ca_file and mode != "none":
                context.load_verify_locations(cafile=os.path.expanduser(self.ca_file))
            if mode == "ssl":
                smtp = smtplib.SMTP_SSL(host, port, timeout=self.timeout_s, context=context)
            else:
                smtp = smtplib.SMTP(host, port, timeout=self.timeout_s)
            if mode == "starttls":
                step = "starttls"
                smtp.starttls(context=context)
            if self.user:
                step = "login"
                _login(smtp, self.user, self.password)
            step = "send"
            refused = smtp.send_message(msg, to_addrs=self.recipients)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            # A reply decoded: its bytes repr would escape a non-ASCII password past the masks.
            reply = getattr(exc, "smtp_error", None)
            if isinstance(reply, bytes):
                reply = f"{getattr(exc, 'smtp_code', '')} {reply.decode('utf-8', 'replace')}"
            detail = redact(f"{type(exc).__name__}: {reply or exc}", secrets=secrets)
            message = f"SMTP {step} failed for {where} ({mode}): {detail}"
            raise MailDeliveryError(message, step) from None  # the original may hold a session
        finally:
            if smtp is not None:
                with contextlib.suppress(smtplib.SMTPException, OSError):  # the message is out
                    smtp.quit()
                smtp.close()
        if refused:
            redacted = redact(refused, secrets=secrets)
            logging.getLogger(__name__).warning(f"{where} refused some recipients: {redacted}")
        return where

    def address(self, msg: EmailMessage) -> EmailMessage:
        if msg["From"] is None:
            msg["From"] = self.from_addr or DEFAULT_FROM
        if msg["To"] is None and self.recipients:
            msg["To"] = ", ".join(self.recipients)
        return msg
