"""Stream a day's payload (one JSON array) into batches of COPY lines in flat memory.

A 1,000,000-record day is ~500 MB of JSON, so the payload is never held whole. The splitter
reads a 512 KB chunk, cuts it at the last ``}`` + ``,`` that the decoder accepts as the end of
``b"[" + prefix + b"]"`` and decodes that prefix in one call. Acceptance is the proof that the
cut was at a top-level boundary: a prefix that ends inside a string leaves the string open,
and one that ends inside a nested value leaves two brackets open for one ``]``. The load's
decoder is msgspec's typed one (`columns.decode_records`, for the column lane), else orjson
(whose values `records.to_row` judges one by one); the landing file's count uses msgspec's
undecoded elements.

When that fails for any other reason (invalid UTF-8 in one record, odd formatting, a huge
string full of ``},``) an exact scanner finds the real boundaries and decodes record by
record, so one corrupt record becomes an `UndecodableRecord` to quarantine instead of losing
the day. Only damage to the array itself (not an array, truncated, trailing data) raises
`PayloadError`.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import BinaryIO, NamedTuple

import orjson
from xxhash import xxh3_128_intdigest

from itresume_pipeline.columns import (
    DECODE_ERRORS,
    RecordChunk,
    column_lines,
    decode_records,
    raw_elements,
)
from itresume_pipeline.records import RejectedRecord, claimed_moment, to_row

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Counts",
    "PayloadError",
    "ProcessedBatch",
    "UndecodableRecord",
    "count_records",
    "iter_records",
    "process_day",
]

DEFAULT_CHUNK_SIZE = 512 << 10
_WS = b" \t\n\r"
_BOM = b"\xef\xbb\xbf"
_CANDIDATE = re.compile(rb"\}[ \t\n\r]*,")
_STRUCTURE = re.compile(rb'[\[\]{},"]')
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_CLOSER = {ord("["): ord("]"), ord("{"): ord("}")}
_FAST_TRIES = 2
_NOT_ACCEPTED = (orjson.JSONDecodeError, *DECODE_ERRORS)


class PayloadError(ValueError):
    """The payload as a whole is unusable (not an array, truncated, trailing data)."""


class UndecodableRecord(NamedTuple):
    """One array element that is not valid JSON; kept so it can be quarantined, not lost."""

    raw: str
    reason: str


def count_records(stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Number of elements in a complete JSON array (undecodable ones included).

    Raises `PayloadError` (a ValueError) if the array is damaged: this is how a landing file
    proves it is whole before it is published. msgspec's undecoded `Raw` elements make this
    about ten times cheaper than decoding them: only the structure has to be proven here.
    """
    return sum(map(len, _Splitter(stream, chunk_size, raw_elements).batches()))


