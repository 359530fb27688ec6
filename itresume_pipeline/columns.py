"""The column lane: a chunk of API records turned into COPY lines a column at a time.

The per-record lane (`payload._lines_of`) spends about 3 µs of Python bytecode on each record,
and on a 1,000,000-record day that made the parser, not PostgreSQL, the bottleneck of the load.
Here msgspec decodes the chunk straight into typed, slotted structs: a record whose JSON types
are not exactly the API's (strings, ``is_correct`` in true/false/null/0/1, no extra or missing
keys) fails the whole decode, and the chunk goes back to orjson and the per-record lane. Every
other check runs over a whole column with C-level operations: ``bytes.translate`` or one regex
over the joined column, ``set``, ``min`` and ``max``, and msgspec again for the passbacks, whose
Python quotes become JSON's.

A record that fails a value check is not judged here. Its index goes back to the per-record
lane, which accepts it or rejects it with its precise reason. So this lane only ever writes the
line that the per-record lane would have written; ``test_fast_path_equivalence`` holds the two to
that with generated records.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from itertools import compress, repeat
from typing import Annotated, Literal

import msgspec
import orjson

from itresume_pipeline.parsing import (
    _FLAG,
    _HEX32,
    _NULL,
    _PASSBACK_KEYS,
    CANONICAL_TIMESTAMP,
    MAX_FIELD_CHARS,
    _parse_simple,
)

__all__ = ["ApiRecord", "RecordChunk", "column_lines", "decode_records"]


class ApiRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One record with exactly the API's five keys and JSON types (any order)."""

    lti_user_id: str
    passback_params: Annotated[str, msgspec.Meta(max_length=MAX_FIELD_CHARS)]
    is_correct: bool | Literal[0, 1] | None
    attempt_type: str
    created_at: str


class _Passback(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """``passback_params`` after its quotes were made JSON's; a missing key is COPY's NULL.

    No value can be the text ``\\N`` itself: passbacks with a backslash never get here.
    """

    oauth_consumer_key: str = _NULL
    lis_result_sourcedid: str = _NULL
    lis_outcome_service_url: str = _NULL


class RecordChunk(list):
    """The structs of one chunk, with the JSON they came from (to quote a rejected record).

    `odd` maps the index of each record the typed decode refused to orjson's reading of it; its
    place in the list holds a placeholder, and the column lane leaves it to the per-record lane.
    """

    __slots__ = ("data", "odd")

    def __init__(self, records: list[ApiRecord], data: bytes, odd: dict[int, object]) -> None:
        super().__init__(records)
        self.data = data
        self.odd = odd


_RECORDS = msgspec.json.Decoder(list[ApiRecord])
_ONE_RECORD = msgspec.json.Decoder(ApiRecord)
_RAW_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])
_PASSBACK = msgspec.json.Decoder(_Passback)
# msgspec signals a bad document with DecodeError (ValidationError is one), one nested deeper
# than it recurses with RecursionError, and invalid UTF-8 or a lone surrogate with UnicodeError.
DECODE_ERRORS = (msgspec.DecodeError, RecursionError, UnicodeError)
# Above this share of odd records, a chunk is cheaper to hand whole to the per-record lane.
MAX_ODD_SHARE = 0.05
_PLACEHOLDER = ApiRecord("0" * 32, "{}", None, "run", "")


def decode_records(data: bytes) -> RecordChunk:
    """The chunk's records as structs; raises one of `DECODE_ERRORS` or orjson's error if not.

    Every value is decoded and type-checked, none is skipped, so whatever msgspec accepts here
    orjson accepts with the same values: the two lanes start from the same records. When the
    whole chunk does not decode, it is decoded element by element, and the few records that
    do not (a wrong type, an extra key) are kept as orjson reads them.
    """
    try:
        return RecordChunk(_RECORDS.decode(data), data, {})
    except DECODE_ERRORS:
        pass
    elements = _RAW_ELEMENTS.decode(data)
    most = max(1, int(len(elements) * MAX_ODD_SHARE))
    records: list[ApiRecord] = []
    odd: dict[int, object] = {}
    for i, element in enumerate(elements):
        try:
            records.append(_ONE_RECORD.decode(element))
        except DECODE_ERRORS:
            if len(odd) == most:
                raise
            odd[i] = orjson.loads(bytes(element))  # undecodable: the caller's orjson path
            records.append(_PLACEHOLDER)
    return RecordChunk(records, data, odd)


