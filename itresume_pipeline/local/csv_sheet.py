"""The report sheet's local stand-in: a CSV file, read whole and rewritten atomically."""

from __future__ import annotations

import csv
import logging
import os
import re
import tempfile
from pathlib import Path

from itresume_pipeline.resources.sheets import Cell, apply_block

log = logging.getLogger(__name__)


class CsvSheet:
    """``<folder>/<worksheet>.csv``, the worksheet name made a plain file name inside the folder."""

    mode = "local-csv"

    def __init__(self, folder: Path, worksheet: str) -> None:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", worksheet) or "sheet"
        self.path = folder.expanduser().absolute() / f"{name}.csv"
        self.where = f"local CSV file {self.path} (NOT Google Sheets)"
        self.cells: list[list[Cell]] = []  # as last read: the cells outside the table survive

    def url(self) -> str:
        return self.path.resolve().as_uri()

    def read(self) -> list[list[Cell]]:
        """CSV has no types: whole numbers read back as ints, as the API returns them."""
        self.cells = []
        if self.path.exists():
            with self.path.open(newline="", encoding="utf-8-sig") as fh:  # Excel adds a BOM
                self.cells = [
                    [int(c) if re.fullmatch(r"-?\d+", c) else c for c in row]
                    for row in csv.reader(fh)
                ]
        return self.cells

    def write(self, top: int, left: int, block: list[list[Cell]]) -> tuple[int, str]:
        """Temp file, fsync, ``os.replace``: a failed write leaves the old file."""
        log.warning("Sheets: the report is a LOCAL CSV file %s, not Google Sheets", self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                rows = apply_block(self.cells, top, left, block)
                csv.writer(fh, lineterminator="\n").writerows(rows)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)  # gone after the replace; left by a failed write
        return 1, str(self.path)
