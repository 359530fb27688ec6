"""Stream a day's payload (one JSON array) into batches of COPY lines in flat memory.

A chunk is cut at a late ``},`` whose prefix decodes as an array (proof of a top-level cut);
failing that an exact scanner finds the boundaries, so one corrupt record is quarantined."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from itertools import repeat
from typing import BinaryIO, NamedTuple

import orjson
from xxhash import xxh3_128_intdigest

from itresume_pipeline.records import (
    DECODE_ERRORS,
    ApiRecord,
    RecordChunk,
    RejectedRecord,
    claimed_moment,
    column_lines,
    copy_time,
    decode_records,
    raw_elements,
    to_row,
)

DEFAULT_CHUNK_SIZE = 512 << 10
_WS = b" \t\n\r"
_CANDIDATE = re.compile(rb"\}[ \t\n\r]*,")
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{},]', re.DOTALL)
_CLOSER = {ord("["): ord("]"), ord("{"): ord("}")}
_NOT_ACCEPTED = (orjson.JSONDecodeError, *DECODE_ERRORS)


class PayloadError(ValueError):
    """The payload as a whole is unusable (not an array, truncated, trailing data)."""


class UndecodableRecord(NamedTuple):
    """One array element that is not valid JSON; kept so it can be quarantined, not lost."""

    raw: str
    reason: str


def count_records(stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Elements in a complete JSON array (undecoded), or `PayloadError`: a landing file's proof
    that it is whole."""
    return sum(map(len, _Splitter(stream, chunk_size, raw_elements).batches()))