def raw_elements(data: bytes) -> list[msgspec.Raw]:
    """The JSON text of each element of an array, undecoded (cheap: for counts and quotes)."""
    return _RAW_ELEMENTS.decode(data)


# --------------------------------------------------------------------------- the lane
_HEX_DIGITS = b"0123456789abcdef"
_TIMESTAMPS = re.compile(rf"(?:{CANONICAL_TIMESTAMP}\n)*").fullmatch
_KINDS = frozenset({"run", "submit"})
_DATE = operator.itemgetter(slice(0, 10))
# What can make a passback's JSON reading differ from its Python reading: a double quote (repr
# wrote "O'Reilly") and a backslash (an escape). Line breaks, tabs and NUL need no test: JSON
# refuses them inside strings, and between tokens both read them alike.
_NOT_PLAIN = ('"', "\\")
# Replacing quotes and calling json.loads is wrong in general: a value holding an apostrophe
# comes in double quotes. It is exact only for a passback with neither a double quote nor a
# backslash, where every ' is a delimiter; `_not_plain` sends every other one to to_row's scanner
# or to the per-record lane, and the property tests compare the result with ast.literal_eval's.
_TO_JSON = operator.methodcaller("replace", "'", '"')
_KEY = operator.attrgetter("oauth_consumer_key")
_SOURCEDID = operator.attrgetter("lis_result_sourcedid")
_URL = operator.attrgetter("lis_outcome_service_url")
_COLUMNS = tuple(map(operator.attrgetter, ApiRecord.__struct_fields__))
_EMPTY_PASSBACK = _Passback()


def column_lines(
    records: list[ApiRecord],
    start_text: str,
    end_text: str,
    real_date: Callable[[str], bool],
) -> tuple[list[str | None], list[int]]:
    """COPY lines for `records` (None where undecided) and the indices left undecided.

    `start_text` and `end_text` are the window in canonical timestamp text; `real_date` says
    whether a ``YYYY-MM-DD`` is a real date. The undecided records are the ones some value
    check failed for: the caller hands them to the per-record lane.
    """
    user_ids, passbacks, flags, kinds, created = (list(map(get, records)) for get in _COLUMNS)
    odd = getattr(records, "odd", ())
    for i in odd:  # placeholders: inside the window, so the column checks still hold
        created[i] = start_text
    undecided = set(odd)
    undecided.update(_bad_user_ids(user_ids))
    undecided.update(_bad_kinds(kinds))
    undecided.update(_bad_timestamps(created, start_text, end_text, real_date))
    quoted, escaped = _not_plain(passbacks)
    undecided.update(escaped)
    scanned = _scan_quoted(passbacks, quoted, undecided)
    for i in undecided.union(scanned):  # placeholders keep the columns aligned
        passbacks[i] = "{}"
    parsed = _parse_passbacks(passbacks, undecided)
    keys, sourcedids, urls = (list(map(get, parsed)) for get in (_KEY, _SOURCEDID, _URL))
    for i, (key, sourcedid, url) in scanned.items():
        keys[i], sourcedids[i], urls[i] = key, sourcedid, url
    lines: list[str | None] = list(
        map(
            "\t".join,
            zip(
                user_ids,
                keys,
                sourcedids,
                urls,
                map(_FLAG.__getitem__, flags),
                kinds,
                map(operator.add, created, repeat("\n")),
                strict=True,
            ),
        )
    )
    order = sorted(undecided)
    for i in order:
        lines[i] = None
    return lines, order


