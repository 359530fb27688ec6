"""The report sheet: one row per day, upserted in date order with at most two write calls.

``ITRESUME_SHEETS_BACKEND`` (``google`` or ``csv``) says where the report goes. Every mode reads
the sheet as one grid of cells and writes back one block of it, so all share the merge
(:func:`plan_upsert`) and behave the same:

* ``google``: the Sheets API through gspread, authenticated with a service-account file;
* ``emulator``: the same protocol over plain HTTP to ``SHEETS_EMULATOR_HOST``, no credentials;
* ``local-csv``: ``<local_dir>/<worksheet>.csv``, loudly flagged. Used when ``csv`` is asked for
  by name, or in the local profile when no Google Sheets setting is given; in production a
  missing Google setting fails the run, since a report nobody reads is a silent failure.

People edit the sheet, so its layout is not trusted: the table is wherever its header row is,
only the table's own cells are written, and a header that cannot be found unambiguously stops
the run instead of a guess.

gspread is given the requests session, which carries the bounded urllib3 ``Retry`` of
``itresume_pipeline.retrying`` (gspread 6.2.1's ``BackOffHTTPClient`` never gives up). The token
session retries only broken connections: google-auth retries its own 408/429/5xx answers.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gspread
import requests
from dagster import ConfigurableResource, Failure
from gspread.exceptions import APIError
from gspread.http_client import HTTPClient
from gspread.utils import absolute_range_name, rowcol_to_a1
from pydantic import Field
from urllib3.exceptions import MaxRetryError

from itresume_pipeline import settings
from itresume_pipeline.retrying import attempts_behind, http_retry, mount

log = logging.getLogger(__name__)

Cell = Any  # str | int | float | bool, "" for an empty cell (what the Sheets API round-trips)

FIXED_COLUMNS: tuple[str, ...] = ("date", "attempts", "successful_attempts", "unique_users")
INT_COLUMNS: tuple[str, ...] = FIXED_COLUMNS[1:]
GOOGLE_API_ROOT = "https://sheets.googleapis.com"
SCOPES = ("https://www.googleapis.com/auth/spreadsheets",)  # no Drive scope: we never use Drive
EMULATOR_DEFAULT_SPREADSHEET_ID = "local-emulator"
ENV_SPREADSHEET_ID = "ITRESUME_SHEETS_SPREADSHEET_ID"
ENV_CREDENTIALS = "ITRESUME_SHEETS_CREDENTIALS"
ENV_WORKSHEET = "ITRESUME_SHEETS_WORKSHEET"
ENV_EMULATOR_HOST = "SHEETS_EMULATOR_HOST"
ENV_BACKEND = "ITRESUME_SHEETS_BACKEND"
GOOGLE_BACKEND = "google"
CSV_BACKEND = "csv"
DEFAULT_WORKSHEET = "daily_metrics"
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_GRID_HEADROOM_ROWS = 500  # grow the grid in big steps so daily runs rarely pay a resize call
_SHEETS_EPOCH = date(1899, 12, 30)  # day 0 of the spreadsheet serial-date system
_DOTTED_DATE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})")  # 03.08.2024: day.month.year
_FOUND_CELLS = 6  # how many cells of a row an error message quotes


class SheetsError(Failure):
    """A Sheets failure fit for operators (never a key or a token), without step retries: the
    client has already retried what a retry could fix."""

    def __init__(self, message: str) -> None:
        Failure.__init__(self, description=message, allow_retries=False)


class SheetsConfigError(SheetsError, settings.SettingError, ValueError):
    """The sheet is configured wrongly; a `SettingError`, since no retry fixes a setting."""


class SheetsLayoutError(SheetsError):
    """The worksheet's table cannot be located unambiguously, so nothing is written to it."""


class SheetsApiError(SheetsError):
    """The API refused a request in a way retrying cannot fix (a 4xx other than 408/429)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SheetsRetryError(SheetsError):
    """Retryable failures (408, 429, 5xx, timeouts) persisted through every attempt."""

    def __init__(self, message: str, status: int | None, attempts: int) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


@dataclass(frozen=True)
class UpsertResult:
    """What an upsert did: ``row_numbers`` are the upserted dates' 1-based sheet rows after the
    write, ``values`` those rows' cells, ``write_calls`` 0 when the sheet already held them."""

    url: str
    mode: str
    worksheet: str
    row_numbers: dict[str, int]
    values: dict[str, list[Cell]]
    write_calls: int
    written_range: str | None
    duplicates_collapsed: int
    created_worksheet: bool

    @property
    def changed(self) -> bool:
        return self.write_calls > 0


