"""The environment, read at call time (so tests can vary it), with one error type for bad values.

The one module that reads the environment: the others call these functions, or get resource
fields bound from them in `itresume_pipeline.resources` (secrets as `EnvVar`s, see `secret`).
Every setting is checked where it is read, and a bad one raises `SettingError`, whose message
names the variable. `SettingError` is a Dagster `Failure` that forbids retries: no retry can fix
a typo in a deployment, so a run fails at once instead of burning its retry budget.

Two profiles:
- production (`ITRESUME_PROFILE` unset): nothing falls back to the local rig. A missing database
  URL, API credentials or Sheets settings fail the run that needs them, naming the variable.
- local (`ITRESUME_PROFILE=local`, set by `make demo`, `make dev` and `itresume-dev env`): the
  API simulator, the embedded PostgreSQL, the CSV sheet and the `.eml` outbox fill the gaps.
"""

from __future__ import annotations

import os
from datetime import date
from email.utils import getaddresses
from pathlib import Path

from dagster import EnvVar, Failure

DEFAULT_API_URL = "https://b2b.itresume.ru/api/statistics"
DEFAULT_START_DATE = "2023-04-01"
DEFAULT_SCHEMA = "itresume"
DEFAULT_DAGSTER_URL = "http://localhost:3000"
DEFAULT_API_DEADLINE_S = 900.0

PROFILE_VAR = "ITRESUME_PROFILE"
LOCAL_PROFILE = "local"
PRODUCTION_PROFILE = "production"
LOCAL_PROFILE_MEANS = (
    "unset settings are filled by the local rig (API simulator, embedded PostgreSQL, "
    "CSV sheet, .eml outbox)"
)


class SettingError(Failure):
    """A setting is missing or malformed. The message names the variable; retries are off."""

    def __init__(self, message: str) -> None:
        super().__init__(description=message, allow_retries=False)


def env(name: str, default: str = "") -> str:
    """An environment variable with surrounding blanks removed; empty counts as unset."""
    value = os.environ.get(name, "").strip()
    return value or default


def required(name: str, *, needed_for: str) -> str:
    """A variable that must be set; the error says whether it is unset or set but empty."""
    value = env(name)
    if value:
        return value
    raise missing(name, needed_for=needed_for)


def absent(name: str) -> str:
    """How a variable without a value is missing, for error messages."""
    return "is set but empty" if name in os.environ else "is not set"


def missing(name: str, *, needed_for: str) -> SettingError:
    """The error for a required variable without a value: unset, or set but empty."""
    return SettingError(f"{name} {absent(name)}: it is required for {needed_for}")


def secret(name: str) -> EnvVar | str:
    """A secret for a resource field: an `EnvVar`, so the Dagster UI shows its name only.

    An unset one is bound empty instead. Dagster refuses to create a run whose `EnvVar` is unset
    (a config error, before any resource runs), so the local profile could not fill the gap and
    production would get no failed run to alert on; an empty field lets the resource that needs
    it fail the run with a `SettingError` naming the variable (see `missing`).
    """
    return EnvVar(name) if name in os.environ else ""


def profile() -> str:
    """`local` or `production`; anything else is an error rather than a guess."""
    raw = env(PROFILE_VAR).lower()
    if raw in ("", PRODUCTION_PROFILE):
        return PRODUCTION_PROFILE
    if raw == LOCAL_PROFILE:
        return LOCAL_PROFILE
    raise SettingError(
        f"{PROFILE_VAR}={env(PROFILE_VAR)!r} is not a profile: use {LOCAL_PROFILE!r} for the "
        "local rig, or leave it unset for production"
    )


def is_local() -> bool:
    return profile() == LOCAL_PROFILE


def integer(name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    """A whole number from `minimum` to `maximum`; garbage or a value outside names the variable."""
    raw = env(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingError(f"{name}={raw!r} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise SettingError(f"{name}={raw!r} must be at most {maximum}")
    return value


def number(name: str, default: float, *, minimum: float) -> float:
    """A number greater than or equal to `minimum` (seconds, usually)."""
    raw = env(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:  # also refuses nan
        raise SettingError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def choice(name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (case aside); unset is the first."""
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
    """A path to an existing file, or empty."""
    raw = env(name)
    if raw and not Path(raw).expanduser().is_file():
        raise SettingError(f"{name}={raw!r} is not a readable file")
    return raw


def home() -> Path:
    """`$ITRESUME_HOME`: landing files, logs, outbox, local sheet and the embedded database."""
    return Path(env("ITRESUME_HOME", "./.itresume")).expanduser().absolute()


def embedded_pg_dir() -> Path:
    return home() / "pg"


def sheets_local_dir() -> Path:
    return home() / "sheets"


def outbox_dir() -> Path:
    """`$ITRESUME_OUTBOX_DIR`, else `$ITRESUME_HOME/outbox`: where alert e-mails wait."""
    explicit = env("ITRESUME_OUTBOX_DIR")
    return Path(explicit).expanduser().absolute() if explicit else home() / "outbox"


def dagster_url() -> str:
    """`ITRESUME_DAGSTER_URL`, the UI the alert e-mails link runs to."""
    return env("ITRESUME_DAGSTER_URL", DEFAULT_DAGSTER_URL)


def log_dir() -> Path:
    return Path(env("ITRESUME_LOG_DIR", str(home() / "logs"))).expanduser().absolute()


def partitions_start_date() -> str:
    """`ITRESUME_START_DATE`, the first daily partition, as an ISO date."""
    raw = env("ITRESUME_START_DATE", DEFAULT_START_DATE)
    try:
        return date.fromisoformat(raw).isoformat()
    except ValueError:
        raise SettingError(
            f"ITRESUME_START_DATE={raw!r} is not a date: use YYYY-MM-DD, e.g. {DEFAULT_START_DATE}"
        ) from None


def api_deadline_s() -> float:
    """`ITRESUME_API_DEADLINE_S`: the total time one API call may take, body included."""
    return number("ITRESUME_API_DEADLINE_S", DEFAULT_API_DEADLINE_S, minimum=1)
