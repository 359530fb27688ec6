"""A small in-memory Google Sheets API v4 emulator (stdlib only).

It exists so that tests and the offline demo drive the real gspread client over real HTTP, with no
mocks and no network: point ``SHEETS_EMULATOR_HOST`` at it (plain HTTP, no credentials), or point a
service-account file's ``token_uri`` at ``<url>/token`` to exercise the full OAuth JWT flow.

It covers what the pipeline and gspread's common worksheet calls need, not the whole API:

* ``GET /v4/spreadsheets/{id}`` (metadata; 404 for an unknown id, which gspread maps to
  ``SpreadsheetNotFound``) and ``POST /v4/spreadsheets/{id}:batchUpdate`` with ``addSheet``,
  ``deleteSheet``, ``updateSheetProperties`` and ``appendDimension``;
* values: ``GET``/``PUT`` ``.../values/{range}``, ``:append``, ``:clear``, ``values:batchGet``,
  ``values:batchUpdate`` and ``values:batchClear``, with A1 ranges such as ``'T'``, ``'T'!A1``,
  ``'T'!B2:C5``, ``'T'!A:D``, ``T!2:5`` and a bare ``T``;
* grid limits like the real API: writing past ``rowCount``/``columnCount`` is a 400;
* typed cells like the real API: a real date (a ``datetime.date`` put there with ``set_values``,
  or date text written with ``USER_ENTERED`` in the spreadsheet's locale) reads back as its
  serial number under ``UNFORMATTED_VALUE`` and as locale text under ``FORMATTED_VALUE``;
  ``USER_ENTERED`` also turns number text into numbers and keeps ``'``-prefixed text as text;
* ``POST /token``: the service-account JWT-bearer grant; with ``require_auth=True`` every API call
  must carry ``Authorization: Bearer <a token it issued>``.

Fault injection (``inject``, ``inject_delay``, ``inject_disconnect``) applies to ``/v4`` calls only,
never to ``/token``, so a test decides exactly which API call fails.

Run standalone for a demo:
``python -m itresume_pipeline.local.sheets_emulator --port 8099 --spreadsheet ID``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import logging
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import date, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

Cell = Any  # str | int | float | bool | date | datetime; "" is an empty cell
SERIAL_EPOCH = datetime(1899, 12, 30)  # day 0 of the spreadsheet serial-date system
# How a typed date is shown and which text USER_ENTERED reads as a date, per spreadsheet locale;
# ISO text is a date in every locale.
_LOCALE_DATES: dict[str, tuple[str, re.Pattern[str]]] = {
    "en_US": (
        "{d.month}/{d.day}/{d.year}",
        re.compile(r"(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})"),
    ),
    "ru_RU": ("{d:%d.%m.%Y}", re.compile(r"(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<y>\d{4})")),
}
_ISO_DATE = re.compile(r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class ApiFailure(Exception):
    """An error answer, raised inside a handler and rendered as Google's JSON error body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it; ``bearer`` says whether a Bearer header came with it."""

    method: str
    path: str  # URL-decoded, without the query string
    query: dict[str, list[str]]
    bearer: bool
    status: int


@dataclass(frozen=True)
class A1Range:
    """A parsed A1 range: 0-based start, exclusive end, ``None`` for 'to the end of the grid'."""

    title: str
    row0: int
    col0: int
    row1: int | None
    col1: int | None
    single_cell: bool


# --------------------------------------------------------------------------------------------
# A1 notation
# --------------------------------------------------------------------------------------------

_CELLS_RE = re.compile(r"^([A-Za-z]*)(\d*)(?::([A-Za-z]*)(\d*))?$")


def col_to_index(letters: str) -> int:
    """``A`` -> 0, ``Z`` -> 25, ``AA`` -> 26."""
    n = 0
    for ch in letters.upper():
        n = n * 26 + (ord(ch) - 64)
    return n - 1


def index_to_col(index: int) -> str:
    """0 -> ``A``; the inverse of :func:`col_to_index`."""
    out = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(65 + rem) + out
    return out


def quote_title(title: str) -> str:
    """Quote a sheet title the way the API echoes ranges back."""
    return "'" + title.replace("'", "''") + "'"


def split_range(text: str) -> tuple[str | None, str]:
    """Split ``'My ''x'' sheet'!A1:B2`` into the title and the cell part (either may be empty)."""
    if text.startswith("'"):
        i, title = 1, []
        while i < len(text):
            if text[i] == "'":
                if text[i + 1 : i + 2] == "'":
                    title.append("'")
                    i += 2
                    continue
                rest = text[i + 1 :]
                if rest and not rest.startswith("!"):
                    raise ApiFailure(400, f"Unable to parse range: {text}")
                return "".join(title), rest[1:]
            title.append(text[i])
            i += 1
        raise ApiFailure(400, f"Unable to parse range: {text}")
    if "!" in text:
        title, cells = text.rsplit("!", 1)
        return title, cells
    return None, text


def parse_cells(title: str, cells: str, original: str) -> A1Range:
    """Parse the part after ``!``: ``A1``, ``B2:C5``, ``A:D``, ``2:5``, ``A2:C`` or nothing."""
    if not cells:
        return A1Range(title, 0, 0, None, None, single_cell=False)
    m = _CELLS_RE.match(cells)
    if not m or not (m.group(1) or m.group(2)):
        raise ApiFailure(400, f"Unable to parse range: {original}")
    c0, r0, c1, r1 = m.groups()
    col0 = col_to_index(c0) if c0 else 0
    row0 = int(r0) - 1 if r0 else 0
    if m.group(3) is None and m.group(4) is None:  # no colon
        if not (c0 and r0):
            raise ApiFailure(400, f"Unable to parse range: {original}")
        return A1Range(title, row0, col0, row0 + 1, col0 + 1, single_cell=True)
    col1 = col_to_index(c1) + 1 if c1 else None
    row1 = int(r1) if r1 else None
    if row0 < 0 or (r0 and int(r0) < 1) or (r1 and int(r1) < 1):
        raise ApiFailure(400, f"Unable to parse range: {original}")
    return A1Range(title, row0, col0, row1, col1, single_cell=False)


# --------------------------------------------------------------------------------------------
# In-memory model
# --------------------------------------------------------------------------------------------


@dataclass
class _Sheet:
    properties: dict[str, Any]
    cells: list[list[Cell]]

    @property
    def title(self) -> str:
        return self.properties["title"]

    @property
    def row_count(self) -> int:
        return self.properties["gridProperties"]["rowCount"]

    @property
    def col_count(self) -> int:
        return self.properties["gridProperties"]["columnCount"]

    def trimmed(self) -> list[list[Cell]]:
        """Cells with trailing empty cells and rows removed, as the API returns them."""
        rows = [_trim_row(r) for r in self.cells]
        while rows and not rows[-1]:
            rows.pop()
        return rows


@dataclass
class _Book:
    key: str
    title: str
    sheets: list[_Sheet]
    next_sheet_id: int = 1
    locale: str = "en_US"

    def sheet(self, title: str) -> _Sheet | None:
        return next((s for s in self.sheets if s.title == title), None)

    def sheet_by_id(self, sheet_id: int) -> _Sheet:
        for s in self.sheets:
            if s.properties["sheetId"] == sheet_id:
                return s
        raise ApiFailure(400, f"No grid with id: {sheet_id}")

    def metadata(self) -> dict[str, Any]:
        for i, s in enumerate(self.sheets):
            s.properties["index"] = i
        return {
            "spreadsheetId": self.key,
            "properties": {
                "title": self.title,
                "locale": self.locale,
                "autoRecalc": "ON_CHANGE",
                "timeZone": "Etc/UTC",
            },
            "sheets": [{"properties": copy.deepcopy(s.properties)} for s in self.sheets],
            "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{self.key}/edit",
        }


def _trim_row(row: list[Cell]) -> list[Cell]:
    end = len(row)
    while end and _is_empty(row[end - 1]):
        end -= 1
    return list(row[:end])


def _is_empty(cell: Cell) -> bool:
    return cell is None or cell == ""


def _formatted(cell: Cell, locale: str = "en_US") -> str:
    """Render a cell like FORMATTED_VALUE: 'General' numbers, dates in the locale's format."""
    if isinstance(cell, bool):
        return "TRUE" if cell else "FALSE"
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    if isinstance(cell, date):
        pattern = _LOCALE_DATES.get(locale, ("{d:%Y-%m-%d}", _ISO_DATE))[0]
        shown = pattern.format(d=cell)
        return f"{shown} {cell:%H:%M:%S}" if isinstance(cell, datetime) else shown
    return "" if cell is None else str(cell)


def _unformatted(cell: Cell, locale: str, serial_dates: bool) -> Cell:
    """UNFORMATTED_VALUE: a date is its serial number (days since 1899-12-30, time as the
    fraction) unless dateTimeRenderOption=FORMATTED_STRING asks for its text."""
    if not isinstance(cell, date):
        return cell
    if not serial_dates:
        return _formatted(cell, locale)
    moment = cell if isinstance(cell, datetime) else datetime(cell.year, cell.month, cell.day)
    days = (moment - SERIAL_EPOCH).total_seconds() / 86400
    return int(days) if days.is_integer() else days


def _entered(cell: Cell, locale: str) -> Cell:
    """What USER_ENTERED stores for a value, as if a person typed it into the cell."""
    if not isinstance(cell, str):
        return cell
    if cell.startswith("'"):
        return cell[1:]
    text = cell.strip()
    if _NUMBER.fullmatch(text):
        number = float(text)
        return int(number) if number.is_integer() and "." not in text else number
    if text.upper() in ("TRUE", "FALSE"):
        return text.upper() == "TRUE"
    patterns = [_ISO_DATE]
    if locale in _LOCALE_DATES:
        patterns.append(_LOCALE_DATES[locale][1])
    for pattern in patterns:
        found = pattern.fullmatch(text)
        if found:
            with contextlib.suppress(ValueError):
                return date(int(found["y"]), int(found["m"]), int(found["d"]))
    return cell


def _as_input(body: dict[str, Any], option: str, locale: str) -> dict[str, Any]:
    """The body's values as the API stores them: RAW verbatim, USER_ENTERED parsed."""
    if option != "USER_ENTERED":
        return body
    values = [[_entered(c, locale) for c in row] for row in body.get("values") or []]
    return {**body, "values": values}


