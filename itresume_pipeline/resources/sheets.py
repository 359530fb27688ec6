"""The report sheet: one row per day, upserted in date order with at most two write calls.
People edit it, so the table is wherever its header row is and only its own cells are written."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from dagster import ConfigurableResource, Failure
from filelock import FileLock
from google.auth.exceptions import TransportError
from google.auth.transport.requests import AuthorizedSession, Request
from google.oauth2.service_account import Credentials
from gspread.exceptions import APIError
from gspread.http_client import HTTPClient
from gspread.utils import absolute_range_name, rowcol_to_a1
from pydantic import Field
from urllib3.exceptions import MaxRetryError

from itresume_pipeline import settings
from itresume_pipeline.retrying import attempts_behind, http_retry, mount

if TYPE_CHECKING:
    from itresume_pipeline.local.csv_sheet import CsvSheet

log = logging.getLogger(__name__)

Cell = Any  # str | int | float | bool, "" for an empty cell (what the Sheets API round-trips)
Grid = list[list[Cell]]

FIXED_COLUMNS = ("date", "attempts", "successful_attempts", "unique_users")
BACKEND_VAR = "ITRESUME_SHEETS_BACKEND"
SPREADSHEET_ID_VAR = "ITRESUME_SHEETS_SPREADSHEET_ID"
CREDENTIALS_VAR = "ITRESUME_SHEETS_CREDENTIALS"
WORKSHEET_VAR = "ITRESUME_SHEETS_WORKSHEET"
EMULATOR_HOST_VAR = "SHEETS_EMULATOR_HOST"
DEFAULT_WORKSHEET = "daily_metrics"
GOOGLE_API_ROOT = "https://sheets.googleapis.com"
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_HEADROOM_ROWS = 500  # grow the grid in big steps so daily runs rarely pay a resize call


class SheetsError(Failure):
    """A Sheets failure fit for operators, without step retries: the client already retried."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        Failure.__init__(self, description=message, allow_retries=False)
        self.status, self.attempts = status, attempts


class SheetsLayoutError(SheetsError):
    """The worksheet's table cannot be located unambiguously, so nothing is written to it."""


class SheetsConfigError(SheetsError, settings.SettingError):
    """The sheet is configured wrongly: no retry fixes a setting."""


@dataclass(frozen=True)
class UpsertResult:
    """What an upsert did; ``row_numbers`` are the dates' 1-based sheet rows after the write."""

    url: str
    mode: str  # google | emulator | local-csv
    row_numbers: dict[str, int]
    values: dict[str, list[Cell]]
    write_calls: int  # 0 when the sheet already held the rows
    written_range: str | None
    duplicates_collapsed: int


def iso_date(value: Any) -> str | None:
    """The ISO date in ISO or day-first ``03.08.2024`` text, or in a serial number; else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 20_000 <= value < 2_958_466:  # 1954-10-03 .. 9999-12-31: smaller are not dates
            return None
        return (date(1899, 12, 30) + timedelta(days=int(value))).isoformat()  # serial day 0
    text = value.strip() if isinstance(value, str) else ""
    dotted = re.fullmatch(r"(\d{1,2})\.(\d{1,2})\.(\d{4})", text)
    with contextlib.suppress(ValueError):
        if dotted:
            return date(*map(int, reversed(dotted.groups()))).isoformat()
        return date.fromisoformat(text[:10]).isoformat() if len(text) >= 10 else None
    return None


def _cells(row: Sequence[Cell]) -> list[Cell]:
    """A row as compared: 5 == 5.0, None == "", no blank tail (the API leaves it out)."""
    cells = [
        "" if c is None else int(c) if isinstance(c, float) and c.is_integer() else c for c in row
    ]
    while cells and cells[-1] == "":
        cells.pop()
    return cells


def _trim(grid: Grid) -> Grid:
    """Drop trailing blank rows, like the API does, so a stale tail is not mistaken for data."""
    return grid[: max((i + 1 for i, row in enumerate(grid) if _cells(row)), default=0)]


def apply_block(grid: Grid, top: int, left: int, block: Grid) -> Grid:
    """A copy of ``grid`` with ``block`` written at (top, left), as a values write does."""
    out = [list(r) for r in grid]
    for i, cells in enumerate(block, start=top):
        out += [[] for _ in range(i + 1 - len(out))]
        out[i] += [""] * (left + len(cells) - len(out[i]))
        out[i][left : left + len(cells)] = cells
    return _trim(out)


def _quote_row(number: int, row: Sequence[Cell]) -> str:
    """What a row holds, for an error message: the sheet's own words, a few cells of them."""
    cells = _cells(row)
    return f"row {number} holds {', '.join(map(repr, cells[:6]))}{', ...' if cells[6:] else ''}"


