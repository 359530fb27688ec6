"""What an API record must be: `ApiRecord` for the JSON types, one rule function per value.

`column_lines` proves each rule for a whole column with C-level operations (so PostgreSQL, not
the parser, bounds a day's load) and calls the rule only for values it cannot vouch for."""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Iterable
from datetime import date, datetime
from itertools import compress, count, repeat
from typing import Annotated, Literal

import msgspec
import orjson

MAX_FIELD_CHARS = 10_000
HEX_DIGITS = "0123456789abcdef"
PASSBACK_KEYS = ("oauth_consumer_key", "lis_result_sourcedid", "lis_outcome_service_url")
TIMESTAMP = re.compile(
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[ T]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
)
COPY_NULL = "\\N"
COPY_FLAG = {None: COPY_NULL, True: "t", False: "f"}  # 1 and 0 hash like True and False
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_HEX_ID = re.compile(f"[{HEX_DIGITS}]{{32}}").fullmatch


class ApiRecord(msgspec.Struct, gc=False):
    """One record's JSON types; field order is the order in which fields are judged."""

    lti_user_id: Annotated[str, msgspec.Meta(min_length=32, max_length=32)]
    attempt_type: Literal["run", "submit"]
    is_correct: bool | Literal[0, 1] | None
    created_at: str
    passback_params: Annotated[str, msgspec.Meta(max_length=MAX_FIELD_CHARS)]


class RejectedRecord(ValueError):
    """A record that cannot become a row; `reason` starts with the field name and a colon."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def field(self) -> str:
        return self.reason.split(":", 1)[0]


class PassbackError(RejectedRecord):
    """``passback_params`` is not a Python dict literal of str -> str-or-None."""


# --------------------------------------------------------------------------- one record
def read_user_id(value: str) -> str:
    """``lti_user_id``: 32 hex digits, lower-cased so ``unique_users`` counts an id once."""
    lowered = value.lower()
    if _HEX_ID(lowered) is None:
        raise RejectedRecord(f"lti_user_id: expected 32 hex characters, got {_echo(value)}")
    return lowered


def read_timestamp(text: str) -> datetime:
    """``created_at``: ``YYYY-MM-DD[ T]HH:MM:SS[.f to .ffffff]``, a real moment, naive UTC."""
    if TIMESTAMP.fullmatch(text) is None:
        raise RejectedRecord(
            f"created_at: expected 'YYYY-MM-DD HH:MM:SS[.ffffff]', got {_echo(text)}"
        )
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise RejectedRecord(f"created_at: not a real date and time ({exc})") from None


def copy_time(moment: datetime) -> str:
    """The canonical timestamp text: what COPY gets, and what the window compares as text."""
    return moment.isoformat(" ", "microseconds")


_RULES = {"lti_user_id": read_user_id, "created_at": read_timestamp}
_JSON_NAMES = {list: "array", type(None): "null"}
_FIELDS = [(f.name, f.type, _RULES.get(f.name)) for f in msgspec.structs.fields(ApiRecord)]


def to_row(record: object) -> str:
    """A decoded JSON record as its COPY line, or `RejectedRecord` naming the first bad field."""
    if type(record) is not dict:  # in msgspec's words: the JSON type it is instead
        kind = _JSON_NAMES.get(type(record), type(record).__name__)
        raise RejectedRecord(f"record: Expected `object`, got `{kind}`")
    values = []
    for name, kind, rule in _FIELDS:
        if name not in record:
            raise RejectedRecord(f"{name}: missing")
        try:
            values.append(msgspec.convert(record[name], kind))
        except msgspec.ValidationError as exc:
            raise RejectedRecord(f"{name}: {exc}") from None
        if rule is not None:  # the value rules in field order, so the first bad field is named
            rule(values[-1])
    lines, reasons, _ = column_lines([ApiRecord(*values)])
    if reasons:
        raise RejectedRecord(reasons[0])
    return lines[0]  # type: ignore[return-value]


def claimed_moment(record: object) -> datetime | None:
    """When a bad record says it happened, if it says so validly: the day it belongs to."""
    text = record.get("created_at") if type(record) is dict else None
    try:
        return read_timestamp(text) if type(text) is str else None
    except RejectedRecord:
        return None


def _echo(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


# --------------------------------------------------------------------------- passback_params
# repr's own form, without what only `ast.literal_eval` reads right: escapes, CR, LF, NUL, lone
# surrogates, None, other spacing. So this is only a faster way to literal_eval's answer.
_PLAIN = r"""('[^'\\\r\n\x00\ud800-\udfff]*'|"[^"\\\r\n\x00\ud800-\udfff]*")"""
_PAIR = re.compile(rf"{_PLAIN}: {_PLAIN}(?:, |(\}}\Z))").match  # group 3: the closing brace


