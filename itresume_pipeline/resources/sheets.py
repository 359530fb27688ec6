"""The report sheet: one row per day, upserted in date order with at most two write calls.

``ITRESUME_SHEETS_BACKEND`` (``google`` or ``csv``) says where the report goes; three modes share
one merge algorithm (:func:`plan_upsert`), so they behave the same:

* ``google``: the real Sheets API through gspread, authenticated with a service-account file;
* ``emulator``: plain HTTP to ``SHEETS_EMULATOR_HOST`` (``itresume_pipeline.local.sheets_emulator``)
  with no credentials, like Google's other ``*_EMULATOR_HOST`` conventions; it speaks Google's
  protocol, so it stands in for the ``google`` backend;
* ``local-csv``: the "sheet" is ``<local_dir>/<worksheet>.csv``, loudly flagged as such. It is
  used when ``csv`` is asked for by name, or in the local profile when no Google Sheets setting is
  given; outside the local profile a missing Google setting fails the run instead, since a report
  quietly written to a file nobody reads is a silent failure.

The sheet is edited by people, so nothing about its layout is trusted: the table is wherever its
header row is (a title row above it, the table moved right), only the table's own cells are ever
written, and a header that cannot be found unambiguously stops the run instead of a guess.

gspread is driven without monkeypatching: ``gspread.Client`` is given the requests session and
the client class. The session carries urllib3's ``Retry`` (``itresume_pipeline.retrying``), the
same as the API client's: bounded, unlike gspread 6.2.1's ``BackOffHTTPClient``, which never
gives up. The token endpoint's session retries only broken connections, since google-auth
retries its 408, 429, 500, 503 and 504 answers itself.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from numbers import Integral
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gspread
import requests
from dagster import ConfigurableResource, Failure
from gspread.exceptions import APIError
from gspread.http_client import HTTPClient
from gspread.utils import absolute_range_name
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


# ============================================================================================
# Errors and results
# ============================================================================================


class SheetsError(Failure):
    """A Sheets failure with a message fit for operators: never a key, a token or a secret.

    A `Failure` without step retries: the client has already retried whatever a retry could
    fix, so a step retry would only multiply the attempts.
    """

    def __init__(self, message: str) -> None:
        Failure.__init__(self, description=message, allow_retries=False)


class SheetsConfigError(SheetsError, settings.SettingError, ValueError):
    """The sheet is configured wrongly (a missing variable, an unreadable credentials file...).

    A `SettingError`, so the run fails at once: no retry fixes a deployment's settings.
    """


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
    """What an upsert did, for the asset's metadata.

    ``row_numbers`` are 1-based sheet rows of the upserted dates after the write (row 2 when the
    header is row 1, lower when a person moved the table down); ``values`` are those rows' cells
    in ``header`` order; ``write_calls`` counts the API write calls made (0 when the sheet already
    held these values).
    """

    url: str
    mode: str
    worksheet: str
    header: list[str]
    row_numbers: dict[str, int]
    values: dict[str, list[Cell]]
    write_calls: int
    written_range: str | None = None
    duplicates_collapsed: int = 0
    created_worksheet: bool = False

    @property
    def changed(self) -> bool:
        return self.write_calls > 0


# ============================================================================================
# Pure merge logic, shared by every backend
# ============================================================================================


@dataclass(frozen=True)
class TableSpot:
    """Where the table sits in its worksheet (0-based): header row, first column, width."""

    row: int = 0
    col: int = 0
    width: int = 0  # columns the table spans now; 0 for a sheet with no table yet

    def cut(self, grid: list[list[Cell]]) -> list[list[Cell]]:
        """The table's own cells: rows from the header down, only the table's columns."""
        return [list(r[self.col : self.col + self.width]) for r in grid[self.row :]]


@dataclass
class UpsertPlan:
    """The full desired table and the one contiguous block of rows that must be rewritten.

    ``grid`` and the row indexes are relative to the table; ``spot`` places it in the sheet.
    """

    header: list[str]
    grid: list[list[Cell]]  # header row + data rows, every row len(header) wide
    first_changed: int | None  # 0-based index of the first row that differs; None: no change
    block_end: int  # exclusive end of the rows that differ; past len(grid) they are blanked
    row_numbers: dict[str, int]
    values: dict[str, list[Cell]]
    duplicates_collapsed: int = 0
    dropped_blank_rows: int = 0
    undated_rows: int = 0
    spot: TableSpot = field(default_factory=TableSpot)

    @property
    def changed(self) -> bool:
        return self.first_changed is not None

    def splice(self, sheet: list[list[Cell]]) -> list[list[Cell]]:
        """The whole sheet after the write: the block in the table's cells, the rest untouched."""
        out = [list(r) for r in sheet]
        if self.first_changed is None:
            return out
        col = self.spot.col
        for i, cells in enumerate(self.block(), start=self.spot.row + self.first_changed):
            out += [[] for _ in range(i + 1 - len(out))]
            out[i] += [""] * (col + len(cells) - len(out[i]))
            out[i][col : col + len(cells)] = cells
        return _trim(out)

    def block(self) -> list[list[Cell]]:
        """Rows to write from ``first_changed``, blanks included so stale cells get cleared."""
        if self.first_changed is None:
            return []
        blank = [""] * len(self.header)
        return [
            self.grid[i] if i < len(self.grid) else list(blank)
            for i in range(self.first_changed, self.block_end)
        ]