@dataclass
class Table:
    """A table as read, re-laid with the fixed four columns first and hand-added ones after."""

    row: int  # the header's row and the table's first column in the worksheet, 0-based
    col: int
    cells: Grid
    header: list[str]
    dated: dict[str, list[Cell]] = field(default_factory=dict)  # a date's first row only
    undated: Grid = field(default_factory=list)
    duplicates: int = 0
    blanks: int = 0


def read_table(grid: Grid, worksheet: str) -> Table:
    """The table under the one row naming the fixed columns, else data from A1; never a guess."""
    grid = _trim(grid)
    texts = [["" if c is None else str(c).strip() for c in row] for row in grid]
    lowered = [[text.lower() for text in row] for row in texts]
    headers = [i for i, names in enumerate(lowered) if set(FIXED_COLUMNS) <= set(names)]
    where = f"worksheet {worksheet!r}"
    if len(headers) > 1:
        found = "; ".join(_quote_row(i + 1, grid[i]) for i in headers[:3])
        raise SheetsLayoutError(
            f"{where} has {len(headers)} header rows, so which table is the report is "
            f"ambiguous: {found}. Keep one header row and delete the others"
        )
    top, start, end = 0, 0, max(map(len, grid), default=0)
    if headers:
        top, columns, full = headers[0], [], texts[headers[0]]
        for name in FIXED_COLUMNS:
            found = [j for j, text in enumerate(lowered[top]) if text == name]
            if len(found) > 1:
                letters = ", ".join(rowcol_to_a1(1, j + 1)[:-1] for j in found)  # "E1" -> "E"
                raise SheetsLayoutError(
                    f"{where}: the header in row {top + 1} names {name!r} {len(found)} times "
                    f"(columns {letters}), so which column holds it is ambiguous"
                )
            columns += found
        start = max((j + 1 for j in range(min(columns)) if not full[j]), default=0)
        end = next((j for j in range(max(columns), len(full)) if not full[j]), len(full))
    elif grid and not (
        grid[0] and not isinstance(grid[0][0], int | float) and iso_date(grid[0][0])
    ):
        index = next(i for i, row in enumerate(grid) if _cells(row))
        raise SheetsLayoutError(
            f"{where} has no header row ({' | '.join(FIXED_COLUMNS)}); its first non-empty "
            f"{_quote_row(index + 1, grid[index])}. Restore the header row above the data, or "
            "clear the worksheet to let the next run rebuild it"
        )
    cells = [list(r[start:end]) for r in grid[top:]]
    names = full[start:end] if headers else list(FIXED_COLUMNS)  # no header: A1 holds a date
    names += [""] * (max(map(len, cells), default=0) - len(names))
    lower = [n.lower() for n in names]
    order = [lower.index(n) for n in FIXED_COLUMNS]  # the fixed four first, the others after
    order += [j for j, n in enumerate(lower) if n not in FIXED_COLUMNS]
    table = Table(top, start, cells, [*FIXED_COLUMNS, *(names[j] for j in order[4:])])
    for raw in map(_cells, cells[1 if headers else 0 :]):
        if not raw:
            table.blanks += 1
            continue
        row = [raw[j] if j < len(raw) else "" for j in order]
        day = iso_date(row[0])
        if day is None:
            table.undated.append(row)
        elif day in table.dated:
            table.duplicates += 1
        else:
            table.dated[day] = [day, *row[1:]]
    return table