def parse_passback(text: str) -> dict[str, str | None]:
    """A *Python* dict literal of str -> str-or-None (``repr(dict)``), never executed."""
    params: dict[str, str | None] = {}
    pair = _PAIR(text, 1) if text[:1] == "{" else None
    while pair is not None:  # one C-level match per pair is faster than a fullmatch and findall
        params[pair[1][1:-1]] = pair[2][1:-1]
        if pair[3]:
            return params
        pair = _PAIR(text, pair.end())
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


def passback_values(text: str) -> tuple[str | None, str | None, str | None]:
    """``passback_params``' three known values (missing -> None), or `RejectedRecord`."""
    try:
        params = parse_passback(text)
    except PassbackError as exc:
        raise RejectedRecord(f"passback_params: {exc.reason}") from None
    values = tuple(map(params.get, PASSBACK_KEYS))
    for key, value in zip(PASSBACK_KEYS, values, strict=True):
        if value is None or "\\" not in text:  # only an escape makes NUL or a lone surrogate
            continue
        if "\x00" in value:
            raise RejectedRecord(f"passback_params.{key}: contains a NUL character")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise RejectedRecord(f"passback_params.{key}: contains a lone surrogate") from None
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------- a chunk
# msgspec's errors for a bad document, one nested too deep, and invalid UTF-8.
DECODE_ERRORS = (msgspec.DecodeError, RecursionError, UnicodeError)
_RECORDS = msgspec.json.Decoder(list[ApiRecord])
_ONE_RECORD = msgspec.json.Decoder(ApiRecord)
raw_elements = msgspec.json.Decoder(list[msgspec.Raw]).decode