def iter_records(stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[list[object]]:
    """Yield the decoded elements of a JSON array, a batch per chunk read.

    Elements are yielded as decoded (any JSON value) or as `UndecodableRecord`. Batches may be
    empty. Raises `PayloadError` (possibly after some batches) if the array is damaged.
    """
    return _Splitter(stream, chunk_size, orjson.loads).batches()


def _decode_for_load(data: bytes) -> list[object]:
    """Structs for the column lane, else (bytes msgspec cannot read) orjson's values."""
    try:
        return decode_records(data)
    except (*DECODE_ERRORS, orjson.JSONDecodeError):
        return orjson.loads(data)


class _Splitter:
    """Holds the unconsumed bytes; `_buf` always begins at the start of an array element.

    `loads` decodes ``[`` + the elements before a cut + ``]`` and raises when that is not a
    complete JSON array; its acceptance is what proves the cut.
    """

    def __init__(
        self, stream: BinaryIO, chunk_size: int, loads: Callable[[bytes], list[object]]
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._loads = loads
        self._stream = stream
        self._chunk = chunk_size
        self._buf = bytearray()  # appends and front deletions are amortized O(1)
        self._base = 0  # absolute offset of _buf[0] in the payload
        self._eof = False
        self._after_comma = False  # an element must follow (no trailing comma)
        self._scan: _Scanner | None = None

    def _read(self) -> bool:
        data = self._stream.read(self._chunk)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._base += n

    def batches(self) -> Iterator[list[object]]:
        self._open()
        fresh = 0  # _buf[fresh:] has not been searched for fast cuts yet
        while True:
            if self._scan is None:
                cut, failed = self._fast_cut(fresh)
                fresh = len(self._buf)
                if cut is not None:
                    records, comma = cut
                    self._consume(comma + 1)
                    self._after_comma = True
                    fresh = len(self._buf)  # only failed candidates remain in the tail
                    yield records
                    continue
                if failed or len(self._buf) > 2 * self._chunk:
                    self._scan = _Scanner()
            if self._scan is not None:
                self._scan.run(self._buf, self._base)
                if self._scan.close >= 0:
                    break
                if self._scan.boundaries:
                    comma = self._scan.boundaries[-1]
                    records = self._decode(self._scan.boundaries)
                    self._consume(comma + 1)
                    self._after_comma = True
                    self._scan = None
                    fresh = 0
                    yield records
                    continue
            if not self._read():
                break
        yield from self._finish()

    def _open(self) -> None:
        """Consume a BOM, whitespace and the opening ``[``, or explain what came instead."""
        while len(self._buf) < 64 and self._read():
            pass
        if self._buf.startswith(_BOM):
            self._consume(len(_BOM))
        while True:
            stripped = self._buf.lstrip(_WS)
            self._consume(len(self._buf) - len(stripped))
            if stripped or not self._read():
                break
        if not self._buf:
            what = "it is empty" if self._base == 0 else "it is only whitespace"
            raise PayloadError(f"payload is not a JSON array: {what}")
        if self._buf[0] != ord("["):
            raise PayloadError(
                f"payload is not a JSON array: it starts with {bytes(self._buf[:40])!r} "
                f"(byte offset {self._base})"
            )
        self._consume(1)

    def _fast_cut(self, fresh: int) -> tuple[tuple[list[object], int] | None, bool]:
        """Try the last candidate cuts found in `_buf[fresh:]`; returns (cut, any failed)."""
        failed = False
        for comma in _last_candidates(self._buf, max(0, fresh - 16)):
            try:
                records = self._loads(b"[" + self._buf[:comma] + b"]")
            except _NOT_ACCEPTED:
                failed = True
                continue
            return (records, comma), failed
        return None, failed

    def _decode(self, boundaries: list[int], end: int | None = None) -> list[object]:
        """Decode the elements before the last boundary (or before `end`), tolerantly."""
        stop = boundaries[-1] if end is None else end
        try:
            return self._loads(b"[" + self._buf[:stop] + b"]")
        except _NOT_ACCEPTED:
            pass
        starts = [0, *(b + 1 for b in boundaries if b < stop)]
        stops = [b for b in boundaries if b < stop] + [stop]
        return [self._decode_one(s, e) for s, e in zip(starts, stops, strict=True)]

    def _decode_one(self, start: int, stop: int) -> object:
        element = self._buf[start:stop]
        body = element.strip(_WS)
        offset = self._base + start + (len(element) - len(element.lstrip(_WS)))
        if not body:
            raise PayloadError(f"empty array element (stray ',') at byte offset {offset}")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raw = body.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
            reason = f"record: undecodable JSON at byte offset {offset}: {exc}"
            return UndecodableRecord(raw, reason)

    def _finish(self) -> Iterator[list[object]]:
        """The last elements, the closing ``]`` and nothing but whitespace after it."""
        if self._scan is None and self._eof:
            body = self._buf.rstrip(_WS)
            if body.endswith(b"]"):
                try:
                    records = self._loads(b"[" + body)
                except _NOT_ACCEPTED:
                    pass
                else:
                    self._check_trailing_comma(bool(records), len(body) - 1)
                    yield records
                    return
        scan = self._scan or _Scanner()
        scan.run(self._buf, self._base)
        if scan.close < 0:
            where = " inside a string" if scan.in_string else ""
            raise PayloadError(
                f"payload is truncated: it ends{where} at byte offset "
                f"{self._base + len(self._buf)} before the array's closing ']'"
            )
        close = scan.close
        self._check_trailing_data(close + 1)
        last_start = scan.boundaries[-1] + 1 if scan.boundaries else 0
        has_last = bool(self._buf[last_start:close].strip(_WS))
        if has_last or scan.boundaries:
            yield self._decode(scan.boundaries, close)
        else:
            self._check_trailing_comma(False, close)

    def _check_trailing_comma(self, has_elements: bool, close: int) -> None:
        if self._after_comma and not has_elements:
            raise PayloadError(f"trailing ',' before the ']' at byte offset {self._base + close}")

    def _check_trailing_data(self, start: int) -> None:
        """After ``]`` only whitespace may follow, up to the end of the stream."""
        tail = self._buf[start:]
        offset = self._base + start
        while True:
            rest = tail.lstrip(_WS)
            if rest:
                offset += len(tail) - len(rest)
                raise PayloadError(
                    f"unexpected data after the array's closing ']' at byte offset {offset}: "
                    f"{bytes(rest[:40])!r}"
                )
            offset += len(tail)
            tail = b"" if self._eof else self._stream.read(self._chunk)
            if not tail:
                return


def _last_candidates(buf: bytearray, lo: int) -> list[int]:
    """Offsets of the commas of the last few ``}`` ``,`` pairs at or after `lo`, last first.

    Searches a small window at the end first, so a 4 MB chunk costs a few KB of regex.
    """
    size = 1 << 14
    while True:
        start = max(lo, len(buf) - size)
        found = [m.end() - 1 for m in _CANDIDATE.finditer(buf, start)]
        if len(found) >= _FAST_TRIES or start == lo:
            return found[: -_FAST_TRIES - 1 : -1]
        size <<= 3


@dataclass
class _Scanner:
    """An exact, resumable JSON structure scanner (strings, nesting, top-level commas).

    Slower than orjson (Python per token) but only runs on chunks the fast path refuses.
    `run` may be called again on the same buffer after it grew; it resumes where it stopped.
    """

    pos: int = 0
    stack: bytearray = field(default_factory=bytearray)
    boundaries: list[int] = field(default_factory=list)
    close: int = -1
    in_string: bool = False
    string_resume: int = 0

    def run(self, buf: bytearray, base: int) -> None:
        pos, stack, search = self.pos, self.stack, _STRUCTURE.search
        while self.close < 0:
            match = search(buf, pos)
            if match is None:
                pos = len(buf)
                break
            i = match.start()
            c = buf[i]
            if c == _QUOTE:
                # An open string resumes its search where the last run stopped (a quote seen
                # before then was escaped), so a huge string is not re-searched on every read.
                end = _string_end(buf, self.string_resume if self.in_string else i + 1)
                self.in_string = end < 0
                if end < 0:
                    pos, self.string_resume = i, len(buf)
                    break
                pos = end
                continue
            if c in _CLOSER:
                stack.append(_CLOSER[c])
            elif c == _COMMA:
                if not stack:
                    self.boundaries.append(i)
            elif not stack:
                if c != ord("]"):
                    raise PayloadError(f"unexpected '}}' at byte offset {base + i}")
                self.close = i
            elif stack.pop() != c:
                raise PayloadError(f"mismatched {chr(c)!r} at byte offset {base + i}")
            pos = i + 1
        self.pos = pos


def _string_end(buf: bytearray, start: int) -> int:
    """Offset just past the closing quote of a string whose body starts at `start`, or -1."""
    while True:
        quote = buf.find(b'"', start)
        if quote < 0:
            return -1
        k = quote - 1
        while buf[k] == _BACKSLASH:
            k -= 1
        if (quote - 1 - k) % 2 == 0:
            return quote + 1
        start = quote + 1


# --------------------------------------------------------------------------- a day
@dataclass
class Counts:
    """Where each record received went: received == loaded + rejected + duplicates +
    out_of_window, for a batch, a day and a run alike."""

    received: int = 0
    loaded: int = 0
    rejected: int = 0
    duplicates: int = 0
    out_of_window: int = 0

    def add(self, other: Counts) -> None:
        """Add `other`'s counts (a batch's to a day's, a day's to a run's)."""
        for name in _COUNT_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))


