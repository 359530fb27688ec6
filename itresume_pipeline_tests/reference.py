"""A deliberately plain statement of the record rules, to hold the fast lanes to.

Whole-payload `json.loads`, `ast.literal_eval` for every passback, one isinstance check at a
time, and a COPY writer of its own. Slow and memory-hungry on purpose: it shares nothing with
`itresume_pipeline.records`, so the two agreeing means something.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

MAX_FIELD_CHARS = 10_000
PASSBACK_KEYS = ("oauth_consumer_key", "lis_result_sourcedid", "lis_outcome_service_url")


class Attempt(NamedTuple):
    """One row of ``attempts``, in table column order."""

    user_id: str
    oauth_consumer_key: str | None
    lis_result_sourcedid: str | None
    lis_outcome_service_url: str | None
    is_correct: bool | None
    attempt_type: str
    created_at: datetime


def reference_line(a: Attempt) -> str:
    """The row as one line of PostgreSQL COPY text format."""

    def text(value: str | None) -> str:
        if value is None:
            return "\\N"
        for char, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
            value = value.replace(char, escaped)
        return value

    t = a.created_at
    stamp = (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}"
    )
    flag = {None: "\\N", True: "t", False: "f"}[a.is_correct]
    return "\t".join([a.user_id, *map(text, a[1:4]), flag, a.attempt_type, stamp]) + "\n"


class Refused(ValueError):
    """The reference's rejection; `field` is what the reason names first."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def field(self) -> str:
        return self.reason.split(":", 1)[0]


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
    """What loading `payload` as the day ``[window_start, window_end)`` must give."""
    result = ReferenceResult()
    seen: set[Attempt] = set()
    seen_rejects: set[str] = set()
    for record in json.loads(payload):
        result.received += 1
        try:
            attempt = reference_attempt(record)
        except Refused as exc:
            moment = reference_moment(record)
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


def reference_attempt(record: object) -> Attempt:
    if not isinstance(record, dict):
        raise Refused("record: not an object")
    user_id = _reference_string(record, "lti_user_id")
    if len(user_id) != 32 or any(c not in "0123456789abcdefABCDEF" for c in user_id):
        raise Refused("lti_user_id: not 32 hex digits")
    attempt_type = _reference_string(record, "attempt_type")
    if attempt_type not in ("run", "submit"):
        raise Refused("attempt_type: not run/submit")
    if "is_correct" not in record:
        raise Refused("is_correct: missing")
    is_correct = record["is_correct"]
    if isinstance(is_correct, bool) or is_correct is None:
        pass
    elif type(is_correct) is int and is_correct in (0, 1):
        is_correct = bool(is_correct)
    else:
        raise Refused("is_correct: bad value")
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


def reference_moment(record: object) -> datetime | None:
    """A bad record's own created_at, when that field by itself is valid."""
    if not isinstance(record, dict):
        return None
    try:
        return _reference_timestamp(_reference_string(record, "created_at"))
    except Refused:
        return None


def _reference_string(record: dict, name: str) -> str:
    if name not in record:
        raise Refused(f"{name}: missing")
    value = record[name]
    if not isinstance(value, str):
        raise Refused(f"{name}: not a string")
    _reference_text(name, value)
    return value


def _reference_text(name: str, value: str) -> None:
    if len(value) > MAX_FIELD_CHARS:
        raise Refused(f"{name}: too long")
    if "\x00" in value:
        raise Refused(f"{name}: NUL")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise Refused(f"{name}: surrogate")


def _reference_timestamp(text: str) -> datetime:
    def digits(part: str, sizes: tuple[int, ...]) -> bool:
        return len(part) in sizes and all(c in "0123456789" for c in part)

    bad = Refused("created_at: bad timestamp")
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
        raise Refused("passback_params: not a literal") from None
    if not isinstance(params, dict):
        raise Refused("passback_params: not a dict")
    for key, value in params.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, str)):
            raise Refused("passback_params: not str -> str/None")
    for key in PASSBACK_KEYS:
        if params.get(key) is not None:
            _reference_text(f"passback_params.{key}", params[key])
    return params
