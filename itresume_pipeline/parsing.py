"""One API record -> one validated `Attempt` -> one PostgreSQL COPY line.

This module defines what a valid record and its row are, including the shape of
``passback_params`` (a *Python* dict literal inside a JSON string). The common,
well-formed record takes a short path of dict lookups and precompiled regexes; anything unusual
drops into small, slower functions whose only job is to name the field and the problem
precisely. On a big day most records never come here one by one: the column lane
(`columns.py`) turns whole chunks of plain records into the same lines, reusing this module's
regexes and scanner, and hands every record it cannot decide back to `to_row`.

Fields are checked in a fixed order, so the reason names the *first* bad field:
record, lti_user_id, attempt_type, is_correct, created_at, passback_params.
Every reason starts with that field name and a colon (``reason.split(":", 1)[0]``).

Decisions:
- ``lti_user_id``: 32 hex characters; upper-case hex is accepted and lower-cased, because the
  id is case-insensitive and ``unique_users`` must not count one user twice.
- ``is_correct``: ``0``, ``1``, ``true``, ``false`` or ``null`` for either attempt type (the
  API says ``null`` for ``run``, but a ``run`` that reports a result is not worth losing);
  anything else (``2``, ``1.0``, ``"1"``) is rejected.
- ``created_at``: ``YYYY-MM-DD HH:MM:SS`` with an optional ``.f`` to ``.ffffff`` and a space
  or ``T`` separator, ASCII digits only, a real date and time, naive UTC. No offsets.
- The five record fields are required; unknown extra record keys are ignored.
- ``passback_params``: its three known keys are optional (missing -> NULL); other keys are
  ignored, but every value must still be a string or ``None``.
- A bad record belongs to the day of its own ``created_at`` when that field alone is valid
  (`claimed_moment`): only that day quarantines it. With no readable ``created_at`` it belongs
  to the day whose payload holds it.
- No string may contain NUL (PostgreSQL ``text`` cannot hold it) or a lone surrogate (not
  encodable as UTF-8), and no field may exceed `MAX_FIELD_CHARS` characters.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import NamedTuple

from xxhash import xxh3_128_intdigest

__all__ = [
    "MAX_FIELD_CHARS",
    "Attempt",
    "PassbackError",
    "ReferenceResult",
    "RejectedRecord",
    "claimed_moment",
    "copy_line_digest",
    "parse_passback",
    "reference_rows",
    "to_copy_line",
    "to_row",
    "validate_record",
]

MAX_FIELD_CHARS = 10_000
_ECHO_CHARS = 60
_PASSBACK_KEYS = ("oauth_consumer_key", "lis_result_sourcedid", "lis_outcome_service_url")


class PassbackError(ValueError):
    """``passback_params`` is not a Python dict literal of str -> str-or-None."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RejectedRecord(ValueError):
    """A record that cannot become a row; `reason` starts with the field name and a colon."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def field(self) -> str:
        return self.reason.split(":", 1)[0]


class Attempt(NamedTuple):
    """One row of ``attempts``, in table column order (a tuple: cheap to build and compare)."""

    user_id: str
    oauth_consumer_key: str | None
    lis_result_sourcedid: str | None
    lis_outcome_service_url: str | None
    is_correct: bool | None
    attempt_type: str
    created_at: datetime


# --------------------------------------------------------------------------- passback_params
# What the hand scanner refuses, leaving it to `ast.literal_eval`: escapes (backslash), what the
# tokenizer rejects inside a one-line literal (CR, LF, NUL), and anything but `repr`'s exact
# spacing. Lone surrogates are refused too (`compile` cannot encode them). So the fast path is
# only ever a faster way to reach literal_eval's answer; the property tests hold it to that.
_UNSAFE_FOR_SCANNER = ("\\", "\n", "\r", "\x00")


def parse_passback(text: str) -> dict[str, str | None]:
    """Parse ``repr(dict)`` text without ever executing it.

    A hand scanner takes the usual shape (plain quoted strings, repr's spacing); anything else
    (escapes, ``None``, other spacing) goes through `ast.literal_eval`, which evaluates
    literals only.
    """
    if type(text) is not str:
        raise PassbackError(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_FIELD_CHARS:
        raise PassbackError(f"longer than {MAX_FIELD_CHARS} characters ({len(text)})")
    fast = _parse_simple(text)
    if fast is not None:
        return fast
    return _parse_literal(text)


def _parse_simple(text: str) -> dict[str, str | None] | None:
    """``{'k': 'v', 'k2': "v'2"}`` with plain strings, or None to say "use the real parser"."""
    last = len(text) - 1
    if last < 1 or text[0] != "{" or text[last] != "}":
        return None
    for char in _UNSAFE_FOR_SCANNER:
        if char in text:
            return None
    if not text.isascii() and _has_surrogate(text):
        return None
    find = text.find
    result: dict[str, str | None] = {}
    pos = 1
    if pos == last:
        return result
    while True:
        quote = text[pos]
        if quote != "'" and quote != '"':
            return None
        close = find(quote, pos + 1, last)
        if close < 0 or text[close + 1 : close + 3] != ": ":
            return None
        key = text[pos + 1 : close]
        pos = close + 3
        quote = text[pos]
        if quote != "'" and quote != '"':
            return None
        close = find(quote, pos + 1, last)
        if close < 0:
            return None
        result[key] = text[pos + 1 : close]
        pos = close + 1
        if pos == last:
            return result
        if text[pos : pos + 2] != ", ":
            return None
        pos += 2


def _has_surrogate(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _parse_literal(text: str) -> dict[str, str | None]:
    if len(text) > MAX_FIELD_CHARS:
        raise PassbackError(f"longer than {MAX_FIELD_CHARS} characters ({len(text)})")
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


# --------------------------------------------------------------------------- validation
_MISSING = object()
_HEX32 = re.compile(r"[0-9a-f]{32}").fullmatch
_HEX32_ANY_CASE = re.compile(r"[0-9a-fA-F]{32}").fullmatch
# repr() of the API's dict, keys in the API's order. `_known_shape` first rules out what would
# make a value differ from the text between its quotes (escapes, CR, LF, NUL: then literal_eval
# decides) and a tab (COPY would need escaping); non-ASCII text (course names in Cyrillic are
# common) is taken unless it holds a lone surrogate. Those `in` tests are memchr calls; the same
# exclusions as a regex character class cost twice the whole match.
_KNOWN_VALUE = r"'([^']*)'"
_KNOWN_SHAPE = re.compile(
    rf"\{{'oauth_consumer_key': {_KNOWN_VALUE}, 'lis_result_sourcedid': {_KNOWN_VALUE}"
    rf"(?:, 'lis_outcome_service_url': {_KNOWN_VALUE})?\}}"
).fullmatch


def _known_shape(text: str) -> tuple[str, str, str | None] | None:
    """The three values of a passback in the API's exact shape, or None."""
    if (
        len(text) > MAX_FIELD_CHARS
        or "\\" in text
        or "\n" in text
        or "\r" in text
        or "\t" in text
        or "\x00" in text
    ):
        return None
    match = _KNOWN_SHAPE(text)
    if match is None or (not text.isascii() and _has_surrogate(text)):
        return None
    return match.groups()


# A NamedTuple's own __new__ is a Python function; this skips that frame on the hot path.
_new_attempt = partial(tuple.__new__, Attempt)
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
).fullmatch