@dataclass(frozen=True)
class UpsertPlan:
    """The desired table, and the one block of rows to write to get there."""

    table: Table
    grid: Grid  # header row + data rows, all as wide as the header
    top: int | None  # the block's first sheet row (0-based); None: the sheet is up to date
    block: Grid  # the rows that differ, blanks included so stale cells get cleared
    row_numbers: dict[str, int]  # the upserted dates' 1-based sheet rows after the write
    values: dict[str, list[Cell]]


def plan_upsert(
    existing: Grid, rows: Iterable[Mapping[str, Any]], *, worksheet: str = DEFAULT_WORKSHEET
) -> UpsertPlan:
    """One row per date ascending, undated rows below; only the rows from the first to the last
    difference are rewritten, so a rerun writes nothing."""
    incoming: dict[str, dict[str, Cell]] = {}  # the caller's rows, checked
    for i, row in enumerate(rows):
        given, day = row.get("date"), None
        with contextlib.suppress(ValueError, AttributeError):  # a date or ISO text, not a number
            text = given.isoformat() if isinstance(given, date) else given.strip()
            day = datetime.fromisoformat(text).date().isoformat()
        if day is None:
            raise ValueError(f"row {i}: 'date' must be an ISO date, got {given!r}")
        if day in incoming:
            raise ValueError(f"row {i}: date {day} appears twice in the rows to upsert")
        incoming[day] = {"date": day}
        for name in FIXED_COLUMNS[1:]:  # whole numbers: 5, 5.0 or Decimal(5), never text
            value = row.get(name)
            number = isinstance(value, int | float | Decimal) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value != int(value):
                raise ValueError(f"row {i} ({day}): {name!r} must be an int, got {value!r}")
            incoming[day][name] = int(value)
        incoming[day] |= {str(k): v for k, v in row.items() if k not in FIXED_COLUMNS}
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
    span = range(changed[0], changed[-1] + 1) if changed else range(0)
    order = {row[0]: i for i, row in enumerate(body, start=1)}
    return UpsertPlan(
        table=table,
        grid=grid,
        top=table.row + changed[0] if changed else None,
        block=[grid[i] if i < len(grid) else [""] * width for i in span],
        row_numbers={day: table.row + order[day] + 1 for day in sorted(incoming)},
        values={day: grid[order[day]] for day in sorted(incoming)},
    )


