"""Replace whole days of `attempts` and `attempts_rejected`, one partition per day: in one
transaction per run, each day's partitions are truncated and refilled by `COPY ... FREEZE` (no
dead rows; a failure keeps the old day) while threads inflate the file and send the COPY data."""

from __future__ import annotations

import hashlib
import queue
import tempfile
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import BinaryIO

import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from itresume_pipeline.landing import open_payload
from itresume_pipeline.partitions import day_bounds
from itresume_pipeline.payload import DEFAULT_CHUNK_SIZE, Counts, process_day
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline.streams import ChunkStream

_COPY_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass(kw_only=True)
class DayLoad(Counts):
    """One day's load (or, from `total`, a run's, under its first day): counts, server's word."""

    day: date
    reject_reasons: Counter[str] = field(default_factory=Counter)
    copied: int = 0  # rows the server says COPY wrote: what the asset checks look for
    replaced: int = 0  # rows the day had before this load
    sha256: str = ""  # of the payload, as raw_attempts received it
    unchanged: bool = False  # the payload it was last loaded from: not reloaded

    @classmethod
    def total(cls, loads: list[DayLoad]) -> DayLoad:
        total = cls(day=loads[0].day)
        for load in loads:
            total.add(load)
            total.copied += load.copied
            total.replaced += load.replaced
            total.reject_reasons.update(load.reject_reasons)
        return total


class ShrinkRefused(Exception):
    """Loads (its one argument) that would lose over half their days' rows; rolled back."""


def replace_days(
    warehouse: PostgresResource,
    payloads: dict[date, Path],
    *,
    run_id: str,
    refuse_shrink: bool = False,
    skip_unchanged: bool = False,
) -> tuple[list[DayLoad], float]:
    """Atomically replace the given days from their landing files; returns counts and seconds.
    `skip_unchanged` leaves a day whose payload has the sha256 it was last loaded from."""
    began = time.perf_counter()
    days = sorted(payloads)
    with warehouse.connect() as conn:
        for day in days:
            add_day_partitions(conn, warehouse, day)
        with conn.transaction():
            conn.execute("SELECT set_config('itresume.run_id', %s, true)", (run_id,))
            warehouse.lock_days(conn, days)
            query = warehouse.query("loaded_days_select.sql")
            loaded = {day: (sha, rows) for day, sha, rows in conn.execute(query, {"days": days})}
            loads = []
            for day in days:
                recorded, rows = loaded.get(day, (None, None))
                if skip_unchanged and recorded and payload_sha256(payloads[day]) == recorded:
                    loads.append(DayLoad(day=day, sha256=recorded, unchanged=True))
                else:
                    loads.append(_replace_day(conn, warehouse, day, payloads[day], rows))
            refused = [d for d in loads if 2 * d.loaded < d.replaced] if refuse_shrink else []
            if refused:
                raise ShrinkRefused(refused)  # inside the transaction: it rolls back
    return loads, time.perf_counter() - began


def add_day_partitions(conn: psycopg.Connection, warehouse: PostgresResource, day: date) -> None:
    """Make the day's partitions if missing; committed at once, so the parent's lock is brief."""
    with conn.transaction():
        warehouse.lock_days(conn, [day])  # one creator per day
        conn.execute(sql.SQL("SELECT {}(%s)").format(warehouse.table("add_day_partitions")), (day,))


def payload_sha256(path: Path) -> str:
    with open_payload(path) as compressed, _Prefetch(compressed) as payload:
        return payload.sha256()


def _replace_day(
    conn: psycopg.Connection, warehouse: PostgresResource, day: date, path: Path, rows: int | None
) -> DayLoad:
    start, end = day_bounds(day)
    attempts, rejected = (  # the day's partitions, e.g. attempts_20241008
        warehouse.table(f"{table}_{day:%Y%m%d}") for table in ("attempts", "attempts_rejected")
    )
    if rows is None:  # loaded before row counts were recorded (an upgraded warehouse)
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(attempts)).fetchone()[0]
    load = DayLoad(day=day, replaced=rows)
    conn.execute(sql.SQL("TRUNCATE {}, {}").format(attempts, rejected))
    copy_attempts = sql.SQL(  # the columns in the order of process_day's COPY data
        "COPY {} (user_id, oauth_consumer_key, lis_result_sourcedid, lis_outcome_service_url, "
        "is_correct, attempt_type, created_at) FROM STDIN (FREEZE)"
    ).format(attempts)
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
                    fields = (day.isoformat(), reason, raw)
                    spool.write("\t".join(f.translate(_COPY_TEXT_ESCAPES) for f in fields) + "\n")
                    load.reject_reasons[reason.split(":", 1)[0][:60]] += 1  # by field
        load.copied = cur.rowcount
        load.sha256 = stream.sha256()
        if load.rejected:
            spool.seek(0)
            copy_rejects = sql.SQL(
                "COPY {} (partition_date, reason, raw_record) FROM STDIN (FREEZE)"
            ).format(rejected)
            with cur.copy(copy_rejects) as copy:
                while block := spool.read(1 << 20):
                    copy.write(block)
    record = {"day": day, "sha256": load.sha256, "rows": load.copied}
    conn.execute(warehouse.query("loaded_day_record.sql"), record)
    return load


class _BoundedQueuedWriter(QueuedLibpqWriter):
    """psycopg's queued COPY writer with `depth` blocks queued, not 1024 (128 MB): flat memory."""

    def __init__(self, cursor: psycopg.Cursor, depth: int = 64) -> None:
        super().__init__(cursor)
        self._queue = queue.Queue(maxsize=depth)


class _Prefetch(ChunkStream):
    """Decompress and hash the landing file on a thread of its own, a few chunks ahead of the
    parser: ISA-L and sha256 release the GIL, and the bounded queue keeps memory flat."""

    def __init__(self, source: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE, depth: int = 3):
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._digest = hashlib.sha256()
        self._ended = False
        self._thread = threading.Thread(
            target=self._run, args=(source, chunk_size), name="itresume-inflate", daemon=True
        )
        self._thread.start()

    def _run(self, source: BinaryIO, chunk_size: int) -> None:
        try:
            while not self._stop.is_set():
                block = source.read(chunk_size)
                self._digest.update(block)
                self._queue.put(block)
                if not block:
                    return
        except BaseException as error:  # handed to the reader, raised there
            self._queue.put(error)

    def _next_chunk(self) -> bytes:
        if self._ended:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self._ended = not item
        return item

    def sha256(self) -> str:
        """The whole payload's digest, once the parser is done (reading any tail)."""
        while self._next_chunk():
            pass
        return self._digest.hexdigest()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # drained, so that a blocked put returns
            with suppress(queue.Empty):
                self._queue.get(timeout=0.1)
        super().close()
