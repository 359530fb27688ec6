"""Mask secrets in any text before it is logged, raised, stored as metadata or e-mailed.

Two layers, because neither is enough alone:

* patterns catch secrets by their *shape* (``client_key=...``, ``password: ...``, bearer tokens,
  PEM private keys, the password of ``scheme://user:PASSWORD@host`` URLs), whatever their value;
* literals catch the *values* currently configured in the environment (the API key, the SMTP
  password, the Sheets service-account key, database passwords), wherever they appear, even
  without a telltale key name, e.g. inside an exception message that echoes a request body.
  Not only whole values: any run of `FRAGMENT_LEN` or more consecutive characters of a secret,
  of its URL-encoded form or of its base64 forms (standard and URL-safe, at each of the three
  byte alignments, so the base64 of a longer text that contains the secret, such as SMTP AUTH
  PLAIN's ``\0user\0password``, is caught as well). A message cut short by someone else, or
  encoded on its way, therefore still loses the secret.

`RedactingFilter` applies `redact` to third-party loggers that write secrets into their own
messages (urllib3 logs request URLs, query string included, at DEBUG). Importing this module
changes nothing; `install_log_redaction` attaches the filter, and is called when the pipeline
code location loads and whenever the dated log handler is set up (`itresume_pipeline.logs`).

`redact` never raises: if anything inside it fails, it returns a placeholder rather than the
unredacted text, because a redaction bug must not leak a secret nor hide the original error.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK = "***"

#: Environment variables whose values are secrets in their own right.
SECRET_ENV_VARS: tuple[str, ...] = (
    "ITRESUME_CLIENT_KEY",
    "ITRESUME_SMTP_PASSWORD",
    "DAGSTER_PG_PASSWORD",
)
#: Environment variables holding URLs whose password part is a secret.
SECRET_URL_ENV_VARS: tuple[str, ...] = ("ITRESUME_DATABASE_URL", "DAGSTER_PG_URL")
#: Environment variable naming a service-account JSON whose ``private_key`` is a secret.
CREDENTIALS_FILE_ENV_VAR = "ITRESUME_SHEETS_CREDENTIALS"

# Shorter literals would mask ordinary words and numbers all over the text; the patterns still
# catch such secrets whenever they sit next to their key name.
_MIN_LITERAL_LEN = 4
#: Any run of this many consecutive characters of a secret (or of an encoded form) is masked.
FRAGMENT_LEN = 8
_FAILED = "[redaction failed; text withheld]"
_PEM_ARMOUR_RE = re.compile(r"-----(?:BEGIN|END)[A-Z0-9 ]*-----")

_PEM_RE = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----"
    r"[A-Za-z0-9+/=\s\\]*"  # base64 body; "\\" keeps JSON/repr-escaped "\n" inside the match
    r"(?:-----END[A-Z0-9 ]*PRIVATE KEY-----)?"  # optional: a truncated key is still masked
)
_AUTH_HEADER_RE = re.compile(
    r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic|token|bot)?\s*)[^\s\"',;]+"
)
_BEARER_RE = re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{6,}=*")
_KEY_NAMES = (
    "client_key|client_secret|password|passwd|pwd|access_token|refresh_token|id_token|"
    "auth_token|api_key|apikey|private_key_id|private_key|secret|token"
)
_KEY_VALUE_RE = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?P<key>(?:" + _KEY_NAMES + r")[\"']?\s*[=:]\s*)"
    r"(?:\"(?P<dq>[^\"\n]*)\"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s&\"',;)}\]>]+))"
)
_KEY_TRIGGERS = ("key", "secret", "passw", "pwd", "token")  # every _KEY_NAMES entry has one
_URL_PASSWORD_RE = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^\s:/@?#]*:)[^\s@/?#]+(@)")


def _key_value_sub(match: re.Match[str]) -> str:
    key = match.group("key")
    if match.group("dq") is not None:
        return f'{key}"{MASK}"'
    if match.group("sq") is not None:
        return f"{key}'{MASK}'"
    return key + MASK


def _apply_patterns(text: str) -> str:
    # Substring tests (C speed) skip the regexes on the common text that holds no secret.
    lower = text.lower()
    if "private key-----" in lower:
        text = _PEM_RE.sub(MASK, text)
    if "authorization" in lower:
        text = _AUTH_HEADER_RE.sub(lambda m: m.group(1) + MASK, text)
    if "bearer" in lower:
        text = _BEARER_RE.sub(lambda m: m.group(1) + MASK, text)
    if "://" in text and "@" in text:
        text = _URL_PASSWORD_RE.sub(lambda m: m.group(1) + MASK + m.group(2), text)
    if any(word in lower for word in _KEY_TRIGGERS):
        text = _KEY_VALUE_RE.sub(_key_value_sub, text)
    return text


def _pem_body(secret: str) -> str:
    """A PEM key without its BEGIN/END lines: those are the same in every key, not secret."""
    return "\n".join(
        line.strip() for line in _PEM_ARMOUR_RE.sub("", secret).splitlines() if line.strip()
    )


def _variants(secret: str) -> set[str]:
    """A secret as it may appear: verbatim, URL-encoded, JSON-escaped, and line by line (PEM)."""
    secret = secret.strip()
    if len(secret) < _MIN_LITERAL_LEN:
        return set()
    if "-----BEGIN" in secret:
        secret = _pem_body(secret)
    encoded = {quote(secret, safe=""), quote_plus(secret)}
    lower_hex = {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), e) for e in encoded}
    out = {secret, json.dumps(secret)[1:-1], *encoded, *lower_hex}  # %2f as well as %2F
    if "\n" in secret:  # a PEM key: each base64 line alone is still a secret
        out.update(line.strip() for line in secret.splitlines())
    return {v for v in out if len(v) >= _MIN_LITERAL_LEN}


def _base64_forms(secret: str) -> set[str]:
    """The base64 characters that depend on the secret's bytes alone, at each alignment.

    Inside a longer encoded text the secret starts 0, 1 or 2 bytes into a 3-byte group; for
    each case only the characters whose 6 bits all come from the secret are kept, so they match
    whatever surrounds the secret.
    """
    data = secret.strip().encode("utf-8")
    forms: set[str] = set()
    for skew in range(3):
        encoded = base64.b64encode(b"\0" * skew + data + b"\0\0").decode("ascii")
        first = -(-8 * skew // 6)  # ceil: the first character free of the leading filler
        last = 8 * (skew + len(data)) // 6  # the first character that reaches the trailing one
        form = encoded[first:last]
        forms.update((form, form.replace("+", "-").replace("/", "_")))
    return forms


@dataclass(frozen=True)
class _FragmentMatcher:
    """Finds runs of `FRAGMENT_LEN`+ characters of any secret form.

    A regex over the forms' alphabet finds candidate runs at C speed (ordinary text has few
    long runs of such characters); a set of every `FRAGMENT_LEN`-character window then tells
    which stretches of a run belong to a secret. Masks the union of matching windows.
    """

    candidates: re.Pattern[str]
    windows: frozenset[str]

    def sub(self, text: str) -> str:
        pieces: list[str] = []
        done = 0
        for run in self.candidates.finditer(text):
            for lo, hi in self._secret_spans(run.group(), run.start()):
                pieces += [text[done:lo], MASK]
                done = hi
        return "".join(pieces) + text[done:] if pieces else text

    def _secret_spans(self, run: str, offset: int) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for i in range(len(run) - FRAGMENT_LEN + 1):
            if run[i : i + FRAGMENT_LEN] in self.windows:
                lo, hi = offset + i, offset + i + FRAGMENT_LEN
                if spans and lo <= spans[-1][1]:
                    spans[-1] = (spans[-1][0], hi)
                else:
                    spans.append((lo, hi))
        return spans


@lru_cache(maxsize=32)
def _fragment_matcher(secrets: frozenset[str]) -> _FragmentMatcher | None:
    forms: set[str] = set()
    for secret in secrets:
        if len(secret.strip()) >= _MIN_LITERAL_LEN:
            forms |= _variants(secret) | _base64_forms(_pem_body(secret.strip()))
    windows = frozenset(
        form[i : i + FRAGMENT_LEN] for form in forms for i in range(len(form) - FRAGMENT_LEN + 1)
    )
    if not windows:
        return None
    alphabet = "".join(sorted({re.escape(char) for window in windows for char in window}))
    return _FragmentMatcher(re.compile(f"[{alphabet}]{{{FRAGMENT_LEN},}}"), windows)


@lru_cache(maxsize=32)
def _literal_regex(secrets: frozenset[str]) -> re.Pattern[str] | None:
    """Whole forms too short for `_FragmentMatcher`'s windows."""
    variants: set[str] = set()
    for secret in secrets:
        variants |= {v for v in _variants(secret) if len(v) < FRAGMENT_LEN}
    if not variants:
        return None
    # Longest first, so a secret is never half-masked by a shorter one it contains.
    return re.compile("|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True)))


@lru_cache(maxsize=8)
def _private_key_from_file(path: str, mtime_ns: int, size: int) -> str:
    """The service account's private key; keyed on mtime and size so an edited file is re-read."""
    del mtime_ns, size  # cache key only
    with open(path, encoding="utf-8") as fh:
        info = json.load(fh)
    key = info.get("private_key") if isinstance(info, dict) else None
    return key if isinstance(key, str) else ""


def _url_password(url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:
        return ""
    return unquote(password) if password else ""


def configured_secrets() -> frozenset[str]:
    """Secret values configured right now; read on every call so tests and reloads are seen."""
    found: set[str] = set()
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            found.add(value)
    for name in SECRET_URL_ENV_VARS:
        value = _url_password(os.environ.get(name, ""))
        if value:
            found.add(value)
    path = os.environ.get(CREDENTIALS_FILE_ENV_VAR, "").strip()
    if path:
        try:
            st = os.stat(path)
            key = _private_key_from_file(path, st.st_mtime_ns, st.st_size)
        except (OSError, ValueError):  # unreadable or not JSON: nothing to add
            key = ""
        if key:
            found.add(key)
    return frozenset(found)


def redact(text: object, *, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` (``str()`` of it if needed) with every secret we know of replaced by ***.

    ``secrets`` adds literal values known to the caller (e.g. a password passed as resource
    config rather than through the environment).
    """
    try:
        if text is None:
            return ""
        value = text if isinstance(text, str) else str(text)
        if not value:
            return value
        literals = configured_secrets() | frozenset(s for s in secrets if isinstance(s, str))
        if literals:
            matcher = _fragment_matcher(literals)
            if matcher is not None:
                value = matcher.sub(value)
            pattern = _literal_regex(literals)
            if pattern is not None:
                value = pattern.sub(MASK, value)
        return _apply_patterns(value)
    except Exception:  # never raise: see the module docstring
        return _FAILED


class RedactingFilter(logging.Filter):
    """Passes every record, with its message run through `redact` before any handler sees it.

    For third-party loggers that write secrets into their own messages, beyond the reach of our
    handlers' redaction: a Dagster instance that captures such a logger stores its records in
    the event log verbatim.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


#: Loggers known to put request URLs, query string and so the API key included, in messages:
#: urllib3 logs every request line at DEBUG, and its retry helper the URL of each retry.
URL_LOGGERS: tuple[str, ...] = ("urllib3.connectionpool", "urllib3.util.retry")


def install_log_redaction(names: Iterable[str] = URL_LOGGERS) -> None:
    """Attach a `RedactingFilter` to each named logger, once. Cheap: a logger runs its filters
    only for records it is enabled for, and these log at DEBUG."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