# Cells ----------------------------------------------------------------------------------------


def iso_date(value: Any) -> str | None:
    """The ISO date a cell means, or None.

    A typed date comes back as ISO text, as ``03.08.2024`` text (day first, as a Russian locale
    writes it), or as a serial number (a real date under ``UNFORMATTED_VALUE``): the same day.
    """
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 20_000 <= value < 2_958_466:  # 1954-10-03 .. 9999-12-31: smaller numbers are not dates
            return (_SHEETS_EPOCH + timedelta(days=int(value))).isoformat()
        return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    dotted = _DOTTED_DATE.fullmatch(text)
    try:
        if dotted:
            day, month, year = (int(part) for part in dotted.groups())
            return date(year, month, day).isoformat()
        return date.fromisoformat(text[:10]).isoformat() if len(text) >= 10 else None
    except ValueError:
        return None


def as_int(value: Any) -> int | None:
    """An int for a whole number (``5``, ``5.0``, ``Decimal(5)``, text ``"1,234"``), else None."""
    if isinstance(value, str):
        text = value.strip().replace(",", "").replace("\u00a0", "").replace(" ", "")
        with contextlib.suppress(ValueError):
            value = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    with contextlib.suppress(ValueError, OverflowError):  # nan, inf
        if value == int(value):
            return int(value)
    return None


def _canon(cell: Cell) -> Cell:
    """Compare cells by value and type, but 5 == 5.0 and None == ""."""
    if cell is None:
        return ""
    return int(cell) if isinstance(cell, float) and cell.is_integer() else cell


def _cells(row: Sequence[Cell]) -> list[Cell]:
    """A row as compared: canonical cells without the blank tail the API leaves out."""
    cells = [_canon(c) for c in row]
    while cells and cells[-1] == "":
        cells.pop()
    return cells


def _trim(grid: list[list[Cell]]) -> list[list[Cell]]:
    """Drop trailing blank rows, like the API does, so a stale tail is not mistaken for data."""
    rows = list(grid)
    while rows and not _cells(rows[-1]):
        rows.pop()
    return rows


def _put(grid: list[list[Cell]], top: int, left: int, block: list[list[Cell]]) -> list[list[Cell]]:
    """A copy of ``grid`` with ``block`` written at (top, left), as a values write does."""
    out = [list(r) for r in grid]
    for i, cells in enumerate(block, start=top):
        out += [[] for _ in range(i + 1 - len(out))]
        out[i] += [""] * (left + len(cells) - len(out[i]))
        out[i][left : left + len(cells)] = cells
    return _trim(out)


def _input_cell(value: Any) -> Cell:
    """Extra columns as JSON-safe cells (the API takes bool, number and string)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return float(value) if as_int(value) is None else as_int(value)
    if isinstance(value, date):
        return value.isoformat()
    return value if isinstance(value, bool | int | float | str) else str(value)


def _input_date(value: Any) -> str | None:
    """A real date or ISO text: never a serial number or a guess."""
    if isinstance(value, date):
        return iso_date(value)
    with contextlib.suppress(ValueError, AttributeError):
        return datetime.fromisoformat(value.strip()).date().isoformat()
    return None


def _normalize_input(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Cell]]:
    """The caller's rows checked: ISO dates, whole numbers for the counters, no date twice."""
    out: dict[str, dict[str, Cell]] = {}
    for i, row in enumerate(rows):
        day = _input_date(row.get("date"))
        if day is None:
            raise ValueError(f"row {i}: 'date' must be an ISO date, got {row.get('date')!r}")
        if day in out:
            raise ValueError(f"row {i}: date {day} appears twice in the rows to upsert")
        out[day] = {"date": day}
        for name in INT_COLUMNS:
            value = row.get(name)
            out[day][name] = None if isinstance(value, str) else as_int(value)
            if out[day][name] is None:
                raise ValueError(f"row {i} ({day}): {name!r} must be an int, got {value!r}")
        out[day] |= {str(k): _input_cell(v) for k, v in row.items() if k not in FIXED_COLUMNS}
    return out


