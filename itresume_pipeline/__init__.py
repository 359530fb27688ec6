"""IT Resume attempt statistics -> PostgreSQL -> daily metrics -> Google Sheets, on Dagster.

`defs` is imported on first use, so the alerting location loads even when this one cannot."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "defs":
        from itresume_pipeline.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:  # Dagster finds `defs` in `dir(module)`
    return sorted([*globals(), "defs"])
