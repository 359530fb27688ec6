"""Replace whole days of `attempts` and `attempts_rejected` in one transaction.

The day's rows are deleted and the landing file is streamed through the parser straight into
COPY. COPY's writes happen in a background thread (psycopg's QueuedLibpqWriter), so parsing on
one core overlaps with the server ingesting on the other. Rejected records are spooled to a temp
file and copied after the attempts, since one connection runs one COPY at a time.

With `refuse_shrink` (postgres_attempts sets it unless forced), a load that would take more than
half of a day's rows away, an empty payload in particular, raises `ShrinkRefused` inside the
transaction, so every day of the run stays as it was. Each day is judged on its own, and all of
them are loaded first, so the error lists every day that would shrink. The rows a day had are the
DELETE's own count, taken under the day's lock: the guard costs no query and nothing per row.
"""

from __future__ import annotations

import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import BinaryIO

import psycopg
from psycopg.copy import QueuedLibpqWriter

from itresume_pipeline.landing import open_payload
from itresume_pipeline.partitions import day_bounds
from itresume_pipeline.payload import DEFAULT_CHUNK_SIZE, Counts, process_day
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline.streams import ChunkStream

ATTEMPT_COLUMNS = (
    "user_id",
    "oauth_consumer_key",
    "lis_result_sourcedid",
    "lis_outcome_service_url",
    "is_correct",
    "attempt_type",
    "created_at",
)


@dataclass(kw_only=True)
class DayLoad(Counts):
    """One day's load (or, from `total`, a run's): its counts and what the server says."""

    day: date
    reject_reasons: dict[str, int] = field(default_factory=dict)
    copied: int = 0  # rows the server says COPY wrote: what the asset checks look for
    replaced: int = 0  # rows the day had before this load

    @classmethod
    def total(cls, loads: list[DayLoad]) -> DayLoad:
        """The run's totals, under the first day."""
        total = cls(day=loads[0].day)
        for load in loads:
            total.add(load)
            total.copied += load.copied
            total.replaced += load.replaced
            for reason, count in load.reject_reasons.items():
                total.reject_reasons[reason] = total.reject_reasons.get(reason, 0) + count
        return total


def shrinks(load: DayLoad) -> bool:
    """Whether the load takes away more than half of the rows the day had."""
    return 2 * load.loaded < load.replaced


class ShrinkRefused(Exception):
    """Loads that would shrink their days; the transaction was rolled back."""

    def __init__(self, loads: list[DayLoad]) -> None:
        self.loads = loads
        super().__init__(
            "; ".join(
                f"{d.day}: {d.replaced} rows loaded now, {d.loaded} in the new payload"
                for d in loads
            )
        )


def replace_days(
    warehouse: PostgresResource,
    payloads: dict[date, Path],
    *,
    run_id: str,
    refuse_shrink: bool = False,
) -> tuple[list[DayLoad], float]:
    """Atomically replace the given days from their landing files; returns counts and seconds.

    With `refuse_shrink`, each day is compared on its own, and if any would shrink, nothing of
    the run is kept: `ShrinkRefused` lists every such day.
    """
    began = time.perf_counter()
    days = sorted(payloads)
    loads: list[DayLoad] = []
    with warehouse.connect() as conn, conn.transaction():
        conn.execute("SELECT set_config('itresume.run_id', %s, true)", (run_id,))
        warehouse.lock_days(conn, days)
        for day in days:
            loads.append(_replace_day(conn, warehouse, day, payloads[day]))
        refused = [load for load in loads if shrinks(load)] if refuse_shrink else []
        if refused:
            raise ShrinkRefused(refused)  # inside the transaction: it rolls back
    return loads, time.perf_counter() - began


def _replace_day(
    conn: psycopg.Connection, warehouse: PostgresResource, day: date, path: Path
) -> DayLoad:
    start, end = day_bounds(day)
    attempts, rejected = warehouse.table("attempts"), warehouse.table("attempts_rejected")
    replaced = conn.execute(
        psycopg.sql.SQL("DELETE FROM {} WHERE created_at >= %s AND created_at < %s").format(
            attempts
        ),
        (start, end),
    ).rowcount
    conn.execute(
        psycopg.sql.SQL("DELETE FROM {} WHERE partition_date = %s").format(rejected), (day,)
    )
    load = DayLoad(day=day, replaced=replaced)
    copy_attempts = psycopg.sql.SQL("COPY {} ({}) FROM STDIN").format(
        attempts, psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, ATTEMPT_COLUMNS))
    )
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8") as spool,
        open_payload(path) as compressed,
        _Prefetch(compressed) as stream,
        conn.cursor() as cur,
    ):
        with cur.copy(copy_attempts, writer=_BoundedQueuedWriter(cur)) as copy:
            for batch in process_day(stream, start, end):
                if batch.copy_data:
                    copy.write(memoryview(batch.copy_data))  # sliced for libpq without copies
                load.add(batch)
                for reason, raw in batch.rejects:
                    spool.write(_copy_text_line(day.isoformat(), reason, raw))
                    _tally_reason(load, reason)
        load.copied = cur.rowcount
        if load.rejected:
            spool.seek(0)
            copy_rejects = psycopg.sql.SQL(
                "COPY {} (partition_date, reason, raw_record) FROM STDIN"
            ).format(rejected)
            with cur.copy(copy_rejects) as copy:
                while block := spool.read(1 << 20):
                    copy.write(block)
    return load


class _BoundedQueuedWriter(QueuedLibpqWriter):
    """psycopg's queued COPY writer with a short queue: at most `depth` blocks of 128 KB.

    Its own queue holds up to 1024 blocks (128 MB): when the server falls behind for a moment,
    that much of the day would pile up in memory. A short one makes the parser wait instead.
    """

    def __init__(self, cursor: psycopg.Cursor, depth: int = 64) -> None:
        super().__init__(cursor)
        self._queue = queue.Queue(maxsize=depth)


class _Prefetch(ChunkStream):
    """Decompress the landing file on a thread of its own, a few chunks ahead of the parser.

    The inflater (ISA-L) releases the GIL, so this overlaps the parsing instead of adding to
    it; the bounded queue keeps memory flat.
    """

    def __init__(self, source: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE, depth: int = 3):
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(source, chunk_size), name="itresume-inflate", daemon=True
        )
        self._thread.start()

    def _run(self, source: BinaryIO, chunk_size: int) -> None:
        try:
            while not self._stop.is_set():
                block = source.read(chunk_size)
                self._put(block)
                if not block:
                    return
        except BaseException as error:  # handed to the reader, raised there
            self._put(error)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next_chunk(self) -> bytes:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        super().close()


def _tally_reason(load: DayLoad, reason: str) -> None:
    """Group reasons by field ("lti_user_id: …" -> "lti_user_id") for compact metadata."""
    key = reason.split(":", 1)[0][:60]
    load.reject_reasons[key] = load.reject_reasons.get(key, 0) + 1


def _copy_text_field(value: str) -> str:
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _copy_text_line(*values: str) -> str:
    return "\t".join(_copy_text_field(v) for v in values) + "\n"