def iso_date(value: Any) -> str | None:
    """An ISO date string for a cell, or None.

    A date a person typed may come back as ISO text, as ``03.08.2024`` text (day first, as a
    Russian locale writes it), or as a real date, which the API returns as a serial number under
    ``UNFORMATTED_VALUE``: all three are the same day, so the upsert finds that day's row.
    """
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if 20_000 <= value < 2_958_466:  # 1954-10-03 .. 9999-12-31: smaller numbers are not dates
            return (_SHEETS_EPOCH + timedelta(days=int(value))).isoformat()
        return None
    if isinstance(value, str):
        return _text_date(value.strip())
    return None


def _text_date(text: str) -> str | None:
    """ISO text (a time after the date is ignored) or ``DD.MM.YYYY``; anything else is no date."""
    dotted = _DOTTED_DATE.fullmatch(text)
    try:
        if dotted:
            day, month, year = (int(part) for part in dotted.groups())
            return date(year, month, day).isoformat()
        return date.fromisoformat(text[:10]).isoformat() if len(text) >= 10 else None
    except ValueError:
        return None


def as_int(value: Any) -> int | None:
    """An int for a cell holding a whole number (``5``, ``5.0``, ``"1,234"``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip().replace(",", "").replace("\u00a0", "").replace(" ", "")
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        with contextlib.suppress(ValueError):
            number = float(text)
            if number.is_integer():
                return int(number)
    return None


def _canon(cell: Cell) -> Cell:
    """Compare cells by value and type, but 5 == 5.0 and None == ""."""
    if cell is None:
        return ""
    if isinstance(cell, float) and cell.is_integer():
        return int(cell)
    return cell


def _is_blank(row: Sequence[Cell]) -> bool:
    return all(_canon(c) == "" for c in row)


def _input_date(value: Any) -> str | None:
    """Dates we are given must be real dates or ISO strings: no serial numbers, no guessing."""
    if isinstance(value, date):
        return iso_date(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.strip()).date().isoformat()
    return None


def _input_int(value: Any) -> int | None:
    """Counters must be whole numbers (psycopg may hand us Decimal for numeric sums)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _input_cell(value: Any) -> Cell:
    """Extra columns: JSON-safe cell values (the API takes bool, number and string)."""
    if value is None:
        return ""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _normalize_input(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Cell]]:
    """Validate the caller's rows: ISO dates, ints for the fixed counters, no duplicate dates."""
    out: dict[str, dict[str, Cell]] = {}
    for i, row in enumerate(rows):
        day = _input_date(row.get("date"))
        if day is None:
            raise ValueError(f"row {i}: 'date' must be an ISO date, got {row.get('date')!r}")
        if day in out:
            raise ValueError(f"row {i}: date {day} appears twice in the rows to upsert")
        clean: dict[str, Cell] = {"date": day}
        for name in INT_COLUMNS:
            number = _input_int(row.get(name))
            if number is None:
                raise ValueError(f"row {i} ({day}): {name!r} must be an int, got {row.get(name)!r}")
            clean[name] = number
        for name, value in row.items():
            if name not in FIXED_COLUMNS:
                clean[str(name)] = _input_cell(value)
        out[day] = clean
    return out


def _header_name(cell: Cell) -> str:
    return "" if cell is None else str(cell).strip()


def _is_header(row: Sequence[Cell]) -> bool:
    """A row naming all four fixed columns (in any order, any case) is the table's header."""
    return set(FIXED_COLUMNS) <= {_header_name(c).lower() for c in row}


def _starts_with_date(row: Sequence[Cell]) -> bool:
    """Text date in the first cell: a table at A1 whose header row was deleted."""
    return bool(row) and not isinstance(row[0], int | float) and iso_date(row[0]) is not None