class _ApiSheet(HTTPClient):
    """One worksheet over gspread's HTTP client, aimed at ``base_url`` (an emulator, or Google)."""

    def __init__(self, session: requests.Session, base_url: str, sheets: SheetsResource, who: str):
        super().__init__(None, session)  # no credentials: the session authenticates
        self.base_url, self.sheets, self.who = base_url.rstrip("/"), sheets, who
        self.spreadsheet_id, self.title = sheets.spreadsheet_id, sheets.worksheet
        host = sheets.emulator_host
        self.mode = "emulator" if host else "google"
        where = f"Sheets emulator at {host}" if host else "Google Sheets"
        self.where = f"{where}, spreadsheet {self.spreadsheet_id}, worksheet {self.title!r}"
        self.properties: dict[str, Any] | None = None  # the worksheet's, once read
        self.set_timeout((sheets.connect_timeout_s, sheets.read_timeout_s))

    def url(self) -> str:
        gid = "" if self.properties is None else f"#gid={self.properties['sheetId']}"
        return f"https://docs.google.com/spreadsheets/d/{self.spreadsheet_id}/edit{gid}"

    def request(self, method: str, endpoint: str, *args: Any, **kwargs: Any) -> requests.Response:
        """A refused call says why (401/403/404 name who needs access), spent retries how many."""
        try:
            url = endpoint.replace(GOOGLE_API_ROOT, self.base_url, 1)
            return super().request(method, url, *args, **kwargs)
        except APIError as exc:
            status, request = exc.response.status_code, exc.response.request
            reason = f"{status} {exc.error.get('status', '')}".strip()
            verb, tail, attempts = f"answered {reason} to", "", attempts_behind(exc.response)
            if status not in RETRYABLE_STATUSES:
                detail = exc.error.get("message", "")
                if status in (401, 403, 404):
                    detail = (
                        f"spreadsheet {self.spreadsheet_id!r} "
                        f"{'was not found' if status == 404 else 'refused access'}: check "
                        f"{SPREADSHEET_ID_VAR}, and share it with {self.who} as an editor"
                    )
                verb, tail = "refused", f" with {reason}: {detail}"
        except (requests.RequestException, TransportError) as exc:
            cause = exc.__cause__ or exc  # google-auth wraps the requests error
            request, status, tail = getattr(cause, "request", None), None, ""
            verb, attempts = f"failed with {type(cause).__name__} to", 1
            if cause.args and isinstance(cause.args[0], MaxRetryError):
                attempts = self.sheets.max_attempts
        where = f"{request.method} {urlsplit(request.url).path}" if request else "a request"
        tail = tail or f" after {attempts} attempts; giving up (quota or outage: re-run later)"
        raise SheetsError(f"Google Sheets API {verb} {where}{tail}", status, attempts)

    def read(self) -> Grid:
        """Typed cells: numbers as numbers, a real date as its serial number, not locale text."""
        meta = self.fetch_sheet_metadata(self.spreadsheet_id)
        found = [s["properties"] for s in meta.get("sheets", [])]
        self.properties = next((p for p in found if p["title"] == self.title), None)
        if self.properties is None:
            return []
        params = {"valueRenderOption": "UNFORMATTED_VALUE", "dateTimeRenderOption": "SERIAL_NUMBER"}
        name = absolute_range_name(self.title)
        return self.values_get(self.spreadsheet_id, name, params=params).get("values", [])

    def write(self, top: int, left: int, block: Grid) -> tuple[int, str]:
        """Adds or grows the worksheet if needed, then one values PUT; returns calls and range."""
        bottom, right = top + len(block), left + len(block[0])
        if self.properties is None:
            grid = {"rowCount": max(1000, bottom + _HEADROOM_ROWS), "columnCount": max(26, right)}
            new = {"title": self.title, "gridProperties": {**grid, "frozenRowCount": 1}}
            structural = [{"addSheet": {"properties": new}}]
        else:
            size, sheet_id = self.properties.get("gridProperties", {}), self.properties["sheetId"]
            short_rows = bottom - size.get("rowCount", 0)
            short_cols = right - size.get("columnCount", 0)
            grow = [("ROWS", short_rows + _HEADROOM_ROWS)] if short_rows > 0 else []
            grow += [("COLUMNS", short_cols)] if short_cols > 0 else []
            structural = [
                {"appendDimension": {"sheetId": sheet_id, "dimension": d, "length": n}}
                for d, n in grow
            ]
        if structural:
            reply = self.batch_update(self.spreadsheet_id, {"requests": structural})
            if self.properties is None:
                self.properties = reply["replies"][0]["addSheet"]["properties"]
        corners = f"{rowcol_to_a1(top + 1, left + 1)}:{rowcol_to_a1(bottom, right)}"
        written = absolute_range_name(self.title, corners)
        self.values_update(
            self.spreadsheet_id, written, params={"valueInputOption": "RAW"}, body={"values": block}
        )
        return 1 + bool(structural), written


class SheetsResource(ConfigurableResource):
    """Where the daily report goes: Google Sheets, a Sheets emulator, or a local CSV file."""

    backend: str = "google"  # google | csv
    spreadsheet_id: str = ""
    credentials_path: str = ""  # a service-account JSON file
    worksheet: str = DEFAULT_WORKSHEET
    emulator_host: str = ""  # host:port of a Sheets API emulator: plain HTTP, no credentials
    api_base_url: str = ""  # Google's API root in google mode: tests run OAuth on the emulator
    local_dir: str = ""  # the CSV sheet's folder
    max_attempts: int = Field(default=5, ge=1)  # per API call, token fetch included
    backoff_base_s: float = 0.5  # the n-th retry waits this x 2^(n-1) s (+ jitter); the 1st: 0
    backoff_max_s: float = 30.0  # cap on one wait, Retry-After included
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    def describe(self) -> str:
        """Where the report goes, for logs and the demo; no secrets."""
        return self._open().where

    def upsert_rows(self, rows: Sequence[Mapping[str, Any]]) -> UpsertResult:
        """A host-wide lock per sheet: backfills run in parallel and the API has no transaction."""
        sheet = self._open()
        digest = hashlib.sha256(sheet.where.encode()).hexdigest()[:32]
        with FileLock(Path(tempfile.gettempdir()) / f"itresume-sheets-{digest}.lock"):
            plan = plan_upsert(sheet.read(), rows, worksheet=self.worksheet)
            calls, written = 0, None
            if plan.top is not None:
                calls, written = sheet.write(plan.top, plan.table.col, plan.block)
        table = plan.table
        if table.duplicates or table.blanks or table.undated:
            log.warning(
                f"Sheets: collapsed {table.duplicates} duplicate date row(s), dropped "
                f"{table.blanks} blank row(s) and kept {len(table.undated)} row(s) without a "
                f"date below the dates in {self.worksheet!r}"
            )
        return UpsertResult(
            sheet.url(), sheet.mode, plan.row_numbers, plan.values, calls, written, table.duplicates
        )

    def read_rows(self) -> dict[str, dict[str, Cell]]:
        """Date -> {column: value}, read as the writer reads (blank counters are None)."""
        table = read_table(self._open().read(), self.worksheet)
        return {
            day: {
                name: None if cell == "" and name in FIXED_COLUMNS else cell
                for name, cell in zip(table.header[1:], row[1:], strict=True)
                if name
            }
            for day, row in table.dated.items()
        }

    def _open(self) -> _ApiSheet | CsvSheet:
        """The configured sheet; a bad or missing setting raises, naming its variable."""
        if self.backend not in ("google", "csv"):
            raise SheetsConfigError(
                f"{BACKEND_VAR}={self.backend!r} is not a Sheets backend: use google or csv"
            )
        if self.backend == "csv":
            from itresume_pipeline.local.csv_sheet import CsvSheet

            return CsvSheet(Path(self.local_dir), self.worksheet)
        needed = {
            SPREADSHEET_ID_VAR: self.spreadsheet_id,
            CREDENTIALS_VAR: self.credentials_path or self.emulator_host,
        }
        missing = [f"{name} {settings.absent(name)}" for name, value in needed.items() if not value]
        if missing:
            raise SheetsConfigError(
                f"{' and '.join(missing)}: {BACKEND_VAR}=google needs {SPREADSHEET_ID_VAR}, and "
                f"{CREDENTIALS_VAR} (a service-account file) unless {EMULATOR_HOST_VAR} is set; "
                f"{BACKEND_VAR}=csv writes a local CSV file instead"
            )
        retry = functools.partial(  # bounded, for every method: gspread's own retry is not
            http_retry,
            label="Google Sheets API",
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            methods=None,  # the range writes are idempotent
        )
        host, session, who = self.emulator_host, requests.Session(), "the emulator"
        base_url = host if "://" in host else f"http://{host}"
        if not host:  # Google itself, with a service account
            credentials, who = _service_account(self.credentials_path)
            token_session = requests.Session()  # google-auth retries its own 408/429/5xx answers
            mount(token_session, retry(statuses=()))
            session = AuthorizedSession(credentials, auth_request=Request(token_session))
            base_url = self.api_base_url or GOOGLE_API_ROOT
        mount(session, retry(statuses=RETRYABLE_STATUSES))
        return _ApiSheet(session, base_url, self, who)


def _service_account(path: str) -> tuple[Any, str]:
    """Credentials and e-mail; errors name the path, never the content (it holds the key)."""
    where = f"{CREDENTIALS_VAR}={Path(path).expanduser()}"
    try:
        info = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        kind = info.get("type") if isinstance(info, dict) else type(info).__name__
        if kind == "service_account":
            scopes = ["https://www.googleapis.com/auth/spreadsheets"]  # no Drive: opened by id
            return Credentials.from_service_account_info(info, scopes=scopes), info["client_email"]
    except FileNotFoundError:
        raise SheetsConfigError(f"the service-account file does not exist: {where}") from None
    except Exception as exc:
        raise SheetsConfigError(
            f"cannot load the service-account key in {where} ({type(exc).__name__}): expected "
            "the JSON key file downloaded from Google Cloud IAM"
        ) from None
    raise SheetsConfigError(f"{where} is not a service-account key file (type={kind!r})")