def validate_record(record: object) -> Attempt:
    """Turn one decoded JSON record into an `Attempt`, or raise `RejectedRecord`."""
    return to_row(record)[0]


def to_row(record: object) -> tuple[Attempt, str]:
    """`validate_record` and `to_copy_line` in one pass: the hot path of a day's load.

    Every check is a cheap test first; only a record that fails it pays for a slow function,
    which either accepts an unusual-but-valid value or raises with the precise reason.
    """
    if type(record) is not dict:
        raise RejectedRecord(f"record: expected a JSON object, got {_json_kind(record)}")
    get = record.get

    user_id = get("lti_user_id")
    if type(user_id) is not str or _HEX32(user_id) is None:
        user_id = _slow_user_id(get("lti_user_id", _MISSING))

    attempt_type = get("attempt_type")
    if attempt_type != "run" and attempt_type != "submit":
        _reject_attempt_type(get("attempt_type", _MISSING))

    is_correct = get("is_correct", _MISSING)
    if is_correct is not None and is_correct is not True and is_correct is not False:
        is_correct = _slow_is_correct(is_correct)

    created_text = get("created_at", _MISSING)
    created_at = _read_created_at(created_text)
    if len(created_text) != 26 or created_text[10] != " ":
        created_text = created_at.isoformat(" ", "microseconds")

    text = get("passback_params")
    known = _known_shape(text) if type(text) is str else None
    if known is not None:  # the API's own shape: values verbatim, nothing to escape for COPY
        key, sourcedid, url = known
        plain = True
    else:
        key, sourcedid, url, plain = _passback_values(get("passback_params", _MISSING))

    attempt = _new_attempt((user_id, key, sourcedid, url, is_correct, attempt_type, created_at))
    if not plain:
        return attempt, _copy_line(attempt, created_text)
    return attempt, (
        f"{user_id}\t{_NULL if key is None else key}\t{_NULL if sourcedid is None else sourcedid}"
        f"\t{_NULL if url is None else url}\t{_FLAG[is_correct]}\t{attempt_type}"
        f"\t{created_text}\n"
    )