def _grid_props(rows: int, cols: int) -> dict[str, int]:
    return {"rowCount": rows, "columnCount": cols}


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class SheetsEmulator:
    """An in-process Sheets API v4 emulator on a background thread; use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, require_auth: bool = False) -> None:
        self.host = host
        self.port = port
        self.require_auth = require_auth
        self.log: list[RequestRecord] = []
        self.token_requests: list[dict[str, Any]] = []  # decoded (unverified) JWT claims
        self._books: dict[str, _Book] = {}
        self._tokens: set[str] = set()
        self._faults: deque[tuple[str, Any]] = deque()
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> SheetsEmulator:
        """Bind and serve on a daemon thread; port 0 picks a free port."""
        handler = type("Handler", (_Handler,), {"emulator": self})
        self._server = _Server((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # a fast close() keeps test teardown cheap
            name="sheets-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SheetsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host_port(self) -> str:
        """The ``SHEETS_EMULATOR_HOST`` value for this emulator."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    @property
    def token_uri(self) -> str:
        """Put this in a service-account file to run the OAuth flow against the emulator."""
        return f"{self.url}/token"

    # state for tests ------------------------------------------------------------------------
    def create_spreadsheet(
        self,
        key: str,
        title: str = "Untitled spreadsheet",
        sheets: list[str] | tuple[str, ...] = ("Sheet1",),
        rows: int = 1000,
        cols: int = 26,
        locale: str = "en_US",
    ) -> None:
        """Create (or replace) a spreadsheet; every sheet gets a ``rows`` x ``cols`` grid.

        ``locale`` decides how dates are shown and which typed text counts as a date."""
        with self._lock:
            book = _Book(key=key, title=title, sheets=[], locale=locale)
            for name in sheets:
                self._add_sheet(book, {"title": name, "gridProperties": _grid_props(rows, cols)})
            self._books[key] = book

    def values(self, key: str, worksheet: str) -> list[list[str]]:
        """The sheet's content as FORMATTED_VALUE strings, trailing blanks trimmed."""
        with self._lock:
            sheet, locale = self._sheet(key, worksheet), self._books[key].locale
            return [[_formatted(c, locale) for c in row] for row in sheet.trimmed()]

    def raw_values(self, key: str, worksheet: str) -> list[list[Cell]]:
        """The sheet's content with cell types kept (a RAW-written 5 stays an int, a typed date
        is a ``datetime.date``)."""
        with self._lock:
            return copy.deepcopy(self._sheet(key, worksheet).trimmed())

    def set_values(self, key: str, worksheet: str, rows: list[list[Cell]]) -> None:
        """Replace a sheet's content, e.g. to simulate a hand edit; the grid grows to fit.

        Cells are stored as given: a ``datetime.date`` is a real date, as a person's typing
        makes it; a string stays text, like a cell formatted as plain text."""
        with self._lock:
            sheet = self._sheet(key, worksheet)
            sheet.cells = [list(r) for r in rows]
            props = sheet.properties["gridProperties"]
            props["rowCount"] = max(props["rowCount"], len(rows))
            props["columnCount"] = max(props["columnCount"], max((len(r) for r in rows), default=0))

    def sheet_titles(self, key: str) -> list[str]:
        with self._lock:
            return [s.title for s in self._books[key].sheets]

    def grid_size(self, key: str, worksheet: str) -> tuple[int, int]:
        """(rowCount, columnCount) of a sheet."""
        with self._lock:
            sheet = self._sheet(key, worksheet)
            return sheet.row_count, sheet.col_count

    # fault injection ------------------------------------------------------------------------
    def inject(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``times`` API calls with ``status`` and a Google-style error body."""
        with self._lock:
            self._faults.extend([("status", (status, retry_after))] * times)

    def inject_delay(self, seconds: float, times: int = 1) -> None:
        """Sleep before answering the next ``times`` API calls (to trigger client read timeouts)."""
        with self._lock:
            self._faults.extend([("delay", seconds)] * times)

    def inject_disconnect(self, times: int = 1) -> None:
        """Close the connection without answering the next ``times`` API calls."""
        with self._lock:
            self._faults.extend([("disconnect", None)] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # request log ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, decoded path) of every request, in order, including failed ones."""
        with self._lock:
            return [(r.method, r.path) for r in self.log]

    def write_calls(self) -> int:
        """Mutating API calls that were answered 2xx (faulted and rejected ones do not count)."""
        with self._lock:
            return sum(
                1
                for r in self.log
                if r.method in MUTATING_METHODS
                and r.path.startswith("/v4/")
                and 200 <= r.status < 300
            )

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()
            self.token_requests.clear()

    # internals ------------------------------------------------------------------------------
    def _sheet(self, key: str, title: str) -> _Sheet:
        sheet = self._books[key].sheet(title)
        if sheet is None:
            raise KeyError(f"no worksheet {title!r} in spreadsheet {key!r}")
        return sheet

    def _add_sheet(self, book: _Book, props: dict[str, Any]) -> dict[str, Any]:
        title = props.get("title") or f"Sheet{len(book.sheets) + 1}"
        if book.sheet(title) is not None:
            raise ApiFailure(
                400,
                f'Invalid requests[0].addSheet: A sheet with the name "{title}" already exists. '
                "Please enter another name.",
            )
        sheet_id = props.get("sheetId")
        if sheet_id is None:
            sheet_id = book.next_sheet_id
        if any(s.properties["sheetId"] == sheet_id for s in book.sheets):
            raise ApiFailure(400, f"Invalid requests[0].addSheet: sheet id {sheet_id} exists.")
        book.next_sheet_id = max(book.next_sheet_id, int(sheet_id)) + 1
        grid = {"rowCount": 1000, "columnCount": 26, **props.get("gridProperties", {})}
        full = {
            "sheetId": sheet_id,
            "title": title,
            "index": len(book.sheets),
            "sheetType": props.get("sheetType", "GRID"),
            "gridProperties": grid,
        }
        sheet = _Sheet(properties=full, cells=[])
        index = props.get("index")
        if index is None:
            book.sheets.append(sheet)
        else:
            book.sheets.insert(int(index), sheet)
        return copy.deepcopy(full)

    def next_fault(self) -> tuple[str, Any] | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.log.append(rec)

    def issue_token(self, form: dict[str, list[str]]) -> dict[str, Any]:
        """Answer the JWT-bearer grant google-auth sends for service accounts."""
        grant = (form.get("grant_type") or [""])[0]
        assertion = (form.get("assertion") or [""])[0]
        if grant != JWT_BEARER_GRANT or assertion.count(".") != 2:
            raise ApiFailure(400, "invalid_grant")
        try:
            payload = assertion.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            raise ApiFailure(400, "invalid_grant: malformed JWT") from None
        if not isinstance(claims, dict) or not claims.get("iss"):
            raise ApiFailure(400, "invalid_grant: the JWT has no issuer")
        token = "emu-" + secrets.token_hex(16)
        with self._lock:
            self.token_requests.append(claims)
            self._tokens.add(token)
        return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def check_auth(self, header: str | None) -> None:
        if not self.require_auth:
            return
        scheme, _, token = (header or "").partition(" ")
        with self._lock:
            ok = scheme == "Bearer" and token in self._tokens
        if not ok:
            raise ApiFailure(
                401,
                "Request is missing required authentication credential. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )

    def dispatch(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        """Route one /v4 call; the whole call runs under the lock so it is atomic."""
        rest = path[len("/v4/spreadsheets/") :]
        with self._lock:
            if "/values" not in rest:
                key, _, action = rest.partition(":")
                book = self._book(key)
                if method == "GET" and not action:
                    return book.metadata()
                if method == "POST" and action == "batchUpdate":
                    return self._batch_update(book, body)
                raise ApiFailure(404, f"Unknown method: {method} {path}")
            key, _, values_part = rest.partition("/values")
            book = self._book(key)
            if values_part.startswith(":"):
                return self._values_batch(book, method, values_part[1:], query, body)
            raw = values_part.lstrip("/")
            range_text, _, action = raw.partition(":")  # the range itself is %-quoted
            return self._values_one(book, method, unquote(range_text), action, query, body)

    def _book(self, key: str) -> _Book:
        book = self._books.get(key)
        if book is None:
            raise ApiFailure(404, "Requested entity was not found.")
        return book

    # spreadsheets.batchUpdate -------------------------------------------------------------
    def _batch_update(self, book: _Book, body: Any) -> dict[str, Any]:
        """Apply every request or none, like the real API."""
        requests = (body or {}).get("requests") or []
        if not requests:
            raise ApiFailure(400, "Must specify at least one request.")
        snapshot = copy.deepcopy(book)
        try:
            replies = [self._apply_request(book, req) for req in requests]
        except ApiFailure:
            self._books[book.key] = snapshot
            raise
        return {"spreadsheetId": book.key, "replies": replies}

    def _apply_request(self, book: _Book, req: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(req, dict) or len(req) != 1:
            raise ApiFailure(400, "Invalid request: each request must hold exactly one kind")
        ((kind, arg),) = req.items()
        if kind == "addSheet":
            return {"addSheet": {"properties": self._add_sheet(book, arg.get("properties", {}))}}
        if kind == "deleteSheet":
            book.sheets.remove(book.sheet_by_id(arg["sheetId"]))
            return {}
        if kind == "updateSheetProperties":
            self._update_sheet_properties(book, arg)
            return {}
        if kind == "appendDimension":
            sheet = book.sheet_by_id(arg["sheetId"])
            dim = "rowCount" if arg.get("dimension") == "ROWS" else "columnCount"
            sheet.properties["gridProperties"][dim] += int(arg["length"])
            return {}
        raise ApiFailure(400, f"Invalid request: unsupported or malformed {list(req)}")

    def _update_sheet_properties(self, book: _Book, arg: dict[str, Any]) -> None:
        props = arg.get("properties", {})
        sheet = book.sheet_by_id(props.get("sheetId", 0))
        fields = [f.strip() for f in (arg.get("fields") or "").split(",") if f.strip()]
        if not fields:
            raise ApiFailure(400, "updateSheetProperties needs a fields mask")
        for field in fields:
            src, dst = props, sheet.properties
            *parents, leaf = field.split(".")
            for p in parents:
                src = src.get(p, {})
                dst = dst.setdefault(p, {})
            if leaf in src:
                dst[leaf] = src[leaf]

    # values --------------------------------------------------------------------------------
    def _resolve(self, book: _Book, text: str) -> tuple[_Sheet, A1Range]:
        title, cells = split_range(text)
        if title is None:  # a bare name: a sheet title, else cells on the first sheet
            if book.sheet(cells) is not None:
                title, cells = cells, ""
            elif book.sheets:
                title = book.sheets[0].title
        sheet = book.sheet(title or "")
        if sheet is None:
            raise ApiFailure(400, f"Unable to parse range: {text}")
        return sheet, parse_cells(sheet.title, cells, text)

    def _values_one(
        self,
        book: _Book,
        method: str,
        range_text: str,
        action: str,
        query: dict[str, list[str]],
        body: Any,
    ) -> dict[str, Any]:
        sheet, rng = self._resolve(book, range_text)
        if method == "GET" and not action:
            return self._read(sheet, rng, query, book.locale)
        if (method, action) in (("PUT", ""), ("POST", "append")):
            option = _require_input_option(query)
            body = _as_input(body or {}, option, book.locale)
        if method == "PUT" and not action:
            return {"spreadsheetId": book.key, **self._write(sheet, rng, body)}
        if method == "POST" and action == "append":
            return self._append(book, sheet, rng, query, body)
        if method == "POST" and action == "clear":
            self._clear(sheet, rng)
            return {"spreadsheetId": book.key, "clearedRange": _a1(sheet, rng)}
        raise ApiFailure(404, f"Unknown method: {method} values {action or ''}".strip())

    def _values_batch(
        self, book: _Book, method: str, action: str, query: dict[str, list[str]], body: Any
    ) -> dict[str, Any]:
        if method == "GET" and action == "batchGet":
            value_ranges = [
                self._read(*self._resolve(book, r), query, book.locale)
                for r in query.get("ranges", [])
            ]
            return {"spreadsheetId": book.key, "valueRanges": value_ranges}
        if method == "POST" and action == "batchUpdate":
            body = body or {}
            option = _require_input_option({"valueInputOption": [body.get("valueInputOption", "")]})
            snapshot = copy.deepcopy(book)
            try:
                responses = [
                    {
                        "spreadsheetId": book.key,
                        **self._write(
                            *self._resolve(book, d["range"]), _as_input(d, option, book.locale)
                        ),
                    }
                    for d in body.get("data", [])
                ]
            except ApiFailure:
                self._books[book.key] = snapshot
                raise
            return {
                "spreadsheetId": book.key,
                "totalUpdatedRows": sum(r["updatedRows"] for r in responses),
                "totalUpdatedColumns": max((r["updatedColumns"] for r in responses), default=0),
                "totalUpdatedCells": sum(r["updatedCells"] for r in responses),
                "totalUpdatedSheets": len({r["updatedRange"].split("!")[0] for r in responses}),
                "responses": responses,
            }
        if method == "POST" and action == "batchClear":
            ranges = (body or {}).get("ranges", [])
            cleared = []
            for text in ranges:
                sheet, rng = self._resolve(book, text)
                self._clear(sheet, rng)
                cleared.append(_a1(sheet, rng))
            return {"spreadsheetId": book.key, "clearedRanges": cleared}
        raise ApiFailure(404, f"Unknown method: {method} values:{action}")

    def _read(
        self, sheet: _Sheet, rng: A1Range, query: dict[str, list[str]], locale: str
    ) -> dict[str, Any]:
        render = (query.get("valueRenderOption") or ["FORMATTED_VALUE"])[0]
        serial = (query.get("dateTimeRenderOption") or ["SERIAL_NUMBER"])[0] == "SERIAL_NUMBER"
        major = (query.get("majorDimension") or ["ROWS"])[0]
        row1 = sheet.row_count if rng.row1 is None else rng.row1
        col1 = sheet.col_count if rng.col1 is None else rng.col1
        rows = [_trim_row(r[rng.col0 : col1]) for r in sheet.cells[rng.row0 : row1]]
        while rows and not rows[-1]:
            rows.pop()
        if render == "FORMATTED_VALUE":
            rows = [[_formatted(c, locale) for c in r] for r in rows]
        else:  # UNFORMATTED_VALUE and FORMULA: no formulas here, so both are the typed value
            rows = [[_unformatted(c, locale, serial) for c in r] for r in rows]
        if major == "COLUMNS":
            rows = _transpose(rows)
        out: dict[str, Any] = {"range": _a1(sheet, rng), "majorDimension": major}
        if rows:
            out["values"] = rows
        return out

    def _write(self, sheet: _Sheet, rng: A1Range, body: dict[str, Any]) -> dict[str, Any]:
        values = body.get("values") or []
        if body.get("majorDimension") == "COLUMNS":
            values = _transpose(values)
        height = len(values)
        width = max((len(r) for r in values), default=0)
        bounded = not rng.single_cell
        if bounded and rng.row1 is not None and rng.row0 + height > rng.row1:
            raise ApiFailure(
                400,
                f"Requested writing within range [{_a1(sheet, rng)}], but tried writing to row "
                f"[{rng.row0 + height}]",
            )
        if bounded and rng.col1 is not None and rng.col0 + width > rng.col1:
            raise ApiFailure(
                400,
                f"Requested writing within range [{_a1(sheet, rng)}], but tried writing to column "
                f"[{index_to_col(rng.col0 + width - 1)}]",
            )
        _check_grid(sheet, rng.row0 + height, rng.col0 + width)
        for i, row in enumerate(values):
            for j, cell in enumerate(row):
                if cell is not None:  # null means 'leave this cell alone'
                    _set_cell(sheet, rng.row0 + i, rng.col0 + j, cell)
        written = A1Range(
            sheet.title, rng.row0, rng.col0, rng.row0 + height, rng.col0 + width, False
        )
        return {
            "updatedRange": _a1(sheet, written),
            "updatedRows": height,
            "updatedColumns": width,
            "updatedCells": sum(len(r) for r in values),
        }

    def _append(
        self,
        book: _Book,
        sheet: _Sheet,
        rng: A1Range,
        query: dict[str, list[str]],
        body: dict[str, Any],
    ) -> dict[str, Any]:
        values = body.get("values") or []
        table_end = len(sheet.trimmed())
        start = max(table_end, rng.row0)
        grow = len(values)
        if (query.get("insertDataOption") or ["OVERWRITE"])[0] != "INSERT_ROWS":
            grow = max(0, start + len(values) - sheet.row_count)
        sheet.properties["gridProperties"]["rowCount"] += grow
        width = max((len(r) for r in values), default=0)
        grid = sheet.properties["gridProperties"]
        grid["columnCount"] = max(grid["columnCount"], rng.col0 + width)
        target = A1Range(sheet.title, start, rng.col0, None, None, single_cell=True)
        updates = self._write(sheet, target, body)
        table = A1Range(sheet.title, 0, rng.col0, table_end or 1, rng.col0 + max(width, 1), False)
        return {
            "spreadsheetId": book.key,
            "tableRange": _a1(sheet, table),
            "updates": {"spreadsheetId": book.key, **updates},
        }

    def _clear(self, sheet: _Sheet, rng: A1Range) -> None:
        row1 = len(sheet.cells) if rng.row1 is None else min(rng.row1, len(sheet.cells))
        for r in range(rng.row0, row1):
            row = sheet.cells[r]
            col1 = len(row) if rng.col1 is None else min(rng.col1, len(row))
            for c in range(rng.col0, col1):
                row[c] = ""


def _require_input_option(query: dict[str, list[str]]) -> str:
    option = (query.get("valueInputOption") or [""])[0]
    if option not in {"RAW", "USER_ENTERED"}:
        raise ApiFailure(400, "Invalid valueInputOption: INPUT_VALUE_OPTION_UNSPECIFIED")
    return option


def _check_grid(sheet: _Sheet, rows: int, cols: int) -> None:
    if rows > sheet.row_count or cols > sheet.col_count:
        cell = f"{index_to_col(max(cols, 1) - 1)}{max(rows, 1)}"
        raise ApiFailure(
            400,
            f"Range ({quote_title(sheet.title)}!{cell}) exceeds grid limits. "
            f"Max rows: {sheet.row_count}, max columns: {sheet.col_count}",
        )


def _set_cell(sheet: _Sheet, row: int, col: int, value: Cell) -> None:
    while len(sheet.cells) <= row:
        sheet.cells.append([])
    line = sheet.cells[row]
    while len(line) <= col:
        line.append("")
    line[col] = value


def _transpose(rows: list[list[Cell]]) -> list[list[Cell]]:
    width = max((len(r) for r in rows), default=0)
    cols = [[r[i] if i < len(r) else "" for r in rows] for i in range(width)]
    return [_trim_row(c) for c in cols]


def _a1(sheet: _Sheet, rng: A1Range) -> str:
    """Echo a range bounded by the grid, e.g. ``'T'!A1:Z1000``."""
    row1 = sheet.row_count if rng.row1 is None else rng.row1
    col1 = sheet.col_count if rng.col1 is None else rng.col1
    start = f"{index_to_col(rng.col0)}{rng.row0 + 1}"
    end = f"{index_to_col(max(col1, rng.col0 + 1) - 1)}{max(row1, rng.row0 + 1)}"
    cells = start if rng.single_cell or start == end else f"{start}:{end}"
    return f"{quote_title(sheet.title)}!{cells}"


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, injected disconnects) are normal here, not errors."""
        log.debug("sheets emulator: client %s went away", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment with no Nagle delay: otherwise every keep-alive
    # request pays a ~40 ms delayed-ACK stall and the suites slow down tenfold.
    wbufsize = -1
    disable_nagle_algorithm = True
    emulator: SheetsEmulator  # set on the per-emulator subclass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sheets emulator: " + format, *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization")
        status, payload, headers = self._answer(method, split.path, query, raw, auth)
        if status == 0:  # injected disconnect
            self.close_connection = True
            self.emulator.record(RequestRecord(method, path, query, _is_bearer(auth), 0))
            return
        self.emulator.record(RequestRecord(method, path, query, _is_bearer(auth), status))
        self._send(status, payload, headers)

    def _answer(
        self, method: str, raw_path: str, query: dict[str, list[str]], raw: bytes, auth: str | None
    ) -> tuple[int, Any, dict[str, str]]:
        emu = self.emulator
        try:
            if raw_path == "/token" and method == "POST":
                form = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
                return 200, emu.issue_token(form), {}
            if not raw_path.startswith("/v4/spreadsheets/"):
                raise ApiFailure(404, f"Not found: {method} {raw_path}")
            fault = emu.next_fault()
            if fault is not None:
                kind, arg = fault
                if kind == "disconnect":
                    return 0, None, {}
                if kind == "delay":
                    time.sleep(arg)
                else:
                    status, retry_after = arg
                    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
                    raise ApiFailure(status, _fault_message(status), headers)
            emu.check_auth(auth)
            body = json.loads(raw) if raw else None
            return 200, emu.dispatch(method, raw_path, query, body), {}
        except ApiFailure as exc:
            if raw_path == "/token":
                return exc.status, {"error": exc.message}, exc.headers
            return exc.status, _error_body(exc.status, exc.message), exc.headers
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return 400, _error_body(400, f"Invalid request: {type(exc).__name__}: {exc}"), {}

    def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(data)


def _is_bearer(auth: str | None) -> bool:
    return bool(auth and auth.startswith("Bearer ") and len(auth) > len("Bearer "))


def _fault_message(status: int) -> str:
    if status == 429:
        return (
            "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per "
            "minute per user' of service 'sheets.googleapis.com'."
        )
    return "The service is currently unavailable." if status >= 500 else "Injected failure."


def _error_body(status: int, message: str) -> dict[str, Any]:
    name = _STATUS_NAMES.get(status, HTTPStatus(status).phrase.upper().replace(" ", "_"))
    return {"error": {"code": status, "message": message, "status": name}}


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator in the foreground until interrupted (for demos and manual poking)."""
    parser = argparse.ArgumentParser(description="In-memory Google Sheets API v4 emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument(
        "--spreadsheet", action="append", default=[], help="spreadsheet id to create (repeatable)"
    )
    parser.add_argument("--locale", default="en_US", help="the spreadsheets' locale, e.g. ru_RU")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    emu = SheetsEmulator(args.host, args.port).start()
    for key in args.spreadsheet:
        emu.create_spreadsheet(key, locale=args.locale)
    log.info("Sheets API emulator on %s (export SHEETS_EMULATOR_HOST=%s)", emu.url, emu.host_port)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()


if __name__ == "__main__":
    main()