def _quote_row(number: int, row: Sequence[Cell]) -> str:
    """What a row holds, for an error message: the sheet's own words, a few cells of them."""
    cells = _trim_cells(row)
    more = ", ..." if len(cells) > _FOUND_CELLS else ""
    return f"row {number} holds {', '.join(repr(c) for c in cells[:_FOUND_CELLS])}{more}"


def _trim_cells(row: Sequence[Cell]) -> list[Cell]:
    cells = [_canon(c) for c in row]
    while cells and cells[-1] == "":
        cells.pop()
    return cells


def locate_table(grid: list[list[Cell]], worksheet: str) -> TableSpot:
    """Find the table wherever a person moved it, or raise rather than write somewhere else.

    The header is the one row naming the four fixed columns; the table spans the run of
    non-blank header cells around them (hand-added columns included) and every row below.
    A sheet with no header at all is accepted only when its data starts at A1 with a date.
    """
    rows = _trim(grid)
    if not rows:
        return TableSpot()
    headers = [i for i, row in enumerate(rows) if _is_header(row)]
    expected = " | ".join(FIXED_COLUMNS)
    if len(headers) > 1:
        found = "; ".join(_quote_row(i + 1, rows[i]) for i in headers[:3])
        raise SheetsLayoutError(
            f"worksheet {worksheet!r} has {len(headers)} header rows ({expected}), so which table "
            f"is the report is ambiguous: {found}. Keep one header row and delete the others"
        )
    if headers:
        return _header_span(rows[headers[0]], headers[0], worksheet)
    if _starts_with_date(rows[0]):
        return TableSpot(0, 0, max(len(r) for r in rows))
    first = next(i for i, row in enumerate(rows) if not _is_blank(row))
    raise SheetsLayoutError(
        f"worksheet {worksheet!r} has no header row ({expected}); its first non-empty "
        f"{_quote_row(first + 1, rows[first])}. Restore the header row above the data, or "
        f"clear the worksheet to let the next run rebuild it"
    )


def _header_span(row: Sequence[Cell], index: int, worksheet: str) -> TableSpot:
    """The columns of the header row's table: the run of named cells around the fixed four."""
    names = [_header_name(c) for c in row]
    columns: list[int] = []
    for name in FIXED_COLUMNS:
        where = [j for j, text in enumerate(names) if text.lower() == name]
        if len(where) > 1:
            raise SheetsLayoutError(
                f"worksheet {worksheet!r}: the header in row {index + 1} names {name!r} "
                f"{len(where)} times (columns {', '.join(_a1_col(j) for j in where)}), so which "
                f"column holds it is ambiguous"
            )
        columns += where
    start, end = min(columns), max(columns) + 1
    while start > 0 and names[start - 1]:
        start -= 1
    while end < len(names) and names[end]:
        end += 1
    return TableSpot(index, start, end - start)


def _header_mapping(
    existing: list[list[Cell]],
) -> tuple[list[str], dict[int, int], int]:
    """New header, old column -> new column, and the index of the first data row.

    ``existing`` is the table alone (see :func:`locate_table`). Columns are matched by
    (case-insensitive) header name; the fixed four come first in their fixed order and every
    other column follows in its old order, so hand-added columns survive. A table whose first
    row already holds a date has no header: its columns are taken positionally.
    """
    width = max((len(r) for r in existing), default=0)
    if not existing:
        old_header: list[str] = []
        data_start = 0
    elif _starts_with_date(existing[0]):
        old_header, data_start = list(FIXED_COLUMNS), 0
    else:
        old_header = [_header_name(c) for c in existing[0]]
        data_start = 1
    old_header += [""] * (width - len(old_header))
    header = list(FIXED_COLUMNS)
    mapping: dict[int, int] = {}
    for i, name in enumerate(old_header):
        fixed = name.lower()
        if fixed in FIXED_COLUMNS and FIXED_COLUMNS.index(fixed) not in mapping.values():
            mapping[i] = FIXED_COLUMNS.index(fixed)
        else:
            mapping[i] = len(header)
            header.append(name)
    return header, mapping, data_start