def iter_records(stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[list[object]]:
    """The decoded elements (or `UndecodableRecord`s) of a JSON array, a batch per cut."""
    return _Splitter(stream, chunk_size, orjson.loads).batches()


class _Splitter:
    """Holds the unconsumed bytes; `_buf` always begins at the start of an array element."""

    def __init__(self, stream: BinaryIO, chunk_size: int, loads: Callable[[bytes], list]) -> None:
        self._loads, self._stream, self._chunk = loads, stream, chunk_size
        self._buf = bytearray()  # appends and front deletions are amortized O(1)
        self._base = 0  # offset of _buf[0] in the payload
        self._eof = False
        self._after_comma = False  # an element must follow (no trailing comma)

    def _read(self) -> bool:
        data = self._stream.read(self._chunk)
        self._buf += data
        self._eof = not data
        return bool(data)

    def _cut(self, comma: int, records: list) -> list:
        del self._buf[: comma + 1]
        self._base += comma + 1
        self._after_comma = True
        return records

    def batches(self) -> Iterator[list]:
        self._open()
        fresh = 0  # _buf[fresh:] has not been searched for fast cuts yet
        scan: _Scanner | None = None
        while True:
            if scan is None:
                cut, failed = self._fast_cut(fresh)
                fresh = len(self._buf)
                if cut is not None:
                    yield self._cut(*cut)
                    fresh = len(self._buf)  # only failed candidates remain in the tail
                    continue
                if failed or len(self._buf) > 2 * self._chunk:
                    scan = _Scanner()
            if scan is not None:
                scan.run(self._buf, self._base)
                if scan.close >= 0:
                    break
                if scan.boundaries:
                    comma = scan.boundaries[-1]
                    yield self._cut(comma, self._decode(scan.boundaries, comma))
                    scan, fresh = None, 0
                    continue
            if not self._read():
                break
        yield from self._finish(scan)

    def _open(self) -> None:
        """Consume a BOM, whitespace and the opening ``[``, or explain what came instead."""
        while (len(self._buf) < 64 or not self._buf[3:].lstrip(_WS)) and self._read():
            pass
        skip = 3 if self._buf.startswith(b"\xef\xbb\xbf") else 0
        skip += len(self._buf[skip:]) - len(self._buf[skip:].lstrip(_WS))
        if skip == len(self._buf):
            what = "it is empty" if not self._buf else "it is only whitespace"
            raise PayloadError(f"payload is not a JSON array: {what}")
        if self._buf[skip] != ord("["):
            raise PayloadError(
                f"payload is not a JSON array: it starts with {bytes(self._buf[skip:][:40])!r} "
                f"(byte offset {skip})"
            )
        self._cut(skip, [])
        self._after_comma = False

    def _fast_cut(self, fresh: int) -> tuple[tuple[int, list] | None, bool]:
        """The last two cuts found in `_buf[fresh:]`: (an accepted cut, whether one failed)."""
        failed = False
        for comma in _last_candidates(self._buf, max(0, fresh - 16)):
            try:
                return (comma, self._loads(b"[" + self._buf[:comma] + b"]")), failed
            except _NOT_ACCEPTED:
                failed = True
        return None, failed

    def _decode(self, boundaries: list[int], stop: int) -> list:
        """The elements before `stop`: in one call, or each alone when that fails."""
        try:
            return self._loads(b"[" + self._buf[:stop] + b"]")
        except _NOT_ACCEPTED:
            pass
        inner = [b for b in boundaries if b < stop]
        records: list[object] = []
        for start, end in zip([0, *(b + 1 for b in inner)], [*inner, stop], strict=True):
            element = self._buf[start:end]
            body = element.strip(_WS)
            offset = self._base + start + len(element) - len(element.lstrip(_WS))
            if not body:
                raise PayloadError(f"empty array element (stray ',') at byte offset {offset}")
            try:
                records.append(orjson.loads(body))
            except orjson.JSONDecodeError as exc:
                raw = body.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
                reason = f"record: undecodable JSON at byte offset {offset}: {exc}"
                records.append(UndecodableRecord(raw, reason))
        return records

    def _finish(self, scan: _Scanner | None) -> Iterator[list]:
        """The last elements, the closing ``]`` and nothing but whitespace after it."""
        body = self._buf.rstrip(_WS)
        if scan is None and body.endswith(b"]"):
            try:
                records = self._loads(b"[" + body)
            except _NOT_ACCEPTED:
                pass
            else:
                self._check_trailing_comma(bool(records), len(body) - 1)
                yield records
                return
        scan = scan or _Scanner()
        scan.run(self._buf, self._base)
        if scan.close < 0:
            where = " inside a string" if scan.in_string else ""
            raise PayloadError(
                f"payload is truncated: it ends{where} at byte offset "
                f"{self._base + len(self._buf)} before the array's closing ']'"
            )
        tail, offset = self._buf[scan.close + 1 :], self._base + scan.close + 1
        while tail:  # only whitespace up to the end of the stream
            rest = tail.lstrip(_WS)
            if rest:
                raise PayloadError(
                    "unexpected data after the array's closing ']' at byte offset "
                    f"{offset + len(tail) - len(rest)}: {bytes(rest[:40])!r}"
                )
            offset += len(tail)
            tail = b"" if self._eof else self._stream.read(self._chunk)
        last_start = scan.boundaries[-1] + 1 if scan.boundaries else 0
        if scan.boundaries or self._buf[last_start : scan.close].strip(_WS):
            yield self._decode(scan.boundaries, scan.close)
        else:
            self._check_trailing_comma(False, scan.close)

    def _check_trailing_comma(self, has_elements: bool, close: int) -> None:
        if self._after_comma and not has_elements:
            raise PayloadError(f"trailing ',' before the ']' at byte offset {self._base + close}")


def _last_candidates(buf: bytearray, lo: int) -> list[int]:
    """The commas of the last two ``},`` at or after `lo`, last first (the last 16 KB first)."""
    found = [m.end() - 1 for m in _CANDIDATE.finditer(buf, max(lo, len(buf) - (1 << 14)))]
    if len(found) < 2:
        found = [m.end() - 1 for m in _CANDIDATE.finditer(buf, lo)]
    return found[:-3:-1]


class _Scanner:
    """An exact, resumable scan of strings, nesting and top-level commas, for refused chunks."""

    def __init__(self) -> None:
        self.pos, self.close, self.in_string = 0, -1, False
        self.stack: list[int] = []
        self.boundaries: list[int] = []

    def run(self, buf: bytearray, base: int) -> None:
        self.in_string = False
        if self.close >= 0:
            return
        for match in _TOKEN.finditer(buf, self.pos):
            i, c = match.start(), buf[match.start()]
            if match.end() - i == 1 and c == ord('"'):  # a string open at the end of `buf`
                self.pos, self.in_string = i, True
                return
            if c in _CLOSER:
                self.stack.append(_CLOSER[c])
            elif c == ord(","):
                if not self.stack:
                    self.boundaries.append(i)
            elif c == ord('"'):
                continue
            elif not self.stack:
                if c != ord("]"):
                    raise PayloadError(f"unexpected '}}' at byte offset {base + i}")
                self.close = i
                return
            elif self.stack.pop() != c:
                raise PayloadError(f"mismatched {chr(c)!r} at byte offset {base + i}")
        self.pos = len(buf)


# --------------------------------------------------------------------------- a day
@dataclass
class Counts:
    """Where the records received went (loaded + rejected + duplicates + out_of_window)."""

    received: int = 0
    loaded: int = 0
    rejected: int = 0
    duplicates: int = 0
    out_of_window: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(Counts):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(kw_only=True)
class ProcessedBatch(Counts):
    """One batch: UTF-8 COPY text, and (reason, raw record) pairs for ``attempts_rejected``."""

    copy_data: bytes
    rejects: list[tuple[str, str]]


def process_day(
    stream: BinaryIO,
    window_start: datetime,
    window_end: datetime,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[ProcessedBatch]:
    """Validate, window and dedupe a day's payload, a batch of COPY text at a time.

    A record, bad or not, whose readable ``created_at`` is outside ``[window_start, window_end)``
    is out of window; exact repeats of a row or a bad record are duplicates (by 128-bit hash)."""
    window = tuple(
        copy_time(m if m.tzinfo is None else m.astimezone(UTC).replace(tzinfo=None))
        for m in (window_start, window_end)
    )
    seen: set[int] = set()
    seen_rejects: set[int] = set()
    for records in _Splitter(stream, chunk_size, decode_records).batches():
        yield _process_batch(records, window, seen, seen_rejects)


_PLACEHOLDER = ApiRecord("0" * 32, "run", None, "2000-01-01 00:00:00.000000", "{}")


def _process_batch(
    records: list, window: tuple[str, str], seen: set[int], seen_rejects: set[int]
) -> ProcessedBatch:
    """One chunk: the column lane for msgspec's structs, `to_row` for any other record."""
    odd = records.untyped if type(records) is RecordChunk else range(len(records))
    structs = list(records) if odd else records
    for i in odd:
        structs[i] = _PLACEHOLDER
    lines, reasons, created = column_lines(structs)
    for i in odd:  # (line, created_at, no reason) or (None, its claimed moment, reason)
        record = records[i]
        if type(record) is UndecodableRecord:
            lines[i], created[i], reasons[i] = None, None, record.reason
            continue
        try:
            line = to_row(record)
            lines[i], created[i] = line, line[-27:-1]
        except RejectedRecord as exc:
            moment = claimed_moment(record)
            lines[i], created[i], reasons[i] = None, moment and copy_time(moment), exc.reason
    outside = _outside(created, *window)
    bad = [i for i in sorted(reasons) if i not in outside]
    rejects = list(zip(map(reasons.get, bad), _quoted(records, bad), strict=True))
    if reasons or outside:
        for i in outside:
            lines[i] = None
        lines = list(filter(None, lines))
    # Line by line: one non-ASCII line would make a joined str cost twice the batch's parse.
    encoded = list(map(str.encode, lines))
    rows = _dedupe(encoded, encoded, seen)
    raws = [raw.encode("utf-8", "surrogatepass") for _, raw in rejects]
    kept = _dedupe(rejects, raws, seen_rejects)
    return ProcessedBatch(
        copy_data=b"".join(rows),
        rejects=kept,
        received=len(records),
        loaded=len(rows),
        rejected=len(kept),
        duplicates=len(encoded) - len(rows) + len(rejects) - len(kept),
        out_of_window=len(outside),
    )


def _outside(created: list[str | None], start: str, end: str) -> set[int]:
    """Indices whose canonical ``created_at`` (text order is time order) is outside the window."""
    known = list(filter(None, created))  # None or "": unreadable
    if not known or (start <= min(known) and max(known) < end):
        return set()
    return {i for i, text in enumerate(created) if text and not start <= text < end}


def _quoted(records: list, indices: list[int]) -> list[str]:
    """Rejected records as stored: their JSON (NUL escaped), or an undecodable one's bytes."""
    elements = None
    quoted = []
    for i in indices:
        record = records[i]
        if type(record) is ApiRecord:  # as orjson reads it: its own keys, in their own order
            elements = raw_elements(records.data) if elements is None else elements
            record = orjson.loads(bytes(elements[i]))
        if type(record) is UndecodableRecord:
            quoted.append(record.raw)
            continue
        try:
            quoted.append(orjson.dumps(record).decode())
        except orjson.JSONEncodeError:  # nested deeper than orjson writes
            quoted.append(repr(record).replace("\x00", "\\x00"))
    return quoted


# XXH3-128 of the UTF-8 line: as collision-free within a day as a cryptographic digest at a
# tenth of the cost; a random seed per process, so nobody can prepare colliding records.
_SEEDS = repeat(secrets.randbits(64))


def _dedupe(items: list, texts: list[bytes], seen: set[int]) -> list:
    """The items whose text the day has not seen (first wins); usually two set operations."""
    keys = list(map(xxh3_128_intdigest, texts, _SEEDS))
    fresh = set(keys)
    if len(fresh) == len(keys) and seen.isdisjoint(fresh):
        seen |= fresh
        return items
    kept = []
    for item, key in zip(items, keys, strict=True):
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept
