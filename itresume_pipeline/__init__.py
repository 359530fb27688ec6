"""IT Resume attempt statistics -> PostgreSQL -> daily metrics -> Google Sheets, on Dagster.

`defs` (the pipeline code location) is imported on first use, not with the package: the
alerting location (`itresume_pipeline.alerting`) imports modules of this package and must load
even when a pipeline setting stops `itresume_pipeline.definitions` from loading.
"""

from __future__ import annotations

from typing import Any

__all__ = ["defs"]


def __getattr__(name: str) -> Any:
    if name == "defs":
        from itresume_pipeline.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