def _existing_records(
    existing: list[list[Cell]], header: list[str], mapping: dict[int, int], data_start: int
) -> tuple[dict[str, list[Cell]], list[list[Cell]], int, int]:
    """Existing data rows re-laid in the new header order, keyed by date (first one wins)."""
    date_col = next((old for old, new in mapping.items() if new == 0), None)
    dated: dict[str, list[Cell]] = {}
    undated: list[list[Cell]] = []
    duplicates = blanks = 0
    for raw in existing[data_start:]:
        if _is_blank(raw):
            blanks += 1
            continue
        row: list[Cell] = [""] * len(header)
        for old, cell in enumerate(raw):
            row[mapping[old]] = _canon(cell)
        for name in INT_COLUMNS:  # keep counters numeric when a row only moves
            col = FIXED_COLUMNS.index(name)
            number = as_int(row[col])
            row[col] = row[col] if number is None else number
        day = iso_date(raw[date_col]) if date_col is not None and date_col < len(raw) else None
        if day is None:
            undated.append(row)
        elif day in dated:
            duplicates += 1
        else:
            row[0] = day
            dated[day] = row
    return dated, undated, duplicates, blanks


def plan_upsert(
    existing: list[list[Cell]],
    rows: Iterable[Mapping[str, Any]],
    *,
    worksheet: str = DEFAULT_WORKSHEET,
) -> UpsertPlan:
    """Merge ``rows`` into a sheet's current cells.

    The table keeps its place in the sheet. The result has the fixed header, one row per date in
    ascending order (duplicates collapsed, blank rows dropped, rows without a date kept at the
    bottom), and the upserted dates' values replacing whatever was there, extra cells of those
    rows kept. Only the rows between the first and the last difference are rewritten, so a re-run
    with the same values writes nothing.
    """
    incoming = _normalize_input(rows)
    spot = locate_table(existing, worksheet)
    table = spot.cut(_trim(existing))
    header, mapping, data_start = _header_mapping(table)
    for row in incoming.values():
        for name in row:
            if name not in header:
                header.append(name)
    dated, undated, duplicates, blanks = _existing_records(table, header, mapping, data_start)
    for day, values in incoming.items():
        row = dated.get(day, [""] * len(header))
        row += [""] * (len(header) - len(row))
        for name, value in values.items():
            row[header.index(name)] = value
        dated[day] = row
    width = len(header)
    body = [dated[d] + [""] * (width - len(dated[d])) for d in sorted(dated)]
    body += [r + [""] * (width - len(r)) for r in undated]
    grid = [list(header), *body]
    first, last = _changed_span(table, grid)
    order = {r[0]: i for i, r in enumerate(grid) if i > 0}
    return UpsertPlan(
        header=header,
        grid=grid,
        first_changed=first,
        block_end=last,
        row_numbers={d: spot.row + order[d] + 1 for d in sorted(incoming)},
        values={d: grid[order[d]] for d in sorted(incoming)},
        duplicates_collapsed=duplicates,
        dropped_blank_rows=blanks,
        undated_rows=len(undated),
        spot=spot,
    )


def _changed_span(old: list[list[Cell]], new: list[list[Cell]]) -> tuple[int | None, int]:
    """[first, last) row indexes where the sheet differs from the plan; (None, 0) when equal."""
    changed = [i for i in range(max(len(old), len(new))) if not _same_row(old, new, i)]
    return (changed[0], changed[-1] + 1) if changed else (None, 0)


def _same_row(old: list[list[Cell]], new: list[list[Cell]], i: int) -> bool:
    a = old[i] if i < len(old) else []
    b = new[i] if i < len(new) else []
    width = max(len(a), len(b))
    return [_canon(c) for c in a] + [""] * (width - len(a)) == [_canon(c) for c in b] + [""] * (
        width - len(b)
    )


def _trim(grid: list[list[Cell]]) -> list[list[Cell]]:
    """Drop trailing blank rows, like the API does, so a stale tail is not mistaken for data."""
    rows = list(grid)
    while rows and _is_blank(rows[-1]):
        rows.pop()
    return rows


def rows_from_grid(
    grid: list[list[Cell]], *, worksheet: str = DEFAULT_WORKSHEET
) -> dict[str, dict[str, Cell]]:
    """Date -> {column: value} for a sheet's cells; counters as ints (None when blank).

    The table is located as the writer locates it, so a sheet the writer would refuse is refused
    here too, and a check built on this cannot pass on a table it did not find.
    """
    table = locate_table(grid, worksheet).cut(_trim(grid))
    header, mapping, data_start = _header_mapping(table)
    dated, _, _, _ = _existing_records(table, header, mapping, data_start)
    out: dict[str, dict[str, Cell]] = {}
    for day, row in dated.items():
        values: dict[str, Cell] = {}
        for i, name in enumerate(header[1:], start=1):
            if not name:
                continue
            cell = row[i] if i < len(row) else ""
            values[name] = (None if cell == "" else cell) if name in INT_COLUMNS else cell
        out[day] = values
    return out


