"""The one module that reads the environment, at call time (so tests can vary it). A bad value
raises `SettingError` naming the variable; only `ITRESUME_PROFILE=local` falls back to the rig."""

from __future__ import annotations

import contextlib
import json
import math
import os
from datetime import date
from email.utils import getaddresses
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dagster import EnvVar, Failure

DEFAULT_API_URL = "https://b2b.itresume.ru/api/statistics"
DEFAULT_SCHEMA = "itresume"

PROFILE_VAR = "ITRESUME_PROFILE"
LOCAL_PROFILE = "local"
LOCAL_PROFILE_MEANS = (
    "unset settings are filled by the local rig (API simulator, embedded PostgreSQL, "
    "CSV sheet, .eml outbox)"
)


class SettingError(Failure):
    """A setting is missing or malformed; retries are off, since no retry fixes a typo."""

    def __init__(self, message: str) -> None:
        super().__init__(description=message, allow_retries=False)


def env(name: str, default: str = "") -> str:
    """An environment variable with surrounding blanks removed; empty counts as unset."""
    return os.environ.get(name, "").strip() or default


def absent(name: str) -> str:
    return "is set but empty" if name in os.environ else "is not set"


def missing(name: str, *, needed_for: str) -> SettingError:
    return SettingError(f"{name} {absent(name)}: it is required for {needed_for}")


def required(name: str, *, needed_for: str) -> str:
    if not (value := env(name)):
        raise missing(name, needed_for=needed_for)
    return value


def secret(name: str) -> EnvVar | str:
    """An `EnvVar`, so the UI shows only the name; empty when unset, so the resource names it."""
    return EnvVar(name) if name in os.environ else ""


def is_local() -> bool:
    """The profile is `production` (unset) or `local`; anything else is an error, not a guess."""
    return choice(PROFILE_VAR, ("production", LOCAL_PROFILE)) == LOCAL_PROFILE


def number(
    name: str, default: float, *, minimum: float, maximum: float = math.inf, kind: type = float
) -> float:
    if not (raw := env(name)):
        return default
    try:
        value = kind(raw)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise SettingError(f"{name}={raw!r} is not {noun}") from None
    if not value >= minimum:  # also refuses nan
        raise SettingError(f"{name}={raw!r} must be at least {minimum:g}")
    if value > maximum:
        raise SettingError(f"{name}={raw!r} must be at most {maximum:g}")
    return value


def integer(name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    return int(number(name, default, minimum=minimum, maximum=maximum or math.inf, kind=int))


def choice(name: str, choices: tuple[str, ...]) -> str:
    raw = env(name, choices[0])
    if raw.lower() not in choices:
        raise SettingError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return raw.lower()


def addresses(name: str, *, single: bool = False) -> str:
    """Comma-separated e-mail addresses, each `local@domain` or `Name <local@domain>`."""
    raw = env(name)
    pieces = [piece.strip() for piece in raw.split(",") if piece.strip()]
    if single and len(pieces) > 1:
        raise SettingError(f"{name}={raw!r} must be one address")
    for piece in pieces:
        parsed = getaddresses([piece])
        local, _, domain = (parsed[0][1] if len(parsed) == 1 else "").rpartition("@")
        if not (local and domain):
            raise SettingError(f"{name}={raw!r}: {piece!r} is not an e-mail address")
    return raw


def readable_file(name: str) -> str:
    raw = env(name)
    if raw and not Path(raw).expanduser().is_file():
        raise SettingError(f"{name}={raw!r} is not a readable file")
    return raw


def home() -> Path:
    return Path(env("ITRESUME_HOME", ".itresume")).expanduser().absolute()


def embedded_pg_dir() -> Path:
    return home() / "pg"


def sheets_local_dir() -> Path:
    return home() / "sheets"


def outbox_dir() -> Path:
    return Path(env("ITRESUME_OUTBOX_DIR") or home() / "outbox").expanduser().absolute()


def log_dir() -> Path:
    return Path(env("ITRESUME_LOG_DIR") or home() / "logs").expanduser().absolute()


def dagster_url() -> str:
    return env("ITRESUME_DAGSTER_URL", "http://localhost:3000")


def partitions_start_date() -> str:
    raw = env("ITRESUME_START_DATE", "2023-04-01")
    try:
        return date.fromisoformat(raw).isoformat()
    except ValueError:
        raise SettingError(f"ITRESUME_START_DATE={raw!r} is not a date (YYYY-MM-DD)") from None


def api_deadline_s() -> float:
    return number("ITRESUME_API_DEADLINE_S", 900.0, minimum=1)


def secret_values() -> frozenset[str]:
    """The secret values configured right now, read on every call."""
    found = {
        env(n) for n in ("ITRESUME_CLIENT_KEY", "ITRESUME_SMTP_PASSWORD", "DAGSTER_PG_PASSWORD")
    }
    for name in ("ITRESUME_DATABASE_URL", "DAGSTER_PG_URL"):
        with contextlib.suppress(ValueError):  # a malformed URL: no password to find
            found.add(unquote(urlsplit(env(name)).password or ""))
    with contextlib.suppress(OSError, ValueError):  # the service account's key; no file, not JSON
        path = os.path.expanduser(env("ITRESUME_SHEETS_CREDENTIALS"))
        stat = os.stat(path)
        found.add(_private_key(path, stat.st_mtime_ns, stat.st_size))
    return frozenset(found - {""})


@lru_cache(maxsize=8)  # keyed on mtime and size, so an edit is re-read
def _private_key(path: str, mtime_ns: int, size: int) -> str:
    info = json.loads(Path(path).read_text(encoding="utf-8"))
    key = info.get("private_key") if isinstance(info, dict) else None
    return key if isinstance(key, str) else ""