class _Passback(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """``passback_params`` after its quotes were made JSON's; a missing key is COPY's NULL."""

    oauth_consumer_key: str = COPY_NULL
    lis_result_sourcedid: str = COPY_NULL
    lis_outcome_service_url: str = COPY_NULL


_PASSBACK = msgspec.json.Decoder(_Passback)


class RecordChunk(list):
    """`ApiRecord`s, or orjson's reading of those msgspec refused (at `untyped`); `data` quotes."""

    __slots__ = ("data", "untyped")

    def __init__(self, records: list[object], data: bytes, untyped: list[int]) -> None:
        super().__init__(records)
        self.data, self.untyped = data, untyped


def decode_records(data: bytes) -> RecordChunk:
    """The chunk's records, element by element if it does not decode as `ApiRecord`s at once."""
    try:
        return RecordChunk(_RECORDS.decode(data), data, [])
    except DECODE_ERRORS:
        pass
    records: list[object] = []
    untyped = []
    for i, element in enumerate(raw_elements(data)):
        try:
            records.append(_ONE_RECORD.decode(element))
        except DECODE_ERRORS:
            records.append(orjson.loads(bytes(element)))
            untyped.append(i)
    return RecordChunk(records, data, untyped)


_COLUMNS = tuple(map(operator.attrgetter, ApiRecord.__struct_fields__))
_HEX = HEX_DIGITS.encode()
_TIMESTAMPS = re.compile(rf"(?:{TIMESTAMP.pattern}\n)*").fullmatch
_DAY = operator.itemgetter(slice(0, 10))
_TO_JSON = operator.methodcaller("replace", "'", '"')
_NULLS = {None: COPY_NULL}
_PASSBACK_COLUMNS = tuple(map(operator.attrgetter, _Passback.__struct_fields__))


def column_lines(records: list[ApiRecord]) -> tuple[list, dict[int, str], list[str]]:
    """COPY lines for `records` (None where rejected), the reasons by index, and each record's
    ``created_at`` in canonical text ("" where unreadable), for the window."""
    ids, kinds, flags, stamps, texts = (list(map(get, records)) for get in _COLUMNS)
    reasons: dict[int, str] = {}
    joined = "".join(ids)  # the usual column is lower-case hex already (the struct checked length)
    if not joined.isascii() or joined.encode().translate(None, _HEX):
        _each(ids, read_user_id, reasons)
    created = _timestamps(stamps, reasons)
    keys, sourcedids, urls = _passbacks(texts, reasons)
    flag_texts = map(COPY_FLAG.__getitem__, flags)
    ends = map(operator.add, created, repeat("\n"))
    columns = zip(ids, keys, sourcedids, urls, flag_texts, kinds, ends, strict=True)
    lines: list[str | None] = list(map("\t".join, columns))
    for i in reasons:
        lines[i] = None
    return lines, reasons, created


def _each(values: list, rule: Callable, reasons: dict, indices: Iterable | None = None) -> list:
    """`rule` in place at `indices` (all); a rejected value keeps the first reason and is ""."""
    for i in range(len(values)) if indices is None else indices:
        try:
            values[i] = rule(values[i])
        except RejectedRecord as exc:
            reasons.setdefault(i, exc.reason)
            values[i] = ""
    return values


def _timestamps(stamps: list[str], reasons: dict[int, str]) -> list[str]:
    """Canonical ``created_at``: the usual 26-character texts proven at once, others one by one."""
    lengths = list(map(len, stamps))
    odd = list(compress(count(), map(operator.ne, lengths, repeat(26))))
    regular = list(compress(stamps, map(operator.eq, lengths, repeat(26)))) if odd else stamps
    joined = "\n".join(regular) + "\n"
    proven = (
        joined.count("\n") == len(regular)
        and _TIMESTAMPS(joined) is not None
        and all(map(_real_day, set(map(_DAY, regular))))
    )
    if not proven:
        return _each(stamps, _canonical, reasons)
    if "T" in joined:  # the only place a T can be, so replacing it is the canonical form
        stamps = [stamp.replace("T", " ") for stamp in stamps]
    return _each(stamps, _canonical, reasons, odd)


def _canonical(text: str) -> str:
    return copy_time(read_timestamp(text))


def _real_day(day: str) -> bool:
    try:
        return bool(date.fromisoformat(day))  # its shape already proven by the regex
    except ValueError:
        return False


def _passbacks(texts: list[str], reasons: dict[int, str]) -> tuple[list, list, list]:
    """The three known values as COPY text. Without ``"`` or ``\\`` every ``'`` delimits a
    string, so swapping it for ``"`` makes JSON; the rest go through `passback_values`."""
    joined = "".join(texts)
    special = {
        i
        for char in '"\\'
        if char in joined
        for i in compress(count(), map(operator.contains, texts, repeat(char)))
    }
    plain = list(texts)
    for i in special:
        plain[i] = "{}"
    try:
        parsed = list(map(_PASSBACK.decode, map(_TO_JSON, plain)))
    except DECODE_ERRORS:
        parsed = []
        for i, text in enumerate(plain):
            try:
                parsed.append(_PASSBACK.decode(_TO_JSON(text)))
            except DECODE_ERRORS:
                special.add(i)
                parsed.append(_Passback())
    keys, sourcedids, urls = (list(map(get, parsed)) for get in _PASSBACK_COLUMNS)
    for i in special:
        try:
            values = passback_values(texts[i])
        except RejectedRecord as exc:
            reasons.setdefault(i, exc.reason)
            continue
        if "\\" in texts[i] or "\t" in texts[i]:  # only these can hold what COPY escapes
            values = tuple(v and v.translate(_COPY_ESCAPES) for v in values)
        keys[i], sourcedids[i], urls[i] = map(_NULLS.get, values, values)
    return keys, sourcedids, urls
