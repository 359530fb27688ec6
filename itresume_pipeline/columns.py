"""The column lane: a chunk of API records turned into COPY lines a column at a time.

Record by record, Python bytecode would make the parser, not PostgreSQL, the bottleneck of a
1,000,000-record day. Here msgspec decodes the chunk straight into `records.ApiRecord` structs,
type-checked in C; the value rules of `records` then run over whole columns with C-level
operations (``bytes.translate`` or one regex over the joined column, ``set``, ``min``, ``max``,
and msgspec again for the passbacks, whose Python quotes become JSON's).

A record that fails a check is not judged here: its index goes back to `records.to_row`, which
accepts it or names the bad field. So this lane only ever writes the line `to_row` would have
written; ``test_fast_path_equivalence`` holds the two to that with generated records.
"""

from __future__ import annotations

import operator
import re
from functools import lru_cache
from itertools import compress, repeat

import msgspec
import orjson

from itresume_pipeline.records import (
    CANONICAL_TIMESTAMP,
    COPY_FLAG,
    COPY_NULL,
    HEX_DIGITS,
    PASSBACK_KEYS,
    ApiRecord,
    RejectedRecord,
    is_user_id,
    read_timestamp,
    scan_passback,
)

__all__ = ["RecordChunk", "column_lines", "decode_records", "raw_elements"]


class _Passback(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """``passback_params`` after its quotes were made JSON's; a missing key is COPY's NULL.

    No value can be the text ``\\N`` itself: passbacks with a backslash never get here.
    """

    oauth_consumer_key: str = COPY_NULL
    lis_result_sourcedid: str = COPY_NULL
    lis_outcome_service_url: str = COPY_NULL


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
_PLACEHOLDER = ApiRecord("0" * 32, "run", None, "", "{}")


def decode_records(data: bytes) -> RecordChunk:
    """The chunk's records as structs; raises one of `DECODE_ERRORS` or orjson's error if not.

    Every value is decoded and type-checked, none is skipped, so whatever msgspec accepts here
    orjson accepts with the same values: the two lanes start from the same records. When the
    whole chunk does not decode, it is decoded element by element, and the few records that
    do not (a wrong type, a missing field) are kept as orjson reads them, for `to_row`.
    """
    try:
        return RecordChunk(_RECORDS.decode(data), data, {})
    except DECODE_ERRORS:
        pass
    records: list[ApiRecord] = []
    odd: dict[int, object] = {}
    for i, element in enumerate(_RAW_ELEMENTS.decode(data)):
        try:
            records.append(_ONE_RECORD.decode(element))
        except DECODE_ERRORS:
            odd[i] = orjson.loads(bytes(element))  # undecodable: the caller's orjson path
            records.append(_PLACEHOLDER)
    return RecordChunk(records, data, odd)


def raw_elements(data: bytes) -> list[msgspec.Raw]:
    """The JSON text of each element of an array, undecoded (cheap: for counts and quotes)."""
    return _RAW_ELEMENTS.decode(data)


# --------------------------------------------------------------------------- the lane
_HEX_DIGITS = HEX_DIGITS.encode()
_TIMESTAMPS = re.compile(rf"(?:{CANONICAL_TIMESTAMP}\n)*").fullmatch
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
) -> tuple[list[str | None], list[int]]:
    """COPY lines for `records` (None where undecided) and the indices left undecided.

    `start_text` and `end_text` are the window in canonical timestamp text. The undecided
    records are the ones some check failed for: the caller hands them to `to_row`.
    """
    user_ids, kinds, flags, created, passbacks = (list(map(get, records)) for get in _COLUMNS)
    odd = getattr(records, "odd", ())
    for i in odd:  # placeholders: inside the window, so the column checks still hold
        created[i] = start_text
    undecided = set(odd)
    user_ids, bad_user_ids = _user_ids(user_ids)
    undecided.update(bad_user_ids)
    undecided.update(_bad_timestamps(created, start_text, end_text))
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
                map(COPY_FLAG.__getitem__, flags),
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


def _user_ids(values: list[str]) -> tuple[list[str], list[int]]:
    """The ids lower-cased, and the indices of those that are not hex (the struct checked the
    length). The usual column is already lower-case hex: one ``translate`` proves it."""
    if _only_hex(values):
        return values, []
    lowered = list(map(str.lower, values))
    if _only_hex(lowered):
        return lowered, []
    return lowered, [i for i, value in enumerate(lowered) if not is_user_id(value)]


def _only_hex(values: list[str]) -> bool:
    joined = "".join(values)
    return joined.isascii() and not joined.encode().translate(None, _HEX_DIGITS)


def _bad_timestamps(values: list[str], start_text: str, end_text: str) -> list[int]:
    """Canonical ``YYYY-MM-DD HH:MM:SS.ffffff`` of a real date inside the window.

    In that form text order is time order, so ``min`` and ``max`` check the window. Other
    lengths (no fraction, a ``T``) are left to the per-record lane, which normalizes them.
    """
    odd, regular = _split_by_length(values, 26)
    if not regular or (
        _TIMESTAMPS("\n".join(regular) + "\n")
        and min(regular) >= start_text
        and max(regular) < end_text
        and all(map(_real_date, set(map(_DATE, regular))))
    ):
        return odd
    return [
        i
        for i, value in enumerate(values)
        if not (
            len(value) == 26
            and _TIMESTAMPS(value + "\n")
            and start_text <= value < end_text
            and _real_date(value[:10])
        )
    ]


@lru_cache(maxsize=64)
def _real_date(day: str) -> bool:
    """Is ``YYYY-MM-DD`` (its digits checked) a real date, by `read_timestamp`'s rule? A chunk
    has one or two dates, so each is judged once."""
    try:
        read_timestamp(f"{day} 00:00:00")
    except RejectedRecord:
        return False
    return True


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
        params = scan_passback(passbacks[i])
        if params is None or "\t" in passbacks[i]:
            undecided.add(i)
            continue
        key, sourcedid, url = map(params.get, PASSBACK_KEYS)
        scanned[i] = (
            COPY_NULL if key is None else key,
            COPY_NULL if sourcedid is None else sourcedid,
            COPY_NULL if url is None else url,
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
