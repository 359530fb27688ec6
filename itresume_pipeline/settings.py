"""Environment-derived paths and defaults (DESIGN §3), read at call time so tests can vary them."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_API_URL = "https://b2b.itresume.ru/api/statistics"
DEFAULT_START_DATE = "2023-04-01"
DEFAULT_SCHEMA = "itresume"
DEFAULT_DAGSTER_URL = "http://localhost:3000"


def env(name: str, default: str = "") -> str:
    """An environment variable with surrounding blanks removed; empty counts as unset."""
    value = os.environ.get(name, "").strip()
    return value or default


def home() -> Path:
    """`$ITRESUME_HOME`: landing files, logs, outbox, local sheet and the embedded database."""
    return Path(env("ITRESUME_HOME", "./.itresume")).expanduser().absolute()


def landing_dir() -> Path:
    return home() / "raw" / "attempts"


def embedded_pg_dir() -> Path:
    return home() / "pg"


def sheets_local_dir() -> Path:
    return home() / "sheets"


def outbox_dir() -> Path:
    return home() / "outbox"


def log_dir() -> Path:
    return Path(env("ITRESUME_LOG_DIR", str(home() / "logs"))).expanduser().absolute()


def partitions_start_date() -> str:
    return env("ITRESUME_START_DATE", DEFAULT_START_DATE)