# The table inside a worksheet, and the merge every backend shares ------------------------------


@dataclass(frozen=True)
class TableSpot:
    """Where the table sits in its worksheet (0-based): header row, first column, width."""

    row: int = 0
    col: int = 0
    width: int = 0  # columns the table spans now; 0 for a sheet with no table yet
    headed: bool = False  # False: no header row, the fixed columns are taken by position

    def cut(self, grid: list[list[Cell]]) -> list[list[Cell]]:
        """The table's own cells: rows from the header down, only the table's columns."""
        return [list(r[self.col : self.col + self.width]) for r in grid[self.row :]]


def _names(row: Sequence[Cell]) -> list[str]:
    return ["" if c is None else str(c).strip() for c in row]


def _lower(row: Sequence[Cell]) -> list[str]:
    return [name.lower() for name in _names(row)]


def _starts_with_date(row: Sequence[Cell]) -> bool:
    """Text date in the first cell: a table at A1 whose header row was deleted."""
    return bool(row) and not isinstance(row[0], int | float) and iso_date(row[0]) is not None


def _quote_row(number: int, row: Sequence[Cell]) -> str:
    """What a row holds, for an error message: the sheet's own words, a few cells of them."""
    cells = _cells(row)
    more = ", ..." if len(cells) > _FOUND_CELLS else ""
    return f"row {number} holds {', '.join(repr(c) for c in cells[:_FOUND_CELLS])}{more}"


def locate_table(grid: list[list[Cell]], worksheet: str) -> TableSpot:
    """Find the table wherever a person moved it, or raise rather than write somewhere else.

    The header is the one row naming the four fixed columns (any order, any case); the table
    spans the run of non-blank header cells around them (hand-added columns included) and every
    row below. A sheet with no header is accepted only when its data starts at A1 with a date.
    """
    rows = _trim(grid)
    if not rows:
        return TableSpot()
    headers = [i for i, row in enumerate(rows) if set(FIXED_COLUMNS) <= set(_lower(row))]
    expected = " | ".join(FIXED_COLUMNS)
    if len(headers) > 1:
        found = "; ".join(_quote_row(i + 1, rows[i]) for i in headers[:3])
        raise SheetsLayoutError(
            f"worksheet {worksheet!r} has {len(headers)} header rows ({expected}), so which table "
            f"is the report is ambiguous: {found}. Keep one header row and delete the others"
        )
    if not headers and _starts_with_date(rows[0]):
        return TableSpot(0, 0, max(len(r) for r in rows))
    if not headers:
        first = next(i for i, row in enumerate(rows) if _cells(row))
        raise SheetsLayoutError(
            f"worksheet {worksheet!r} has no header row ({expected}); its first non-empty "
            f"{_quote_row(first + 1, rows[first])}. Restore the header row above the data, or "
            f"clear the worksheet to let the next run rebuild it"
        )
    index, names = headers[0], _names(rows[headers[0]])
    columns = []
    for name in FIXED_COLUMNS:
        where = [j for j, text in enumerate(_lower(names)) if text == name]
        if len(where) > 1:
            letters = ", ".join(rowcol_to_a1(1, j + 1)[:-1] for j in where)  # "E1" -> "E"
            raise SheetsLayoutError(
                f"worksheet {worksheet!r}: the header in row {index + 1} names {name!r} "
                f"{len(where)} times (columns {letters}), so which column holds it is ambiguous"
            )
        columns += where
    start, end = min(columns), max(columns) + 1
    while start > 0 and names[start - 1]:
        start -= 1
    while end < len(names) and names[end]:
        end += 1
    return TableSpot(index, start, end - start, headed=True)


@dataclass
class Table:
    """A worksheet's table as read: its cells, and its rows re-laid in the writer's column order
    (the fixed four first, other columns after in their old order, so hand-added ones survive)."""

    spot: TableSpot
    cells: list[list[Cell]]
    header: list[str]
    dated: dict[str, list[Cell]]  # the first row of each date; later ones are duplicates
    undated: list[list[Cell]]
    duplicates: int = 0
    blanks: int = 0