_COUNT_NAMES = tuple(f.name for f in fields(Counts))


@dataclass(kw_only=True)
class ProcessedBatch(Counts):
    """One batch: COPY text (UTF-8) for ``COPY ... FROM STDIN``, and (reason, raw record text)
    pairs for ``attempts_rejected``."""

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

    Each record received is counted once (`Counts`). A record whose ``created_at`` is readable
    and outside ``[window_start, window_end)`` is out of window, a bad one too: it is
    quarantined by its own day's load, not by this one. Exact duplicate rows are loaded once,
    and an exact repeat of a bad record is quarantined once; both count as duplicates. The
    day's sets hold 128-bit hashes, not rows.
    """
    start, end = _naive_utc(window_start), _naive_utc(window_end)
    bounds = (start, end, _canonical(start), _canonical(end))
    seen: set[int] = set()
    seen_rejects: set[int] = set()
    for records in _Splitter(stream, chunk_size, _decode_for_load).batches():
        yield _process_batch(records, bounds, seen, seen_rejects)


def _canonical(moment: datetime) -> str:
    return moment.isoformat(" ", "microseconds")


def _process_batch(
    records: list[object], bounds: tuple, seen: set[int], seen_rejects: set[int]
) -> ProcessedBatch:
    """One chunk: the column lane for msgspec's structs, `to_row` for orjson's values."""
    if type(records) is RecordChunk:
        lines, rejects, out_of_window = _chunk_lines(records, bounds)
    else:
        lines, rejects, out_of_window = _lines_of(records, bounds)
    # Encoded line by line: one non-ASCII line would make a joined str two bytes a character,
    # and encoding that costs twice as much as the whole parse of the batch.
    encoded, duplicates = _dedupe(list(map(str.encode, lines)), seen)
    repeated = 0
    if rejects:
        rejects, repeated = _dedupe_rejects(rejects, seen_rejects)
    return ProcessedBatch(
        copy_data=b"".join(encoded),
        rejects=rejects,
        received=len(records),
        loaded=len(encoded),
        rejected=len(rejects),
        duplicates=duplicates + repeated,
        out_of_window=out_of_window,
    )


def _chunk_lines(chunk: RecordChunk, bounds: tuple) -> tuple[list[str], list[tuple[str, str]], int]:
    """The column lane for a chunk of structs; what it leaves undecided, record by record."""
    start, end, start_text, end_text = bounds
    lines, undecided = column_lines(chunk, start_text, end_text)
    rejects: list[tuple[str, str]] = []
    out_of_window = 0
    raws = None
    for i in undecided:
        line, reason = _judge(chunk.odd.get(i, chunk[i]), start, end)
        if line is not None:
            lines[i] = line
        elif reason is None:
            out_of_window += 1
        else:  # quoted as the orjson lane would: the record's own keys, in their own order
            raws = raws or raw_elements(chunk.data)
            rejects.append((reason, _raw_text(orjson.loads(bytes(raws[i])))))
    if undecided:
        lines = list(filter(None, lines))
    return lines, rejects, out_of_window  # type: ignore[return-value]  # no None left


def _lines_of(records: list[object], bounds: tuple) -> tuple[list[str], list[tuple[str, str]], int]:
    """Record by record: COPY lines, (reason, raw) rejects and the out-of-window count."""
    start, end = bounds[0], bounds[1]
    lines: list[str] = []
    rejects: list[tuple[str, str]] = []
    out_of_window = 0
    for record in records:
        line, reason = _judge(record, start, end)
        if line is not None:
            lines.append(line)
        elif reason is None:
            out_of_window += 1
        else:
            raw = record.raw if type(record) is UndecodableRecord else _raw_text(record)
            rejects.append((reason, raw))
    return lines, rejects, out_of_window


def _judge(record: object, start: datetime, end: datetime) -> tuple[str | None, str | None]:
    """(COPY line, None) for a row of the window, (None, reason) to quarantine, (None, None)
    for a record of another day, good or bad."""
    if type(record) is UndecodableRecord:
        return None, record.reason
    try:
        attempt, line = to_row(record)
    except RejectedRecord as exc:
        return None, None if _of_another_day(record, start, end) else exc.reason
    return (line, None) if start <= attempt.created_at < end else (None, None)


def _of_another_day(record: object, start: datetime, end: datetime) -> bool:
    """A bad record whose own ``created_at`` is readable and outside the window.

    The load of its own day quarantines it, if the API serves it there. A bad record without a
    readable ``created_at`` has no other day, so the day that received it quarantines it.
    """
    moment = claimed_moment(record)
    return moment is not None and not start <= moment < end


# Rows are deduped by a 128-bit digest of their UTF-8 COPY line: XXH3-128, as unlikely to collide
# within a day as a cryptographic digest at a tenth of the cost, with a random seed per process,
# so that nobody can prepare records whose digests collide.
_DIGEST_SEED = secrets.randbits(64)
_SEEDS = itertools.repeat(_DIGEST_SEED)


def _dedupe(lines: list[bytes], seen: set[int]) -> tuple[list[bytes], int]:
    """Drop lines already loaded this day (or earlier in the batch); first occurrence wins.

    The digests are computed with a C-level `map`, and a batch without
    duplicates (the usual case) is settled with two set operations instead of a Python loop.
    """
    keys = list(map(xxh3_128_intdigest, lines, _SEEDS))
    fresh = set(keys)
    if len(fresh) == len(keys) and seen.isdisjoint(fresh):
        seen |= fresh
        return lines, 0
    kept: list[bytes] = []
    duplicates = 0
    remember = seen.add
    for line, key in zip(lines, keys, strict=True):
        if key in seen:
            duplicates += 1
            continue
        remember(key)
        kept.append(line)
    return kept, duplicates


def _dedupe_rejects(
    rejects: list[tuple[str, str]], seen: set[int]
) -> tuple[list[tuple[str, str]], int]:
    """Quarantine a bad record once a day: a repeat of its raw text is a duplicate.

    The raw text is the record as stored (`_raw_text`, or the bytes of an undecodable one), so
    the same record served twice is one row of ``attempts_rejected``; first occurrence wins.
    """
    kept: list[tuple[str, str]] = []
    for reason, raw in rejects:
        key = xxh3_128_intdigest(raw.encode("utf-8", "surrogatepass"), _DIGEST_SEED)
        if key not in seen:
            seen.add(key)
            kept.append((reason, raw))
    return kept, len(rejects) - len(kept)


def _raw_text(record: object) -> str:
    """The rejected record as JSON text (NUL is escaped by JSON, so PostgreSQL can store it)."""
    try:
        return orjson.dumps(record).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return repr(record).replace("\x00", "\\x00")


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
