"""Stream a day's payload (one JSON array) into batches of COPY lines in flat memory.

A 1,000,000-record day is ~500 MB of JSON, so the payload is never held whole. The fast
path reads a chunk, cuts it at the last ``}`` + ``,`` that orjson accepts as the end of
``b"[" + prefix + b"]"`` and decodes that prefix in one call. Acceptance is the proof that the
cut was at a top-level boundary: a prefix that ends inside a string leaves the string open,
and one that ends inside a nested value leaves two brackets open for one ``]``.

When that fails for any other reason (invalid UTF-8 in one record, odd formatting, a huge
string full of ``},``) an exact scanner finds the real boundaries and decodes record by
record, so one corrupt record becomes an `UndecodableRecord` to quarantine instead of losing
the day. Only damage to the array itself (not an array, truncated, trailing data) raises
`PayloadError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO, NamedTuple

import orjson

from itresume_pipeline.parsing import RejectedRecord, copy_line_digest, to_row

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DayStats",
    "PayloadError",
    "ProcessedBatch",
    "UndecodableRecord",
    "count_records",
    "iter_records",
    "process_day",
]

DEFAULT_CHUNK_SIZE = 4 << 20
_WS = b" \t\n\r"
_BOM = b"\xef\xbb\xbf"
_CANDIDATE = re.compile(rb"\}[ \t\n\r]*,")
_STRUCTURE = re.compile(rb'[\[\]{},"]')
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_CLOSER = {ord("["): ord("]"), ord("{"): ord("}")}
_FAST_TRIES = 2


class PayloadError(ValueError):
    """The payload as a whole is unusable (not an array, truncated, trailing data)."""


class UndecodableRecord(NamedTuple):
    """One array element that is not valid JSON; kept so it can be quarantined, not lost."""

    raw: str
    reason: str


def count_records(stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Number of elements in a complete JSON array (undecodable ones included).

    Raises `PayloadError` (a ValueError) if the array is damaged: this is how a landing file
    proves it is whole before it is published.
    """
    return sum(len(batch) for batch in iter_records(stream, chunk_size))


def iter_records(stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[list[object]]:
    """Yield the decoded elements of a JSON array, a batch per chunk read.

    Elements are yielded as decoded (any JSON value) or as `UndecodableRecord`. Batches may be
    empty. Raises `PayloadError` (possibly after some batches) if the array is damaged.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    return _Splitter(stream, chunk_size).batches()


class _Splitter:
    """Holds the unconsumed bytes; `_buf` always begins at the start of an array element."""

    def __init__(self, stream: BinaryIO, chunk_size: int) -> None:
        self._stream = stream
        self._chunk = chunk_size
        self._buf = b""
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
        self._buf = self._buf[n:]
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
                f"payload is not a JSON array: it starts with {self._buf[:40]!r} "
                f"(byte offset {self._base})"
            )
        self._consume(1)

    def _fast_cut(self, fresh: int) -> tuple[tuple[list[object], int] | None, bool]:
        """Try the last candidate cuts found in `_buf[fresh:]`; returns (cut, any failed)."""
        failed = False
        for comma in _last_candidates(self._buf, max(0, fresh - 16)):
            try:
                records = orjson.loads(b"[" + self._buf[:comma] + b"]")
            except orjson.JSONDecodeError:
                failed = True
                continue
            return (records, comma), failed
        return None, failed

    def _decode(self, boundaries: list[int], end: int | None = None) -> list[object]:
        """Decode the elements before the last boundary (or before `end`), tolerantly."""
        stop = boundaries[-1] if end is None else end
        try:
            return orjson.loads(b"[" + self._buf[:stop] + b"]")
        except orjson.JSONDecodeError:
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
                    records = orjson.loads(b"[" + body)
                except orjson.JSONDecodeError:
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
                    f"{rest[:40]!r}"
                )
            offset += len(tail)
            tail = b"" if self._eof else self._stream.read(self._chunk)
            if not tail:
                return


def _last_candidates(buf: bytes, lo: int) -> list[int]:
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

    def run(self, buf: bytes, base: int) -> None:
        pos, stack, search = self.pos, self.stack, _STRUCTURE.search
        while self.close < 0:
            match = search(buf, pos)
            if match is None:
                pos = len(buf)
                break
            i = match.start()
            c = buf[i]
            if c == _QUOTE:
                end = _string_end(buf, i + 1)
                self.in_string = end < 0
                if end < 0:
                    pos = i  # resume at the opening quote once more data arrives
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


def _string_end(buf: bytes, start: int) -> int:
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
@dataclass(slots=True)
class ProcessedBatch:
    """One batch, ready for ``COPY ... FROM STDIN`` and for ``attempts_rejected``.

    `rejected` holds (reason, raw record text) pairs; the counts always satisfy
    received == loaded + rejected_count + duplicates + out_of_window.
    """

    copy_text: str
    rejected: list[tuple[str, str]]
    received: int
    loaded: int
    rejected_count: int
    duplicates: int
    out_of_window: int


@dataclass
class DayStats:
    """Counts for a whole day, accumulated batch by batch by whoever consumes `process_day`."""

    received: int = 0
    loaded: int = 0
    rejected: int = 0
    duplicates: int = 0
    out_of_window: int = 0

    def add(self, batch: ProcessedBatch) -> None:
        self.received += batch.received
        self.loaded += batch.loaded
        self.rejected += batch.rejected_count
        self.duplicates += batch.duplicates
        self.out_of_window += batch.out_of_window

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def of(cls, batches: Iterable[ProcessedBatch]) -> DayStats:
        stats = cls()
        for batch in batches:
            stats.add(batch)
        return stats


def process_day(
    stream: BinaryIO,
    window_start: datetime,
    window_end: datetime,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[ProcessedBatch]:
    """Validate, window and dedupe a day's payload, a batch of COPY text at a time.

    Rows outside ``[window_start, window_end)`` are counted, not loaded. Exact duplicate rows
    (same column values) are loaded once; the day's set holds 16-byte digests, not rows.
    """
    start, end = _naive_utc(window_start), _naive_utc(window_end)
    seen: set[bytes] = set()
    for records in iter_records(stream, chunk_size):
        yield _process_batch(records, start, end, seen)


def _process_batch(
    records: list[object], start: datetime, end: datetime, seen: set[bytes]
) -> ProcessedBatch:
    lines: list[str] = []
    rejects: list[tuple[str, str]] = []
    duplicates = out_of_window = 0
    row, digest, remember = to_row, copy_line_digest, seen.add
    for record in records:
        if type(record) is UndecodableRecord:
            rejects.append((record.reason, record.raw))
            continue
        try:
            attempt, line = row(record)
        except RejectedRecord as exc:
            rejects.append((exc.reason, _raw_text(record)))
            continue
        if not start <= attempt.created_at < end:
            out_of_window += 1
            continue
        key = digest(line)
        if key in seen:
            duplicates += 1
            continue
        remember(key)
        lines.append(line)
    return ProcessedBatch(
        copy_text="".join(lines),
        rejected=rejects,
        received=len(records),
        loaded=len(lines),
        rejected_count=len(rejects),
        duplicates=duplicates,
        out_of_window=out_of_window,
    )


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
