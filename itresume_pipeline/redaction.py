"""Mask secrets in any text before it is logged, raised, stored as metadata or e-mailed: by their
shape (``client_key=...``, PEM keys, URL passwords), and configured values as any `FRAGMENT_LEN`
characters of them or of their encoded forms."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote, quote_plus

from itresume_pipeline import settings

MASK = "***"
FRAGMENT_LEN = 8
# Shorter values would mask ordinary words; the patterns still catch them next to a key name.
_MIN_LITERAL_LEN = 4

_PEM_ARMOUR_RE = re.compile(r"-----(?:BEGIN|END)[A-Z0-9 ]*-----")
_KEY_NAMES = (
    "client_key|client_secret|password|passwd|pwd|access_token|refresh_token|id_token|"
    "auth_token|api_key|apikey|private_key_id|private_key|secret|token"
)
# Secrets by their shape, each pattern with its replacement.
_PATTERNS = (
    (
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----"
        r"[A-Za-z0-9+/=\s\\]*"  # "\\": a JSON-escaped newline stays inside the match
        r"(?:-----END[A-Z0-9 ]*PRIVATE KEY-----)?",  # a truncated key is masked too
        MASK,
    ),
    (
        r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic|token|bot)?\s*)[^\s\"',;]+",
        rf"\1{MASK}",
    ),
    (r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{6,}=*", rf"\1{MASK}"),
    (r"(?i)(\b[a-z][a-z0-9+.\-]*://[^\s:/@?#]*:)[^\s@/?#]+(@)", rf"\1{MASK}\2"),
    (
        r"(?i)(?<![A-Za-z0-9])(?P<key>(?:" + _KEY_NAMES + r")[\"']?\s*[=:]\s*)"
        r"(?:(?P<q>[\"'])[^\n]*?(?P=q)|[^\s&\"',;)}\]>]+)",
        rf"\g<key>\g<q>{MASK}\g<q>",
    ),
)
_COMPILED = tuple((re.compile(pattern), replacement) for pattern, replacement in _PATTERNS)


def _variants(body: str) -> set[str]:
    """Verbatim, JSON-escaped, URL-encoded (either hex case), and a PEM key line by line."""
    encoded = {quote(body, safe=""), quote_plus(body)}
    encoded |= {re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), e) for e in encoded}
    forms = {body, json.dumps(body)[1:-1], *encoded, *body.splitlines()}
    return {form for form in forms if len(form) >= _MIN_LITERAL_LEN}


def _base64_forms(body: str) -> set[str]:
    """The base64 characters set by the secret alone, at each byte alignment (AUTH PLAIN)."""
    data = body.encode("utf-8")
    forms: set[str] = set()
    for skew in range(3):
        encoded = base64.b64encode(b"\0" * skew + data + b"\0\0").decode("ascii")
        form = encoded[-(-8 * skew // 6) : 8 * (skew + len(data)) // 6]  # free of the filler
        forms |= {form, form.replace("+", "-").replace("/", "_")}
    return forms


@lru_cache(maxsize=32)
def _matchers(
    secrets: frozenset[str],
) -> tuple[re.Pattern[str] | None, frozenset[str], re.Pattern[str] | None]:
    """Runs of the forms' characters, their `FRAGMENT_LEN` windows, and the shorter forms."""
    forms: set[str] = set()
    short: set[str] = set()
    for secret in secrets:
        lines = (line.strip() for line in _PEM_ARMOUR_RE.sub("", secret).splitlines())
        body = "\n".join(line for line in lines if line)  # a PEM key without its armour
        if len(body) >= _MIN_LITERAL_LEN:
            variants = _variants(body)
            forms |= variants | _base64_forms(body)
            short |= {form for form in variants if len(form) < FRAGMENT_LEN}
    windows = frozenset(
        form[i : i + FRAGMENT_LEN] for form in forms for i in range(len(form) - FRAGMENT_LEN + 1)
    )
    alphabet = "".join(sorted({re.escape(char) for window in windows for char in window}))
    runs = re.compile(f"[{alphabet}]{{{FRAGMENT_LEN},}}") if windows else None
    by_length = sorted(short, key=len, reverse=True)  # so none is half-masked
    return runs, windows, re.compile("|".join(map(re.escape, by_length))) if short else None


def _mask_run(run: str, windows: frozenset[str]) -> str:
    pieces: list[str] = []
    end = 0
    for i in range(len(run) - FRAGMENT_LEN + 1):
        if run[i : i + FRAGMENT_LEN] in windows:
            if not pieces or i > end:  # a new span, not touching the one before
                pieces += [run[end:i], MASK]
            end = i + FRAGMENT_LEN
    return "".join(pieces) + run[end:] if pieces else run


def redact(text: object, *, secrets: Iterable[str] = ()) -> str:
    """`text` with every secret (and `secrets`) masked. Never raises: a bug here must neither leak
    a secret nor hide the original error."""
    try:
        value = "" if text is None else text if isinstance(text, str) else str(text)
        literals = settings.secret_values() | {s for s in secrets if isinstance(s, str)}
        if value and literals:
            runs, windows, short = _matchers(frozenset(literals))
            if runs is not None:
                value = runs.sub(lambda run: _mask_run(run[0], windows), value)
            if short is not None:
                value = short.sub(MASK, value)
        for pattern, replacement in _COMPILED:
            value = pattern.sub(replacement, value)
        return value
    except Exception:
        return "[redaction failed; text withheld]"


class RedactingFilter(logging.Filter):
    """For third-party loggers whose records a Dagster instance may store verbatim."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    """urllib3 logs request URLs, the API key in the query string included, at DEBUG."""
    for name in ("urllib3.connectionpool", "urllib3.util.retry"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