def _slow_user_id(value: object) -> str:
    text = _require_str("lti_user_id", value)
    if _HEX32_ANY_CASE(text) is None:
        raise RejectedRecord(
            f"lti_user_id: expected 32 lowercase hex characters, got {_echo(text)}"
        )
    return text.lower()


def _reject_attempt_type(value: object) -> None:
    text = _require_str("attempt_type", value)
    raise RejectedRecord(f"attempt_type: expected 'run' or 'submit', got {_echo(text)}")


def _slow_is_correct(value: object) -> bool:
    if value is _MISSING:
        raise RejectedRecord("is_correct: missing")
    if type(value) is int and value in (0, 1):
        return value == 1
    raise RejectedRecord(f"is_correct: expected 0, 1, true, false or null, got {_echo(value)}")


def _read_created_at(value: object) -> datetime:
    """The one rule for ``created_at``, for a row and for the day a bad record belongs to."""
    if type(value) is not str or _TIMESTAMP(value) is None:
        text = _require_str("created_at", value)
        raise RejectedRecord(
            f"created_at: expected 'YYYY-MM-DD HH:MM:SS[.ffffff]', got {_echo(text)}"
        )
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise RejectedRecord(
            f"created_at: not a real date and time ({exc}), got {_echo(value)}"
        ) from None


def claimed_moment(record: object) -> datetime | None:
    """When a record says it happened, if it says so validly, whatever else is wrong with it.

    A bad record belongs to the day of its own readable ``created_at``: that day's load
    quarantines it, and any other day's load counts it as out of its window, like a good one.
    """
    if type(record) is not dict:
        return None
    try:
        return _read_created_at(record.get("created_at", _MISSING))
    except RejectedRecord:
        return None


def _passback_values(value: object) -> tuple[str | None, str | None, str | None, bool]:
    """Any other passback: parse it safely and check the values kept.

    Returns the three values and whether they are free of COPY escapes.
    """
    text = _require_str("passback_params", value)
    params = _parse_simple(text)
    plain = params is not None and "\t" not in text
    if params is None:
        try:
            params = _parse_literal(text)
        except PassbackError as exc:
            raise RejectedRecord(f"passback_params: {exc.reason}") from None
        for key in _PASSBACK_KEYS:
            item = params.get(key)
            if item is not None:
                _check_text(f"passback_params.{key}", item)
    get = params.get
    return get(_PASSBACK_KEYS[0]), get(_PASSBACK_KEYS[1]), get(_PASSBACK_KEYS[2]), plain


def _require_str(name: str, value: object) -> str:
    """Common checks of a top-level string field, in the order both implementations use."""
    if value is _MISSING:
        raise RejectedRecord(f"{name}: missing")
    if type(value) is not str:
        raise RejectedRecord(f"{name}: expected a string, got {_json_kind(value)}")
    _check_text(name, value)
    return value