def read_table(grid: list[list[Cell]], worksheet: str) -> Table:
    """The table in a worksheet's cells, its columns matched by header name in any case."""
    grid = _trim(grid)
    spot = locate_table(grid, worksheet)
    cells = spot.cut(grid)
    names = _names(cells[0]) if spot.headed else list(FIXED_COLUMNS)
    names += [""] * (max(map(len, cells), default=0) - len(names))
    header, mapping = list(FIXED_COLUMNS), []
    for name in names:
        if name.lower() in FIXED_COLUMNS:
            mapping.append(FIXED_COLUMNS.index(name.lower()))
        else:
            mapping.append(len(header))
            header.append(name)
    table = Table(spot, cells, header, {}, [])
    for raw in cells[1 if spot.headed else 0 :]:
        if not _cells(raw):
            table.blanks += 1
            continue
        row: list[Cell] = [""] * len(header)
        for old, cell in enumerate(raw):
            row[mapping[old]] = _canon(cell)
        row[1:4] = [c if (n := as_int(c)) is None else n for c in row[1:4]]  # counters stay typed
        day = iso_date(row[0])
        if day is None:
            table.undated.append(row)
        elif day in table.dated:
            table.duplicates += 1
        else:
            table.dated[day] = [day, *row[1:]]
    return table


def rows_from_grid(
    grid: list[list[Cell]], *, worksheet: str = DEFAULT_WORKSHEET
) -> dict[str, dict[str, Cell]]:
    """Date -> {column: value}, counters as ints (None when blank), read the way the writer
    reads, so a check built on it cannot pass on a table the writer would refuse."""
    table = read_table(grid, worksheet)
    return {
        day: {
            name: None if cell == "" and name in INT_COLUMNS else cell
            for name, cell in zip(table.header[1:], row[1:], strict=True)
            if name
        }
        for day, row in table.dated.items()
    }


@dataclass
class UpsertPlan:
    """The desired table and the one contiguous block of its rows that must be rewritten;
    ``grid`` and the row indexes are relative to the table, ``table.spot`` places it."""

    table: Table
    grid: list[list[Cell]]  # header row + data rows, all as wide as the header
    first_changed: int | None  # 0-based index of the first row that differs; None: no change
    block_end: int  # exclusive end of the rows that differ; past len(grid) they are blanked
    row_numbers: dict[str, int]
    values: dict[str, list[Cell]]

    @property
    def spot(self) -> TableSpot:
        return self.table.spot

    def block(self) -> list[list[Cell]]:
        """Rows to write from ``first_changed``, blanks included so stale cells get cleared."""
        if self.first_changed is None:
            return []
        blank = [""] * len(self.grid[0])
        return [
            self.grid[i] if i < len(self.grid) else list(blank)
            for i in range(self.first_changed, self.block_end)
        ]

    def splice(self, sheet: list[list[Cell]]) -> list[list[Cell]]:
        """The whole sheet after the write: the block in the table's cells, the rest untouched."""
        if self.first_changed is None:
            return [list(r) for r in sheet]
        return _put(sheet, self.spot.row + self.first_changed, self.spot.col, self.block())


def plan_upsert(
    existing: list[list[Cell]],
    rows: Iterable[Mapping[str, Any]],
    *,
    worksheet: str = DEFAULT_WORKSHEET,
) -> UpsertPlan:
    """Merge ``rows`` into a sheet's cells; the table keeps its place in the sheet.

    The result has the fixed header, one row per date ascending (duplicates collapsed, blank rows
    dropped, undated rows kept at the bottom), the upserted dates' values replacing what was
    there, other cells of those rows kept. Only the rows from the first to the last difference
    are rewritten, so a rerun with the same values writes nothing.
    """
    incoming = _normalize_input(rows)
    table = read_table(existing, worksheet)
    names = dict.fromkeys(name for row in incoming.values() for name in row)
    header = table.header + [name for name in names if name not in table.header]
    width = len(header)
    dated = {day: row + [""] * (width - len(row)) for day, row in table.dated.items()}
    for day, values in incoming.items():
        row = dated.setdefault(day, [""] * width)
        for name, value in values.items():
            row[header.index(name)] = value
    body = [dated[day] for day in sorted(dated)]
    grid = [header, *body, *(row + [""] * (width - len(row)) for row in table.undated)]
    pairs = itertools.zip_longest(table.cells, grid, fillvalue=[])
    changed = [i for i, (old, new) in enumerate(pairs) if _cells(old) != _cells(new)]
    order = {row[0]: i for i, row in enumerate(body, start=1)}
    return UpsertPlan(
        table=table,
        grid=grid,
        first_changed=changed[0] if changed else None,
        block_end=changed[-1] + 1 if changed else 0,
        row_numbers={day: table.spot.row + order[day] + 1 for day in sorted(incoming)},
        values={day: grid[order[day]] for day in sorted(incoming)},
    )


