"""What an API record must be, stated once: `ApiRecord` for the JSON types, then the values.

`ApiRecord` is a msgspec struct, so a chunk of records is type-checked in C while it is
decoded (the column lane, `columns.py`). A record read any other way goes through `to_row`,
which checks the same struct's fields one at a time with msgspec (so each reason names the
first bad field, in the order below) and then the rules no JSON type can say. The column lane
applies those rules a whole column at a time, with the constants defined here.

Fields are checked in `ApiRecord`'s order: lti_user_id, attempt_type, is_correct, created_at,
passback_params. Every reason starts with the field at fault and a colon.

- ``lti_user_id``: 32 hex characters, lower-cased (``unique_users`` must not count an id
  twice because of its case).
- ``is_correct``: 0, 1, true, false or null for either attempt type (a ``run`` that reports a
  result is not worth losing).
- ``created_at``: ``YYYY-MM-DD HH:MM:SS`` with an optional ``.f`` to ``.ffffff`` and a space
  or ``T``; a real date and time, naive UTC.
- ``passback_params``: a *Python* dict literal of str -> str-or-None, never executed; its
  three known keys are optional (missing -> NULL), other keys are ignored.
- Unknown record keys are ignored. No value may hold NUL (PostgreSQL ``text`` cannot) or a
  lone surrogate (not UTF-8).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

__all__ = [
    "CANONICAL_TIMESTAMP",
    "COPY_FLAG",
    "COPY_NULL",
    "HEX_DIGITS",
    "MAX_FIELD_CHARS",
    "PASSBACK_KEYS",
    "ApiRecord",
    "Attempt",
    "PassbackError",
    "RejectedRecord",
    "claimed_moment",
    "is_user_id",
    "parse_passback",
    "read_timestamp",
    "scan_passback",
    "to_copy_line",
    "to_row",
    "validate_record",
]

MAX_FIELD_CHARS = 10_000
USER_ID_CHARS = 32
HEX_DIGITS = "0123456789abcdef"
PASSBACK_KEYS = ("oauth_consumer_key", "lis_result_sourcedid", "lis_outcome_service_url")
TIMESTAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
# The API's own form: the only one whose text order is its time order and which is copied
# verbatim, so the column lane compares it as text. Every other valid form goes through
# `read_timestamp`.
CANONICAL_TIMESTAMP = (
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]) "
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}"
)
_ECHO_CHARS = 60


class ApiRecord(msgspec.Struct, gc=False):
    """One record's JSON types; field order is the order in which fields are judged."""

    lti_user_id: Annotated[str, msgspec.Meta(min_length=USER_ID_CHARS, max_length=USER_ID_CHARS)]
    attempt_type: Literal["run", "submit"]
    is_correct: bool | Literal[0, 1] | None
    created_at: str
    passback_params: Annotated[str, msgspec.Meta(max_length=MAX_FIELD_CHARS)]


class Attempt(NamedTuple):
    """One row of ``attempts``, in table column order."""

    user_id: str
    oauth_consumer_key: str | None
    lis_result_sourcedid: str | None
    lis_outcome_service_url: str | None
    is_correct: bool | None
    attempt_type: str
    created_at: datetime


class RejectedRecord(ValueError):
    """A record that cannot become a row; `reason` starts with the field name and a colon."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def field(self) -> str:
        return self.reason.split(":", 1)[0]


class PassbackError(ValueError):
    """``passback_params`` is not a Python dict literal of str -> str-or-None."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- one record
_FIELD_TYPES = {f.name: f.type for f in msgspec.structs.fields(ApiRecord)}
_HEX = re.compile(f"[{HEX_DIGITS}]*").fullmatch
_TIMESTAMP = re.compile(TIMESTAMP).fullmatch


def validate_record(record: object) -> Attempt:
    """One decoded JSON record as an `Attempt`, or `RejectedRecord`."""
    return to_row(record)[0]


def to_row(record: object) -> tuple[Attempt, str]:
    """A record (an `ApiRecord`, or any decoded JSON value) as a row and its COPY line."""
    get = _getter(record)
    given_id = get("lti_user_id")
    user_id = given_id.lower()
    if not is_user_id(user_id):
        raise RejectedRecord(f"lti_user_id: expected 32 hex characters, got {_echo(given_id)}")
    attempt_type, is_correct = get("attempt_type"), get("is_correct")
    created_text = get("created_at")
    created_at = read_timestamp(created_text)
    key, sourcedid, url = _passback_values(get("passback_params"))
    flag = None if is_correct is None else is_correct == 1
    attempt = Attempt(user_id, key, sourcedid, url, flag, attempt_type, created_at)
    if len(created_text) != 26 or created_text[10] != " ":
        created_text = created_at.isoformat(" ", "microseconds")
    return attempt, _copy_line(attempt, created_text)


def _getter(record: object) -> Callable[[str], Any]:
    """The record's fields, typed by `ApiRecord`: all at once in C, or, when that fails, one
    at a time in `ApiRecord`'s order, so the reason names the first bad field."""
    if type(record) is dict:
        try:
            record = msgspec.convert(record, ApiRecord)
        except msgspec.ValidationError:
            return _typed_getter(record)
    if type(record) is ApiRecord:
        return record.__getattribute__
    raise RejectedRecord(f"record: Expected `object`, got `{_json_type(record)}`")


def _typed_getter(record: dict) -> Callable[[str], Any]:
    """Each field of a decoded dict, checked against its `ApiRecord` type on its own."""

    def get(name: str) -> object:
        if name not in record:
            raise RejectedRecord(f"{name}: missing")
        try:
            return msgspec.convert(record[name], _FIELD_TYPES[name])
        except msgspec.ValidationError as exc:
            raise RejectedRecord(f"{name}: {exc}") from None

    return get