def _check_text(name: str, text: str) -> None:
    if len(text) > MAX_FIELD_CHARS:
        raise RejectedRecord(f"{name}: longer than {MAX_FIELD_CHARS} characters ({len(text)})")
    if "\x00" in text:
        raise RejectedRecord(f"{name}: contains a NUL character, which PostgreSQL cannot store")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise RejectedRecord(f"{name}: contains a lone surrogate (not valid Unicode)") from None


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "true" if value else "false"
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        int: f"the number {value}",
        float: f"the number {value}",
    }.get(type(value), type(value).__name__)


def _echo(value: object) -> str:
    """A short, printable rendering of an offending value for a reason."""
    text = repr(value) if type(value) is str else _json_text(value)
    return text if len(text) <= _ECHO_CHARS else text[: _ECHO_CHARS - 1] + "…"


def _json_text(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


# --------------------------------------------------------------------------- COPY text format
_NULL = "\\N"
_FLAG = {None: _NULL, True: "t", False: "f"}  # 1 and 0 hash like True and False
# The API's own timestamp form, ``YYYY-MM-DD HH:MM:SS.ffffff``: the only one whose text order is
# its time order and which `to_row` copies verbatim (the fast lanes compare it as text).
CANONICAL_TIMESTAMP = (
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]) "
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}"
)
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = ("\\", "\t", "\n", "\r")


def to_copy_line(a: Attempt) -> str:
    """One line of PostgreSQL COPY text format, columns in `Attempt` order, ending in LF."""
    return _copy_line(a, a.created_at.isoformat(" ", "microseconds"))


def _copy_line(a: Attempt, created_text: str) -> str:
    user_id, key, sourcedid, url, is_correct, attempt_type, _ = a
    key = _NULL if key is None else _copy_escape(key)
    sourcedid = _NULL if sourcedid is None else _copy_escape(sourcedid)
    url = _NULL if url is None else _copy_escape(url)
    flag = _NULL if is_correct is None else ("t" if is_correct else "f")
    return f"{user_id}\t{key}\t{sourcedid}\t{url}\t{flag}\t{attempt_type}\t{created_text}\n"


def _copy_escape(text: str) -> str:
    # Only the passback strings can hold these; the other columns are validated to plain text.
    for char in _COPY_SPECIAL:
        if char in text:
            return text.translate(_COPY_ESCAPES)
    return text


# A random seed per process, so that nobody can prepare records whose digests collide.
DIGEST_SEED = secrets.randbits(64)


def copy_line_digest(line: bytes) -> int:
    """A 128-bit identity of a row (its UTF-8 COPY line): a set of these dedups a day's rows.

    XXH3-128 with a per-process seed. For one day's rows a collision is as unlikely as with a
    128-bit cryptographic digest, and it costs a tenth as much, on the hottest path of the load.
    """
    return xxh3_128_intdigest(line, DIGEST_SEED)


# --------------------------------------------------------------------------- reference
@dataclass
class ReferenceResult:
    """What a day's payload should produce; `rows` are the attempts to load, in order.

    Every record received is counted once:
    received == len(rows) + len(rejected) + duplicates + out_of_window.
    """

    received: int = 0
    rows: list[Attempt] = field(default_factory=list)
    rejected: list[tuple[str, object]] = field(default_factory=list)
    duplicates: int = 0
    out_of_window: int = 0


def reference_rows(payload: bytes, window_start: datetime, window_end: datetime) -> ReferenceResult:
    """A deliberately plain implementation of the same rules, to check the fast path against.

    Whole-payload `json.loads`, `ast.literal_eval` for every passback, one isinstance check at
    a time. Slow and memory-hungry on purpose: it shares no code with the fast path except
    the `Attempt` type, so the two agreeing means something.
    """
    result = ReferenceResult()
    seen: set[Attempt] = set()
    seen_rejects: set[str] = set()
    for record in json.loads(payload):
        result.received += 1
        try:
            attempt = _reference_attempt(record)
        except RejectedRecord as exc:
            moment = _reference_moment(record)
            text = json.dumps(record)  # the exact record, keys in order; 1, 1.0 and true differ
            if moment is not None and not window_start <= moment < window_end:
                result.out_of_window += 1  # another day's bad record: that day quarantines it
            elif text in seen_rejects:
                result.duplicates += 1
            else:
                seen_rejects.add(text)
                result.rejected.append((exc.reason, record))
            continue
        if not window_start <= attempt.created_at < window_end:
            result.out_of_window += 1
        elif attempt in seen:
            result.duplicates += 1
        else:
            seen.add(attempt)
            result.rows.append(attempt)
    return result