# Backends: one grid each, read whole and written one block at a time -------------------------


class RootedHTTPClient(HTTPClient):
    """gspread's HTTP client with ``https://sheets.googleapis.com`` replaced by ``base_url``, so
    the same code talks to an emulator; empty means Google."""

    def __init__(self, auth: Any, session: requests.Session | None = None, *, base_url: str = ""):
        super().__init__(auth, session)
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, endpoint: str, *args: Any, **kwargs: Any) -> requests.Response:
        if self.base_url and endpoint.startswith(GOOGLE_API_ROOT):
            endpoint = self.base_url + endpoint[len(GOOGLE_API_ROOT) :]
        return super().request(method, endpoint, *args, **kwargs)


class _ApiSheet:
    """One worksheet over the Sheets API (Google or the emulator)."""

    def __init__(self, http: HTTPClient, spreadsheet_id: str, title: str, who: str) -> None:
        self.http, self.spreadsheet_id, self.title = http, spreadsheet_id, title
        self.who = who  # who must have access, for error messages
        self.properties: dict[str, Any] | None = None  # the worksheet's, once read

    def exists(self) -> bool:
        return self.properties is not None

    def url(self) -> str:
        gid = "" if self.properties is None else f"#gid={self.properties['sheetId']}"
        return f"https://docs.google.com/spreadsheets/d/{self.spreadsheet_id}/edit{gid}"

    def read(self) -> list[list[Cell]]:
        """The worksheet's cells, typed: numbers as numbers, a real date as its serial number
        (UNFORMATTED_VALUE, SERIAL_NUMBER), never as locale text."""
        meta = self.http.fetch_sheet_metadata(self.spreadsheet_id)
        found = [s["properties"] for s in meta.get("sheets", [])]
        self.properties = next((p for p in found if p["title"] == self.title), None)
        if self.properties is None:
            return []
        params = {"valueRenderOption": "UNFORMATTED_VALUE", "dateTimeRenderOption": "SERIAL_NUMBER"}
        name = absolute_range_name(self.title)
        return self.http.values_get(self.spreadsheet_id, name, params=params).get("values", [])

    def write(self, top: int, left: int, block: list[list[Cell]]) -> tuple[int, str]:
        """At most two calls: one batchUpdate adding or growing the worksheet, one values PUT of
        the block alone. Returns the calls made and the range written."""
        bottom, right = top + len(block), left + len(block[0])
        structural = self._structural_requests(bottom, right)
        if structural:
            reply = self.http.batch_update(self.spreadsheet_id, {"requests": structural})
            if self.properties is None:
                self.properties = reply["replies"][0]["addSheet"]["properties"]
        corners = f"{rowcol_to_a1(top + 1, left + 1)}:{rowcol_to_a1(bottom, right)}"
        written = absolute_range_name(self.title, corners)
        self.http.values_update(
            self.spreadsheet_id, written, params={"valueInputOption": "RAW"}, body={"values": block}
        )
        return 1 + bool(structural), written

    def _structural_requests(self, rows: int, cols: int) -> list[dict[str, Any]]:
        if self.properties is None:
            grid = {
                "rowCount": max(1000, rows + _GRID_HEADROOM_ROWS),
                "columnCount": max(26, cols),
                "frozenRowCount": 1,
            }
            return [{"addSheet": {"properties": {"title": self.title, "gridProperties": grid}}}]
        size, sheet_id = self.properties.get("gridProperties", {}), self.properties["sheetId"]
        short_rows = rows - size.get("rowCount", 0)
        short_cols = cols - size.get("columnCount", 0)
        grow = [("ROWS", short_rows + _GRID_HEADROOM_ROWS)] if short_rows > 0 else []
        grow += [("COLUMNS", short_cols)] if short_cols > 0 else []
        return [
            {"appendDimension": {"sheetId": sheet_id, "dimension": d, "length": n}} for d, n in grow
        ]