def _a1_col(index: int) -> str:
    out, n = "", index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(65 + rem) + out
    return out


# ============================================================================================
# gspread's HTTP client, pointed at another API root
# ============================================================================================


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


# ============================================================================================
# Backends
# ============================================================================================


@dataclass(frozen=True)
class _WriteOutcome:
    url: str
    write_calls: int
    written_range: str | None
    created: bool


class _ApiSheet:
    """One worksheet over the Sheets API (real Google or the emulator)."""

    def __init__(self, http: HTTPClient, spreadsheet_id: str, title: str, who: str) -> None:
        self.http = http
        self.spreadsheet_id = spreadsheet_id
        self.title = title
        self.who = who  # who must have access, for error messages
        self.properties: dict[str, Any] | None = None

    def url(self) -> str:
        gid = "" if self.properties is None else f"#gid={self.properties['sheetId']}"
        return f"https://docs.google.com/spreadsheets/d/{self.spreadsheet_id}/edit{gid}"

    def read(self) -> list[list[Cell]]:
        """Locate the worksheet, then read its cells once, typed: numbers as numbers and a real
        date as its serial number (UNFORMATTED_VALUE, SERIAL_NUMBER), not as locale text."""
        meta = self._metadata()
        self.properties = next(
            (
                s["properties"]
                for s in meta.get("sheets", [])
                if s["properties"]["title"] == self.title
            ),
            None,
        )
        if self.properties is None:
            return []
        answer = self.http.values_get(
            self.spreadsheet_id,
            absolute_range_name(self.title),
            params={
                "valueRenderOption": "UNFORMATTED_VALUE",
                "dateTimeRenderOption": "SERIAL_NUMBER",
                "majorDimension": "ROWS",
            },
        )
        return answer.get("values", [])

    def write(self, plan: UpsertPlan) -> _WriteOutcome:
        """At most two calls: one structural batchUpdate (add or grow the sheet), one values PUT
        confined to the table's own columns and rows."""
        if not plan.changed:
            return _WriteOutcome(self.url(), 0, None, False)
        assert plan.first_changed is not None
        spot = plan.spot
        rows_needed, cols_needed = spot.row + plan.block_end, spot.col + len(plan.header)
        calls, created = 0, self.properties is None
        structural = self._structural_requests(rows_needed, cols_needed)
        if structural:
            reply = self.http.batch_update(self.spreadsheet_id, {"requests": structural})
            calls += 1
            if created:
                self.properties = reply["replies"][0]["addSheet"]["properties"]
        block = plan.block()
        start = spot.row + plan.first_changed + 1
        a1 = f"{_a1_col(spot.col)}{start}:{_a1_col(cols_needed - 1)}{start + len(block) - 1}"
        self.http.values_update(
            self.spreadsheet_id,
            absolute_range_name(self.title, a1),
            params={"valueInputOption": "RAW"},
            body={"values": block, "majorDimension": "ROWS"},
        )
        calls += 1
        return _WriteOutcome(self.url(), calls, absolute_range_name(self.title, a1), created)

    def _structural_requests(self, rows: int, cols: int) -> list[dict[str, Any]]:
        if self.properties is None:
            props = {
                "title": self.title,
                "gridProperties": {
                    "rowCount": max(1000, rows + _GRID_HEADROOM_ROWS),
                    "columnCount": max(26, cols),
                    "frozenRowCount": 1,
                },
            }
            return [{"addSheet": {"properties": props}}]
        grid = self.properties.get("gridProperties", {})
        sheet_id = self.properties["sheetId"]
        out = []
        if rows > grid.get("rowCount", 0):
            grow = rows - grid.get("rowCount", 0) + _GRID_HEADROOM_ROWS
            out.append(
                {"appendDimension": {"sheetId": sheet_id, "dimension": "ROWS", "length": grow}}
            )
        if cols > grid.get("columnCount", 0):
            grow = cols - grid.get("columnCount", 0)
            out.append(
                {"appendDimension": {"sheetId": sheet_id, "dimension": "COLUMNS", "length": grow}}
            )
        return out

    def _metadata(self) -> dict[str, Any]:
        try:
            return self.http.fetch_sheet_metadata(self.spreadsheet_id)
        except APIError as exc:
            status = exc.response.status_code
            if status == 404:
                raise SheetsError(
                    f"spreadsheet {self.spreadsheet_id!r} was not found (404): check "
                    f"{ENV_SPREADSHEET_ID} and that the spreadsheet is shared with {self.who}"
                ) from None
            if status in (401, 403):
                raise SheetsError(
                    f"access to spreadsheet {self.spreadsheet_id!r} was refused ({status}): "
                    f"share it with {self.who} as an editor"
                ) from None
            raise