def _bad_user_ids(values: list[str]) -> list[int]:
    odd, regular = _split_by_length(values, 32)
    joined = "".join(regular)
    if joined.isascii() and not joined.encode().translate(None, _HEX_DIGITS):
        return odd  # every character of the others is a lowercase hex digit
    return [i for i, value in enumerate(values) if _HEX32(value) is None]


def _bad_kinds(values: list[str]) -> list[int]:
    if set(values) <= _KINDS:
        return []
    return [i for i, value in enumerate(values) if value not in _KINDS]


def _bad_timestamps(
    values: list[str], start_text: str, end_text: str, real_date: Callable[[str], bool]
) -> list[int]:
    """Canonical ``YYYY-MM-DD HH:MM:SS.ffffff`` of a real date inside the window.

    In that form text order is time order, so ``min`` and ``max`` check the window. Other
    lengths (no fraction, a ``T``) are left to the per-record lane, which normalizes them.
    """
    odd, regular = _split_by_length(values, 26)
    if not regular or (
        _TIMESTAMPS("\n".join(regular) + "\n")
        and min(regular) >= start_text
        and max(regular) < end_text
        and all(map(real_date, set(map(_DATE, regular))))
    ):
        return odd
    return [
        i
        for i, value in enumerate(values)
        if not (
            len(value) == 26
            and _TIMESTAMPS(value + "\n")
            and start_text <= value < end_text
            and real_date(value[:10])
        )
    ]


def _split_by_length(values: list[str], length: int) -> tuple[list[int], list[str]]:
    """Indices of the values not `length` long, and the values that are (C-level loops)."""
    lengths = list(map(len, values))
    if set(lengths) <= {length}:
        return [], values
    odd = list(compress(range(len(values)), map(operator.ne, lengths, repeat(length))))
    return odd, list(compress(values, map(operator.eq, lengths, repeat(length))))


def _not_plain(passbacks: list[str]) -> tuple[list[int], list[int]]:
    """Passbacks whose quotes cannot simply be swapped for JSON's: (with ``"``, with ``\\``).

    Without double quotes or backslashes, each ``'`` is a string delimiter, so swapping it for
    ``"`` turns the Python literal into JSON with the same strings (whitespace around and
    between the tokens reads alike in both). (The decode already capped the length.)
    """
    joined = "".join(passbacks)
    found = []
    for char in _NOT_PLAIN:
        flagged = map(operator.contains, passbacks, repeat(char)) if char in joined else ()
        found.append(list(compress(range(len(passbacks)), flagged)))
    return found[0], found[1]


def _scan_quoted(
    passbacks: list[str], quoted: list[int], undecided: set[int]
) -> dict[int, tuple[str, str, str]]:
    """Passbacks where repr double-quoted a value (``"O'Reilly"``), read by to_row's own scanner.

    What that scanner refuses, or what holds a tab (COPY would escape it), is left undecided.
    """
    scanned = {}
    for i in quoted:
        if i in undecided:
            continue
        params = _parse_simple(passbacks[i])
        if params is None or "\t" in passbacks[i]:
            undecided.add(i)
            continue
        key, sourcedid, url = map(params.get, _PASSBACK_KEYS)
        scanned[i] = (
            _NULL if key is None else key,
            _NULL if sourcedid is None else sourcedid,
            _NULL if url is None else url,
        )
    return scanned


def _parse_passbacks(passbacks: list[str], undecided: set[int]) -> list[_Passback]:
    try:
        return list(map(_PASSBACK.decode, map(_TO_JSON, passbacks)))
    except DECODE_ERRORS:
        pass
    parsed = []
    for i, text in enumerate(passbacks):
        try:
            parsed.append(_PASSBACK.decode(_TO_JSON(text)))
        except DECODE_ERRORS:
            undecided.add(i)
            parsed.append(_EMPTY_PASSBACK)
    return parsed