class _CsvSheet:
    """The local stand-in: a CSV file rewritten atomically (temp file + ``os.replace``)."""

    who = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells: list[list[Cell]] = []  # as last read: the cells outside the table survive

    def exists(self) -> bool:
        return self.path.exists()

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh, lineterminator="\n").writerows(_put(self.cells, top, left, block))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)  # gone after the replace; left by a failed write
        return 1, str(self.path)


# Settings and the Dagster resource ------------------------------------------------------------


@dataclass(frozen=True)
class SheetsSettings:
    """Where the report goes, resolved at run time from the fields and the environment."""

    mode: str  # google | emulator | local-csv
    spreadsheet_id: str
    credentials_path: str
    worksheet: str
    api_url: str  # the emulator's, or the resource's api_base_url; "" is Google
    csv_path: Path

    def describe(self) -> str:
        """One line for logs and the demo: where the report goes, no secrets."""
        if self.mode == "local-csv":
            return f"local CSV file {self.csv_path} (NOT Google Sheets)"
        where = "Google Sheets" if self.mode == "google" else f"Sheets emulator at {self.api_url}"
        return f"{where}, spreadsheet {self.spreadsheet_id}, worksheet {self.worksheet!r}"


def _mode(backend: str, spreadsheet_id: str, credentials_path: str, emulator: str) -> str:
    """The backend asked for by name, else ``csv`` in the local profile when no Google Sheets
    setting is given, else ``google``: production never falls back to a file. The emulator
    speaks Google's protocol, so it serves ``google``, which otherwise needs both settings."""
    choice = backend.lower()
    if choice not in ("", GOOGLE_BACKEND, CSV_BACKEND):
        raise SheetsConfigError(
            f"{ENV_BACKEND}={backend!r} is not a Sheets backend: use {GOOGLE_BACKEND!r} (Google "
            f"Sheets) or {CSV_BACKEND!r} (a local CSV file)"
        )
    given = spreadsheet_id or credentials_path or emulator
    if choice == CSV_BACKEND or (not choice and settings.is_local() and not given):
        return "local-csv"
    if emulator:
        return "emulator"
    pairs = ((ENV_SPREADSHEET_ID, spreadsheet_id), (ENV_CREDENTIALS, credentials_path))
    missing = [name for name, value in pairs if not value]
    if missing:
        states = " and ".join(f"{name} {settings.absent(name)}" for name in missing)
        raise SheetsConfigError(
            f"{states}: the Google Sheets report ({ENV_BACKEND}={GOOGLE_BACKEND}) needs both "
            f"{ENV_SPREADSHEET_ID} and {ENV_CREDENTIALS} (a service-account file). To write a "
            f"local CSV file instead, set {ENV_BACKEND}={CSV_BACKEND}"
        )
    return "google"


