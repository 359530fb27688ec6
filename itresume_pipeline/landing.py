"""The landing zone: one verbatim gzip payload per UTC day, written atomically.

A payload is first streamed to a temp file beside its final name, checked to be a complete JSON
array, and only then renamed into place, so a half-written or broken download never counts and
the previous good copy survives a failed run.
"""

from __future__ import annotations

import os
import uuid
from datetime import date
from pathlib import Path

from isal import igzip

from itresume_pipeline import settings

TEMP_SUFFIX = ".partial"


def landing_path(day: date, root: Path | None = None) -> Path:
    return (root or settings.landing_dir()) / f"{day.isoformat()}.json.gz"


def temp_path_for(final: Path) -> Path:
    """A unique temp name in the same directory, so the final rename is atomic."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.with_name(f".{final.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")


def publish(temp: Path, final: Path) -> None:
    """Atomically replace `final` with the fully written `temp`."""
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, final)


def discard(temp: Path) -> None:
    temp.unlink(missing_ok=True)


def open_payload(path: Path):
    """Decompressing reader of a landing file (binary).

    ISA-L's gzip (python-isal) reads and writes the standard format about 3x faster than zlib,
    which matters on a 1M-record day: inflating is on the load's critical path.
    """
    if not path.exists():
        raise FileNotFoundError(
            f"landing file {path} is missing: materialize raw_attempts for {path.name[:10]} first"
        )
    return igzip.open(path, "rb")