class _CsvSheet:
    """The local stand-in: a CSV file rewritten atomically (temp file + ``os.replace``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells: list[list[Cell]] = []  # as last read: the cells outside the table survive

    def url(self) -> str:
        return self.path.resolve().as_uri()

    def read(self) -> list[list[Cell]]:
        if not self.path.exists():
            self.cells = []
        else:
            with self.path.open(newline="", encoding="utf-8-sig") as fh:  # Excel adds a BOM
                self.cells = [[_csv_cell(c) for c in row] for row in csv.reader(fh)]
        return [list(r) for r in self.cells]

    def write(self, plan: UpsertPlan) -> _WriteOutcome:
        if not plan.changed:
            return _WriteOutcome(self.url(), 0, None, False)
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh, lineterminator="\n").writerows(plan.splice(self.cells))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return _WriteOutcome(self.url(), 1, str(self.path), created)


def _csv_cell(text: str) -> Cell:
    """CSV has no types: whole numbers read back as ints so comparisons match the API path."""
    return int(text) if re.fullmatch(r"-?\d+", text) else text


# ============================================================================================
# The Dagster resource
# ============================================================================================


@dataclass(frozen=True)
class SheetsSettings:
    """The resource's fields with empty ones filled from the environment, read at run time."""

    backend: str  # as configured; "" means the profile's default
    spreadsheet_id: str
    credentials_path: str
    worksheet: str
    emulator_host: str
    local_dir: Path

    @property
    def mode(self) -> str:
        """``google`` | ``emulator`` | ``local-csv``; a bad or missing setting raises, naming it.

        The emulator speaks Google's protocol, so it serves the ``google`` backend.
        """
        if self.chosen_backend() == CSV_BACKEND:
            return "local-csv"
        if self.emulator_host:
            return "emulator"
        self._require_google_settings()
        return "google"

    def chosen_backend(self) -> str:
        """The backend asked for by name, else ``csv`` in the local profile when no Google
        Sheets setting is given, else ``google``: production never falls back to a file."""
        if self.backend:
            choice = self.backend.lower()
            if choice not in (GOOGLE_BACKEND, CSV_BACKEND):
                raise SheetsConfigError(
                    f"{ENV_BACKEND}={self.backend!r} is not a Sheets backend: use "
                    f"{GOOGLE_BACKEND!r} (Google Sheets) or {CSV_BACKEND!r} (a local CSV file)"
                )
            return choice
        given = self.spreadsheet_id or self.credentials_path or self.emulator_host
        return CSV_BACKEND if settings.is_local() and not given else GOOGLE_BACKEND

    def _require_google_settings(self) -> None:
        pairs = (
            (ENV_SPREADSHEET_ID, self.spreadsheet_id),
            (ENV_CREDENTIALS, self.credentials_path),
        )
        missing = [name for name, value in pairs if not value]
        if not missing:
            return
        states = " and ".join(
            f"{name} {'is set but empty' if name in os.environ else 'is not set'}"
            for name in missing
        )
        why = ""
        if not self.backend:
            why = (
                ", chosen because a Google Sheets setting is given"
                if settings.is_local()
                else ", the default outside the local profile"
            )
        raise SheetsConfigError(
            f"{states}: the Google Sheets report ({ENV_BACKEND}={GOOGLE_BACKEND}{why}) needs "
            f"both {ENV_SPREADSHEET_ID} and {ENV_CREDENTIALS} (a service-account file). "
            f"To write a local CSV file instead, set {ENV_BACKEND}={CSV_BACKEND}"
        )

    @property
    def csv_path(self) -> Path:
        return self.local_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', self.worksheet) or 'sheet'}.csv"

    @property
    def emulator_url(self) -> str:
        host = self.emulator_host.rstrip("/")
        return host if host.startswith(("http://", "https://")) else f"http://{host}"

    @property
    def api_spreadsheet_id(self) -> str:
        """The id used over the API; the emulator gets a fixed default so a demo needs no id."""
        if self.mode == "emulator":
            return self.spreadsheet_id or EMULATOR_DEFAULT_SPREADSHEET_ID
        return self.spreadsheet_id

    def lock_name(self) -> str:
        if self.mode == "local-csv":
            return f"csv:{self.csv_path.resolve()}"
        where = self.emulator_url if self.mode == "emulator" else "google"
        return f"{where}:{self.api_spreadsheet_id}:{self.worksheet}"