class SheetsResource(ConfigurableResource):
    """Where the daily report goes: Google Sheets, a Sheets emulator, or a local CSV file.

    An empty field falls back at run time to its variable (``ITRESUME_SHEETS_BACKEND``,
    ``ITRESUME_SHEETS_SPREADSHEET_ID``, ``ITRESUME_SHEETS_CREDENTIALS``,
    ``ITRESUME_SHEETS_WORKSHEET`` then ``daily_metrics``, ``SHEETS_EMULATOR_HOST``, and
    ``$ITRESUME_HOME/sheets`` for ``local_dir``), so ``SheetsResource()`` follows the
    environment. ``api_base_url`` replaces ``https://sheets.googleapis.com`` in google mode
    (tests point it at the emulator to run the real OAuth flow).
    """

    backend: str = ""
    spreadsheet_id: str = ""
    credentials_path: str = ""
    worksheet: str = ""
    emulator_host: str = ""
    api_base_url: str = ""
    local_dir: str = ""
    max_attempts: int = Field(default=5, ge=1)  # per API call, token fetch included
    backoff_base_s: float = 0.5  # the n-th retry waits this x 2^(n-1) s (+ jitter); the 1st: 0
    backoff_max_s: float = 30.0  # cap on one wait, Retry-After included
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    def settings(self) -> SheetsSettings:
        """Fields, else environment variables, else defaults; a bad or missing one raises,
        naming it. Resolved at each call, never at import."""
        backend = self.backend.strip() or settings.env(ENV_BACKEND)
        sheet_id = self.spreadsheet_id.strip() or settings.env(ENV_SPREADSHEET_ID)
        credentials = self.credentials_path.strip() or settings.env(ENV_CREDENTIALS)
        host = (self.emulator_host.strip() or settings.env(ENV_EMULATOR_HOST)).rstrip("/")
        mode = _mode(backend, sheet_id, credentials, host)
        worksheet = self.worksheet.strip() or settings.env(ENV_WORKSHEET, DEFAULT_WORKSHEET)
        local_dir = self.local_dir.strip()
        folder = (
            Path(local_dir).expanduser().absolute() if local_dir else settings.sheets_local_dir()
        )
        if mode == "emulator":
            sheet_id = sheet_id or EMULATOR_DEFAULT_SPREADSHEET_ID  # a demo needs no id
            host = host if host.startswith(("http://", "https://")) else f"http://{host}"
        return SheetsSettings(
            mode=mode,
            spreadsheet_id=sheet_id,
            credentials_path=credentials,
            worksheet=worksheet,
            api_url=host if mode == "emulator" else self.api_base_url,
            csv_path=folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', worksheet) or 'sheet'}.csv",
        )

    @property
    def mode(self) -> str:
        return self.settings().mode

    @property
    def csv_path(self) -> Path:
        return self.settings().csv_path

    def describe(self) -> str:
        return self.settings().describe()

    def upsert_rows(self, rows: Sequence[Mapping[str, Any]]) -> UpsertResult:
        """Upsert one row per date: update in place or insert in date order, ≤ 2 write calls.

        Read and write run under a host-wide lock per sheet: backfills materialize partitions in
        parallel processes, and the Sheets API has no transaction to stop two read-modify-writes
        from overwriting each other's rows.
        """
        cfg = self.settings()
        sheet = self._open(cfg)
        if cfg.mode == "local-csv":
            log.warning(
                "Sheets: the report is a LOCAL CSV file %s, not Google Sheets; set %s and %s to "
                "publish it",
                cfg.csv_path,
                ENV_SPREADSHEET_ID,
                ENV_CREDENTIALS,
            )
        with _host_lock(cfg.describe()), _explained_errors(cfg, sheet.who, self.max_attempts):
            plan = plan_upsert(sheet.read(), rows, worksheet=cfg.worksheet)
            existed, calls, written = sheet.exists(), 0, None
            if plan.first_changed is not None:
                top = plan.spot.row + plan.first_changed
                calls, written = sheet.write(top, plan.spot.col, plan.block())
        table = plan.table
        if table.duplicates or table.blanks or table.undated:
            log.warning(
                "Sheets: collapsed %d duplicate date row(s), dropped %d blank row(s) and kept %d "
                "row(s) without a date below the dates in %r",
                table.duplicates,
                table.blanks,
                len(table.undated),
                cfg.worksheet,
            )
        return UpsertResult(
            url=sheet.url(),
            mode=cfg.mode,
            worksheet=cfg.worksheet,
            row_numbers=plan.row_numbers,
            values=plan.values,
            write_calls=calls,
            written_range=written,
            duplicates_collapsed=table.duplicates,
            created_worksheet=calls > 0 and not existed,
        )

    def read_rows(self) -> dict[str, dict[str, Cell]]:
        """Date -> row values (counters as ints) as the sheet holds them now, for asset checks."""
        cfg = self.settings()
        sheet = self._open(cfg)
        with _explained_errors(cfg, sheet.who, self.max_attempts):
            return rows_from_grid(sheet.read(), worksheet=cfg.worksheet)

    def _open(self, cfg: SheetsSettings) -> _ApiSheet | _CsvSheet:
        if cfg.mode == "local-csv":
            return _CsvSheet(cfg.csv_path)
        credentials, who, session = None, "the emulator", self._retrying(requests.Session())
        if cfg.mode == "google":
            from google.auth.transport.requests import AuthorizedSession, Request

            credentials, who = _service_account(cfg.credentials_path)
            token_session = self._retrying(requests.Session(), statuses=())
            session = AuthorizedSession(credentials, auth_request=Request(token_session))
            session = self._retrying(session)
        factory = functools.partial(RootedHTTPClient, base_url=cfg.api_url)
        client = gspread.Client(auth=credentials, session=session, http_client=factory)
        client.set_timeout((self.connect_timeout_s, self.read_timeout_s))
        return _ApiSheet(client.http_client, cfg.spreadsheet_id, cfg.worksheet, who)

    def _retrying(
        self, session: requests.Session, statuses: Iterable[int] = RETRYABLE_STATUSES
    ) -> requests.Session:
        """`session` retrying `statuses` and broken connections, for every method: Sheets
        writes are idempotent range writes."""
        retry = http_retry(
            label="Google Sheets API",
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            statuses=frozenset(statuses),
            methods=None,
        )
        mount(session, retry)
        return session