def _reference_attempt(record: object) -> Attempt:
    if not isinstance(record, dict):
        raise RejectedRecord("record: not an object")
    user_id = _reference_string(record, "lti_user_id")
    if len(user_id) != 32 or any(c not in "0123456789abcdefABCDEF" for c in user_id):
        raise RejectedRecord("lti_user_id: not 32 hex digits")
    attempt_type = _reference_string(record, "attempt_type")
    if attempt_type not in ("run", "submit"):
        raise RejectedRecord("attempt_type: not run/submit")
    if "is_correct" not in record:
        raise RejectedRecord("is_correct: missing")
    is_correct = record["is_correct"]
    if isinstance(is_correct, bool) or is_correct is None:
        pass
    elif type(is_correct) is int and is_correct in (0, 1):
        is_correct = bool(is_correct)
    else:
        raise RejectedRecord("is_correct: bad value")
    created_at = _reference_timestamp(_reference_string(record, "created_at"))
    params = _reference_passback(_reference_string(record, "passback_params"))
    return Attempt(
        user_id.lower(),
        params.get("oauth_consumer_key"),
        params.get("lis_result_sourcedid"),
        params.get("lis_outcome_service_url"),
        is_correct,
        attempt_type,
        created_at,
    )


def _reference_moment(record: object) -> datetime | None:
    """A bad record's own created_at, when that field by itself is valid."""
    if not isinstance(record, dict):
        return None
    try:
        return _reference_timestamp(_reference_string(record, "created_at"))
    except RejectedRecord:
        return None


def _reference_string(record: dict, name: str) -> str:
    if name not in record:
        raise RejectedRecord(f"{name}: missing")
    value = record[name]
    if not isinstance(value, str):
        raise RejectedRecord(f"{name}: not a string")
    _reference_text(name, value)
    return value


def _reference_text(name: str, value: str) -> None:
    if len(value) > MAX_FIELD_CHARS:
        raise RejectedRecord(f"{name}: too long")
    if "\x00" in value:
        raise RejectedRecord(f"{name}: NUL")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise RejectedRecord(f"{name}: surrogate")


def _reference_timestamp(text: str) -> datetime:
    def digits(part: str, sizes: tuple[int, ...]) -> bool:
        return len(part) in sizes and all(c in "0123456789" for c in part)

    bad = RejectedRecord("created_at: bad timestamp")
    if len(text) < 19 or text[10] not in " T":
        raise bad
    date_parts = text[:10].split("-")
    clock, dot, fraction = text[11:].partition(".")
    time_parts = clock.split(":")
    if len(date_parts) != 3 or len(time_parts) != 3:
        raise bad
    year, month, day = date_parts
    if not (digits(year, (4,)) and digits(month, (2,)) and digits(day, (2,))):
        raise bad
    if not all(digits(part, (2,)) for part in time_parts):
        raise bad
    if dot and not digits(fraction, (1, 2, 3, 4, 5, 6)):
        raise bad
    hour, minute, second = time_parts
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int(fraction.ljust(6, "0")) if dot else 0,
        )  # fmt: skip
    except ValueError:
        raise bad from None


def _reference_passback(text: str) -> dict:
    try:
        params = ast.literal_eval(text)
    except Exception:
        raise RejectedRecord("passback_params: not a literal") from None
    if not isinstance(params, dict):
        raise RejectedRecord("passback_params: not a dict")
    for key, value in params.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, str)):
            raise RejectedRecord("passback_params: not str -> str/None")
    for key in _PASSBACK_KEYS:
        if params.get(key) is not None:
            _reference_text(f"passback_params.{key}", params[key])
    return params