class SheetsResource(ConfigurableResource):
    """Where the daily report goes: Google Sheets, a Sheets emulator, or a local CSV file.

    Like the other resources, an empty field falls back to its environment variable at run time
    (``ITRESUME_SHEETS_BACKEND``, ``ITRESUME_SHEETS_SPREADSHEET_ID``,
    ``ITRESUME_SHEETS_CREDENTIALS``, ``ITRESUME_SHEETS_WORKSHEET`` then ``daily_metrics``,
    ``SHEETS_EMULATOR_HOST``, and ``$ITRESUME_HOME/sheets`` for ``local_dir``), so
    ``SheetsResource()`` follows the environment; the mode is chosen as the module docstring
    says. ``api_base_url`` replaces ``https://sheets.googleapis.com`` in google mode (tests point
    it at the emulator to run the real OAuth flow; empty means real Google).
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

    # configuration ---------------------------------------------------------------------------
    def settings(self) -> SheetsSettings:
        """Fields, else environment variables, else defaults; resolved now, not at import."""
        local_dir = self.local_dir.strip()
        return SheetsSettings(
            backend=self.backend.strip() or settings.env(ENV_BACKEND),
            spreadsheet_id=self.spreadsheet_id.strip() or settings.env(ENV_SPREADSHEET_ID),
            credentials_path=self.credentials_path.strip() or settings.env(ENV_CREDENTIALS),
            worksheet=self.worksheet.strip() or settings.env(ENV_WORKSHEET, DEFAULT_WORKSHEET),
            emulator_host=self.emulator_host.strip() or settings.env(ENV_EMULATOR_HOST),
            local_dir=(
                Path(local_dir).expanduser().absolute()
                if local_dir
                else settings.sheets_local_dir()
            ),
        )

    @property
    def mode(self) -> str:
        """``google`` | ``emulator`` | ``local-csv``; a bad or missing setting raises, naming it."""
        return self.settings().mode

    @property
    def csv_path(self) -> Path:
        """Where the local CSV 'sheet' lives in ``local-csv`` mode."""
        return self.settings().csv_path

    def describe(self) -> str:
        """One line for logs and the demo: where the report goes, no secrets."""
        cfg = self.settings()
        if cfg.mode == "local-csv":
            return f"local CSV file {cfg.csv_path} (NOT Google Sheets)"
        where = (
            f"Sheets emulator at {cfg.emulator_url}" if cfg.mode == "emulator" else "Google Sheets"
        )
        return f"{where}, spreadsheet {cfg.api_spreadsheet_id}, worksheet {cfg.worksheet!r}"

    # public API ------------------------------------------------------------------------------
    def upsert_rows(self, rows: Sequence[Mapping[str, Any]]) -> UpsertResult:
        """Upsert one row per date: update in place or insert in date order, ≤ 2 write calls.

        Read and write run under a host-wide lock per sheet: backfills materialize partitions in
        parallel processes, and the Sheets API has no transaction to stop two read-modify-writes
        from overwriting each other's rows.
        """
        cfg = self.settings()
        sheet = self._open(cfg)
        with _host_lock(cfg.lock_name()), _explained_errors(cfg, self.max_attempts):
            plan = plan_upsert(sheet.read(), rows, worksheet=cfg.worksheet)
            outcome = sheet.write(plan)
        _log_outcome(cfg, plan, outcome)
        return UpsertResult(
            url=outcome.url,
            mode=cfg.mode,
            worksheet=cfg.worksheet,
            header=list(plan.header),
            row_numbers=dict(plan.row_numbers),
            values={d: list(v) for d, v in plan.values.items()},
            write_calls=outcome.write_calls,
            written_range=outcome.written_range,
            duplicates_collapsed=plan.duplicates_collapsed,
            created_worksheet=outcome.created,
        )

    def read_rows(self) -> dict[str, dict[str, Cell]]:
        """Date -> row values (counters as ints) as the sheet holds them now, for asset checks."""
        cfg = self.settings()
        sheet = self._open(cfg)
        with _explained_errors(cfg, self.max_attempts):
            return rows_from_grid(sheet.read(), worksheet=cfg.worksheet)

    # internals -------------------------------------------------------------------------------
    def _open(self, cfg: SheetsSettings) -> _ApiSheet | _CsvSheet:
        mode = cfg.mode
        if mode == "local-csv":
            log.warning(
                "Sheets: the report is a LOCAL CSV file %s, not Google Sheets (%s)",
                cfg.csv_path,
                f"{ENV_BACKEND}={CSV_BACKEND}"
                if cfg.backend
                else "local profile, no Google Sheets settings",
            )
            return _CsvSheet(cfg.csv_path)
        if mode == "emulator":
            http = self._http_client(None, self._session(), base=cfg.emulator_url)
            return _ApiSheet(http, cfg.api_spreadsheet_id, cfg.worksheet, "the emulator")
        from google.auth.transport.requests import AuthorizedSession, Request

        info = load_service_account(cfg.credentials_path)
        credentials = _service_account_credentials(info, cfg.credentials_path)
        token_session = self._session(statuses=())
        session = AuthorizedSession(credentials, auth_request=Request(token_session))
        http = self._http_client(credentials, self._session(session), base=self.api_base_url)
        return _ApiSheet(http, cfg.api_spreadsheet_id, cfg.worksheet, info["client_email"])

    def _session(
        self,
        session: requests.Session | None = None,
        statuses: Iterable[int] = RETRYABLE_STATUSES,
    ) -> requests.Session:
        """`session` (a new one by default) retrying `statuses` and broken connections, for
        every method: Sheets writes are idempotent range writes."""
        session = session or requests.Session()
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

    def _http_client(self, auth: Any, session: requests.Session, base: str) -> HTTPClient:
        factory = functools.partial(RootedHTTPClient, base_url=base)
        client = gspread.Client(auth=auth, session=session, http_client=factory)
        client.set_timeout((self.connect_timeout_s, self.read_timeout_s))
        return client.http_client


@contextlib.contextmanager
def _explained_errors(cfg: SheetsSettings, max_attempts: int) -> Iterator[None]:
    """Operator-facing errors: a refused call says what and why, one whose retries are spent
    says how many were made, and a token failure names the credentials file, never its
    content."""
    from google.auth.exceptions import RefreshError, TransportError

    try:
        yield
    except APIError as exc:
        response = exc.response
        status = response.status_code
        where = f"{response.request.method} {urlsplit(response.url).path}"
        reason = f"{status} {exc.error.get('status', '')}".strip()
        if status in RETRYABLE_STATUSES:
            raise _spent(f"answered {reason}", where, status, attempts_behind(response)) from exc
        raise SheetsApiError(
            f"Google Sheets API refused {where} with {reason}: {exc.error.get('message', '')}",
            status=status,
        ) from exc
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


def _log_outcome(cfg: SheetsSettings, plan: UpsertPlan, outcome: _WriteOutcome) -> None:
    if plan.duplicates_collapsed or plan.dropped_blank_rows:
        log.warning(
            "Sheets: collapsed %d duplicate date row(s) and dropped %d blank row(s) in %r",
            plan.duplicates_collapsed,
            plan.dropped_blank_rows,
            cfg.worksheet,
        )
    if plan.undated_rows:
        log.warning(
            "Sheets: %d row(s) in %r have no date in the date column; kept them below the dates",
            plan.undated_rows,
            cfg.worksheet,
        )
    log.info(
        "Sheets (%s): upserted %s into %s with %d write call(s)%s",
        cfg.mode,
        ", ".join(f"{d} (row {n})" for d, n in plan.row_numbers.items()) or "nothing",
        outcome.url,
        outcome.write_calls,
        "" if outcome.written_range is None else f", rewrote {outcome.written_range}",
    )


@contextlib.contextmanager
def _host_lock(name: str) -> Iterator[None]:
    """An exclusive advisory lock shared by every process on this host (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: rely on a Dagster concurrency pool instead
        fcntl = None  # type: ignore[assignment]
    if fcntl is None:
        yield
        return
    directory = Path(tempfile.gettempdir()) / "itresume-sheets-locks"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_service_account(path: str) -> dict[str, Any]:
    """Read a service-account JSON file; errors name the path and never echo its content."""
    file = Path(path.strip()).expanduser()
    where = f"{ENV_CREDENTIALS}={file}"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SheetsConfigError(f"the service-account file does not exist: {where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise SheetsConfigError(f"cannot read the service-account file {where}: {reason}") from None
    try:
        info = json.loads(text)
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
    return info


def _service_account_credentials(info: Mapping[str, Any], path: str) -> Any:
    from google.oauth2.service_account import Credentials

    try:
        return Credentials.from_service_account_info(dict(info), scopes=list(SCOPES))
    except Exception as exc:  # the parser's message could quote key material: keep only its type
        raise SheetsConfigError(
            f"cannot load the private key from the service-account file "
            f"{ENV_CREDENTIALS}={path} ({type(exc).__name__})"
        ) from None