# Errors for operators, the host lock, the service account -------------------------------------


@contextlib.contextmanager
def _explained_errors(cfg: SheetsSettings, who: str, max_attempts: int) -> Iterator[None]:
    """Operator-facing errors: a refused call says what and why (a missing or unshared
    spreadsheet names who needs access), spent retries say how many were made, and a token
    failure names the credentials file, never its content."""
    from google.auth.exceptions import RefreshError, TransportError

    try:
        yield
    except APIError as exc:
        response, status = exc.response, exc.response.status_code
        where = f"{response.request.method} {urlsplit(response.url).path}"
        reason = f"{status} {exc.error.get('status', '')}".strip()
        if status in RETRYABLE_STATUSES:
            raise _spent(f"answered {reason}", where, status, attempts_behind(response)) from exc
        message = f"Google Sheets API refused {where} with {reason}: {exc.error.get('message', '')}"
        if status == 404:
            message = (
                f"spreadsheet {cfg.spreadsheet_id!r} was not found (404): check "
                f"{ENV_SPREADSHEET_ID} and that the spreadsheet is shared with {who}"
            )
        if status in (401, 403):
            message = (
                f"access to spreadsheet {cfg.spreadsheet_id!r} was refused ({status}): share it "
                f"with {who} as an editor"
            )
        raise SheetsApiError(message, status=status) from None
    except (requests.RequestException, TransportError) as exc:
        cause = exc.__cause__ if isinstance(exc, TransportError) and exc.__cause__ else exc
        request = getattr(cause, "request", None)
        where = f"{request.method} {urlsplit(request.url).path}" if request else "a request"
        spent = bool(cause.args) and isinstance(cause.args[0], MaxRetryError)
        attempts = max_attempts if spent else 1
        raise _spent(f"failed with {type(cause).__name__}", where, None, attempts) from None
    except RefreshError as exc:
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "refused"
        raise SheetsError(
            f"could not get a Google access token with the service account in "
            f"{cfg.credentials_path} ({ENV_CREDENTIALS}): {detail}"
        ) from None


def _spent(verb: str, where: str, status: int | None, attempts: int) -> SheetsRetryError:
    return SheetsRetryError(
        f"Google Sheets API {verb} to {where} after {attempts} attempts; giving up (quota or "
        "outage: re-run the partition later)",
        status=status,
        attempts=attempts,
    )


@contextlib.contextmanager
def _host_lock(name: str) -> Iterator[None]:
    """An exclusive advisory lock per sheet, shared by every process on this host; closing the
    file releases it."""
    directory = Path(tempfile.gettempdir()) / "itresume-sheets-locks"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _service_account(path: str) -> tuple[Any, str]:
    """Credentials and the robot's e-mail from a service-account file. Errors name the path and
    never echo the content: a parser's message could quote key material."""
    from google.oauth2.service_account import Credentials

    where = f"{ENV_CREDENTIALS}={Path(path).expanduser()}"
    try:
        info = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SheetsConfigError(f"the service-account file does not exist: {where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise SheetsConfigError(f"cannot read the service-account file {where}: {reason}") from None
    except ValueError:
        raise SheetsConfigError(
            f"the service-account file is not valid JSON: {where} (expected the key file "
            "downloaded from Google Cloud IAM)"
        ) from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        kind = info.get("type") if isinstance(info, dict) else type(info).__name__
        raise SheetsConfigError(
            f"{where} is not a service-account key file (type={kind!r}, expected 'service_account')"
        )
    missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
    if missing:
        raise SheetsConfigError(f"the service-account file {where} lacks {', '.join(missing)}")
    try:
        credentials = Credentials.from_service_account_info(info, scopes=list(SCOPES))
    except Exception:
        raise SheetsConfigError(
            f"cannot load the private key from the service-account file {where}"
        ) from None
    return credentials, info["client_email"]