def is_user_id(lowered: str) -> bool:
    """A lower-cased ``lti_user_id`` of the right length holds only hex digits."""
    return _HEX(lowered) is not None


def read_timestamp(text: str) -> datetime:
    """The one rule for ``created_at``, for a row and for the day a bad record belongs to."""
    if _TIMESTAMP(text) is None:
        raise RejectedRecord(
            f"created_at: expected 'YYYY-MM-DD HH:MM:SS[.ffffff]', got {_echo(text)}"
        )
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise RejectedRecord(f"created_at: not a real date and time ({exc})") from None


def claimed_moment(record: object) -> datetime | None:
    """When a bad record says it happened, if it says so validly: the day it belongs to.

    That day's load quarantines it; any other day's load counts it as out of its window.
    """
    if type(record) is ApiRecord:
        text = record.created_at
    else:
        text = record.get("created_at") if type(record) is dict else None
    if type(text) is not str:
        return None
    try:
        return read_timestamp(text)
    except RejectedRecord:
        return None


def _json_type(value: object) -> str:
    """A decoded value's JSON type, in msgspec's words."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


_JSON_TYPES = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    list: "array",
    type(None): "null",
}


def _echo(value: object) -> str:
    """A short, printable rendering of an offending value (repr escapes NUL)."""
    text = repr(value)
    return text if len(text) <= _ECHO_CHARS else text[: _ECHO_CHARS - 1] + "…"


# --------------------------------------------------------------------------- passback_params
# What the scanner leaves to `ast.literal_eval`: escapes, what the tokenizer refuses inside a
# one-line literal (CR, LF, NUL), lone surrogates, and any spacing but repr's. So the scanner
# is only a faster way to reach literal_eval's answer; the property tests hold it to that.
_UNSAFE_FOR_SCANNER = ("\\", "\n", "\r", "\x00")


def parse_passback(text: str) -> dict[str, str | None]:
    """Parse ``repr(dict)`` text without ever executing it."""
    if type(text) is not str:
        raise PassbackError(f"expected a string, got {type(text).__name__}")
    params = scan_passback(text)
    return _parse_literal(text) if params is None else params


def scan_passback(text: str) -> dict[str, str] | None:
    """``{'k': 'v', 'k2': "v'2"}`` in repr's spacing, or None: "ask `ast.literal_eval`"."""
    last = len(text) - 1
    if last < 1 or text[0] != "{" or text[last] != "}":
        return None
    if any(char in text for char in _UNSAFE_FOR_SCANNER) or _has_surrogate(text):
        return None
    result: dict[str, str] = {}
    pos = 1
    while pos != last:
        key, pos = _quoted(text, pos, last)
        if key is None or text[pos : pos + 2] != ": ":
            return None
        value, pos = _quoted(text, pos + 2, last)
        if value is None:
            return None
        result[key] = value
        if pos != last:
            if text[pos : pos + 2] != ", ":
                return None
            pos += 2
    return result


def _quoted(text: str, pos: int, last: int) -> tuple[str | None, int]:
    """The plain string quoted at `pos` and the position after it, or (None, pos)."""
    quote = text[pos]
    if quote != "'" and quote != '"':
        return None, pos
    close = text.find(quote, pos + 1, last)
    return (None, pos) if close < 0 else (text[pos + 1 : close], close + 1)


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _parse_literal(text: str) -> dict[str, str | None]:
    if "\x00" in text:
        raise PassbackError("contains a NUL character")
    try:
        value = ast.literal_eval(text)
    except Exception as exc:  # literal_eval raises many types; all mean "not a literal"
        raise PassbackError(f"not a Python literal ({type(exc).__name__}: {exc})") from None
    if type(value) is not dict:
        raise PassbackError(f"expected a dict literal, got {type(value).__name__}")
    for key, item in value.items():
        if type(key) is not str:
            raise PassbackError(f"expected string keys, got {type(key).__name__} {_echo(key)}")
        if item is not None and type(item) is not str:
            raise PassbackError(f"{key!r}: expected a string or None, got {type(item).__name__}")
    return value


def _passback_values(text: str) -> tuple[str | None, str | None, str | None]:
    try:
        params = parse_passback(text)
    except PassbackError as exc:
        raise RejectedRecord(f"passback_params: {exc.reason}") from None
    values = tuple(map(params.get, PASSBACK_KEYS))
    for key, value in zip(PASSBACK_KEYS, values, strict=True):
        if value is None:
            continue
        if "\x00" in value:
            raise RejectedRecord(f"passback_params.{key}: contains a NUL character")
        if _has_surrogate(value):
            raise RejectedRecord(f"passback_params.{key}: contains a lone surrogate")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------- COPY text format
COPY_NULL = "\\N"
COPY_FLAG = {None: COPY_NULL, True: "t", False: "f"}  # 1 and 0 hash like True and False
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def to_copy_line(a: Attempt) -> str:
    """One line of PostgreSQL COPY text format, columns in `Attempt` order, ending in LF."""
    return _copy_line(a, a.created_at.isoformat(" ", "microseconds"))


def _copy_line(a: Attempt, created_text: str) -> str:
    key, sourcedid, url = (
        COPY_NULL if text is None else text.translate(_COPY_ESCAPES) for text in a[1:4]
    )
    return (
        f"{a.user_id}\t{key}\t{sourcedid}\t{url}\t{COPY_FLAG[a.is_correct]}\t{a.attempt_type}"
        f"\t{created_text}\n"
    )
