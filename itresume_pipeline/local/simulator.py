"""A local stand-in for the IT Resume statistics API, for the demo and the tests.

The real endpoint is slow (25–40 s a day), needs credentials, and never misbehaves on demand, so
the pipeline is developed and tested against this simulator instead. It serves the same contract
(one JSON array, `passback_params` as a Python dict literal, `is_correct` null for runs) from data
that depends only on `(seed, day, attempts_per_day)`, and it can be told to fail in the ways the
client must survive: 5xx, 429 with `Retry-After`, slow answers, truncated bodies, HTML garbage,
dropped connections, and the hostile kinds: bodies (data or error pages) that trickle in a byte
at a time, and redirects to somewhere else.

Only the standard library and orjson are used, so the simulator starts anywhere the package
imports. Days are rendered straight to bytes from precomputed per-user fragments, which keeps a
million-record day within a few seconds; a window is then served as slices of the cached day.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import logging
import random
import signal
import socket
import struct
import sys
import threading
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from json import dumps as _json_dumps
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

__all__ = [
    "DEFAULT_ATTEMPTS_PER_DAY",
    "FAULT_KINDS",
    "ApiSimulator",
    "generate_day",
    "main",
    "render_day_json",
]

logger = logging.getLogger(__name__)

DEFAULT_ATTEMPTS_PER_DAY = 6500
DEFAULT_SEED = 42
DEFAULT_CLIENT = "demo"
DEFAULT_CLIENT_KEY = "demo-key"
ENDPOINT_PATH = "/api/statistics"
FAULT_KINDS = frozenset(
    {"status", "429", "slow", "truncate", "garbage", "reset", "trickle", "redirect"}
)

# A request may span this many days at most: every touched day is held in memory while the
# response is written, and the pipeline itself asks for one day at a time.
MAX_WINDOW_DAYS = 93
# Rendered days kept per simulator, so a week-long window and retries hit the cache; the byte
# budget matters only for benchmark-sized days (a million records is about 0.5 GB).
DAY_CACHE_SIZE = 8
DAY_CACHE_BYTES = 1 << 30

_US_PER_SECOND = 1_000_000
_US_PER_HOUR = 3600 * _US_PER_SECOND
_US_PER_DAY = 24 * _US_PER_HOUR
_USER_POOL_SIZE = 4000
_MAX_ACTIVE_USERS = 1500
# Share of records whose created_at lands on a whole second; Python's str(datetime), which the
# real backend evidently uses, then drops the fraction, and clients must accept both forms.
_WHOLE_SECOND_SHARE = 0.005
# Relative activity per UTC hour: the audience is mostly in UTC+3, so nights are quiet.
_HOUR_WEIGHTS = (2, 1, 1, 1, 2, 4, 6, 8, 9, 10, 10, 10, 9, 9, 10, 10, 9, 8, 7, 6, 5, 4, 3, 2)
# (attempt_type, is_correct) in percent: most attempts are runs; a submit passes about 40% of
# the time.
_OUTCOME_WEIGHTS = (("run", "null", 56), ("submit", "0", 26), ("submit", "1", 18))


@dataclass(frozen=True)
class _Course:
    """One LTI course. The odd ones carry the quirks the parser must survive."""

    org: str
    code: str
    run: str
    host: str
    consumer_key: str
    has_outcome_url: bool
    popularity: int
    blocks: tuple[str, ...] = ()

    @property
    def course_id(self) -> str:
        return f"course-v1:{self.org}+{self.code}+{self.run}"


# Courses without an outcome URL omit the key entirely, as the real API does for some courses.
# An apostrophe makes repr() switch to double quotes; Cyrillic tests the encodings end to end.
_COURSE_TEMPLATES: tuple[_Course, ...] = (
    _Course("SkillFactory", "DST-3.0", "28FEB2021", "lms.skillfactory.ru", "", True, 30),
    _Course("SkillFactory", "SQL-PRO", "2023_T2", "lms.skillfactory.ru", "", True, 22),
    _Course("ITResume", "PY-BASICS", "2024_T1", "lms.itresume.ru", "", False, 16),
    _Course("ITResume", "DA-SIM", "2024_T3", "lms.itresume.ru", "", True, 10),
    _Course("Школа_данных", "Аналитик-SQL", "2024_весна", "edu.shkola-dannyh.ru", "", False, 8),
    _Course("O'Reilly", "DATA-ENG", "2024_T2", "learning.oreilly-lti.com", "", True, 6),
    _Course("Karpov", "AB-TESTS", "2024_Q4", "lab.karpov.courses", "karpov-lti", True, 8),
)


@dataclass(frozen=True)
class _Pool:
    """Everything about a seed that does not change from day to day: users and courses."""

    courses: tuple[_Course, ...]
    users: tuple[str, ...]
    enrollments: tuple[tuple[int, ...], ...]  # per user: indexes into courses


def _hex32(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


@lru_cache(maxsize=16)
def _pool(seed: int) -> _Pool:
    """A stable population, so the same learners come back day after day, as in real traffic."""
    rng = random.Random(f"itresume-sim:{seed}:pool")
    courses = tuple(
        _Course(**{**c.__dict__, "blocks": tuple(_hex32(rng) for _ in range(rng.randint(6, 14)))})
        for c in _COURSE_TEMPLATES
    )
    users = tuple(_hex32(rng) for _ in range(_USER_POOL_SIZE))
    weights = [c.popularity for c in courses]
    enrollments = []
    for _ in users:
        picked = set(rng.choices(range(len(courses)), weights=weights, k=rng.choice((1, 1, 2))))
        enrollments.append(tuple(sorted(picked)))
    return _Pool(courses=courses, users=users, enrollments=tuple(enrollments))


def _passback_params(course: _Course, block: str, user: str) -> str:
    """The Python dict literal the API sends: repr() of a dict, not JSON."""
    params = {
        "oauth_consumer_key": course.consumer_key,
        "lis_result_sourcedid": f"{course.course_id}:{course.host}-{block}:{user}",
    }
    if course.has_outcome_url:
        params["lis_outcome_service_url"] = (
            f"https://{course.host}/courses/{course.course_id}/xblock/block-v1:"
            f"{course.org}+{course.code}+{course.run}+type@lti+block@{block}"
            "/handler_noauth/outcome_service_handler"
        )
    return repr(params)


def _record_prefix(user: str, passback: str) -> str:
    # json.dumps escapes non-ASCII (as Python backends do by default), which keeps the whole
    # day an ASCII str: compact in memory and encoded to bytes with a plain copy.
    return f'{{"lti_user_id":"{user}","passback_params":{_json_dumps(passback)},"is_correct":'


@lru_cache(maxsize=1)
def _clock_table() -> tuple[str, ...]:
    """HH:MM:SS for every second of a day: a lookup beats formatting a million times."""
    return tuple(
        f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
    )


@dataclass(frozen=True)
class _RenderedDay:
    """A day's records as comma-joined chunks, plus the index to serve any sub-window by slicing.

    Chunks of `_CHUNK_RECORDS` records, rather than one body, keep rendering fast: one huge
    join costs more in fresh-page faults than building the records does. Record i lives in
    chunks[i // _CHUNK_RECORDS] from offset starts[i]; micros[i] is its created_at in
    microseconds of the day, ascending.
    """

    chunks: list[bytes]
    starts: array
    micros: array

    def __len__(self) -> int:
        return len(self.micros)

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.chunks))

    def _end(self, i: int) -> int:
        """Offset just past record i inside its chunk."""
        if (i + 1) % _CHUNK_RECORDS == 0 or i + 1 == len(self.micros):
            return len(self.chunks[i // _CHUNK_RECORDS])
        return self.starts[i + 1] - 1

    def window(self, lo_us: int, hi_us: int) -> list[bytes | memoryview]:
        """The records with lo_us <= created_at < hi_us, as pieces to be joined with commas."""
        i = bisect.bisect_left(self.micros, lo_us)
        j = bisect.bisect_left(self.micros, hi_us)
        if i >= j:
            return []
        first, last = i // _CHUNK_RECORDS, (j - 1) // _CHUNK_RECORDS
        pieces: list[bytes | memoryview] = list(self.chunks[first : last + 1])
        head, tail = self.starts[i], self._end(j - 1)
        if first == last:
            if head or tail != len(pieces[0]):
                pieces[0] = memoryview(pieces[0])[head:tail]
            return pieces
        if head:
            pieces[0] = memoryview(pieces[0])[head:]
        if tail != len(pieces[-1]):
            pieces[-1] = memoryview(pieces[-1])[:tail]
        return pieces


_CHUNK_RECORDS = 8192


def _split(total: int, weights: Sequence[int], rng: random.Random) -> list[int]:
    """`total` shared out in proportion to jittered weights; the parts always sum to `total`."""
    jittered = [w * rng.uniform(0.85, 1.15) for w in weights]
    scale = total / sum(jittered)
    parts = [int(w * scale) for w in jittered]
    for i in rng.sample(range(len(parts)), total - sum(parts)):
        parts[i] += 1
    return parts


def _render(day: date, seed: int, attempts_per_day: int) -> _RenderedDay:
    """Build one day's records as ASCII bytes, sorted by created_at, with their offsets."""
    if attempts_per_day < 0:
        raise ValueError("attempts_per_day must be >= 0")
    n = attempts_per_day
    pool = _pool(seed)
    rng = random.Random(f"itresume-sim:{seed}:{day.isoformat()}:{n}")

    # Who is active today, how busy each of them is, and which problems they work on. The
    # weighted choice is done by repetition so the per-record draw is an unweighted choices().
    active = min(len(pool.users), _MAX_ACTIVE_USERS, max(1, n // 5))
    prefixes: list[str] = []
    for u in rng.sample(range(len(pool.users)), active):
        user = pool.users[u]
        busy = min(40, int(rng.paretovariate(1.3)))
        course = pool.courses[rng.choice(pool.enrollments[u])]
        for block in rng.sample(course.blocks, rng.randint(1, 3)):
            prefixes.extend([_record_prefix(user, _passback_params(course, block, user))] * busy)

    stamp = day.isoformat()
    outcomes = [
        f'{flag},"attempt_type":"{kind}","created_at":"{stamp} '
        for kind, flag, weight in _OUTCOME_WEIGHTS
        for _ in range(weight)
    ]

    # Sorted timestamps, built hour by hour: sorting 24 small lists beats sorting one big one,
    # and 32-bit draws taken from one big getrandbits() beat a million random() calls. A few
    # land on a whole second, before the sort so the order holds.
    micros = array("q")
    for hour, count in enumerate(_split(n, _HOUR_WEIGHTS, rng)):
        draws = array("I")
        draws.frombytes(rng.getrandbits(32 * count).to_bytes(4 * count, "little"))
        if sys.byteorder == "big":
            draws.byteswap()
        base = hour * _US_PER_HOUR
        bucket = [base + (x * _US_PER_HOUR >> 32) for x in draws]
        for i in rng.sample(range(count), round(count * _WHOLE_SECOND_SHARE)):
            bucket[i] -= bucket[i] % _US_PER_SECOND
        bucket.sort()
        micros.extend(bucket)

    # Prefixes and outcomes are drawn independently of time, so sorting only the timestamps
    # and zipping afterwards gives the same distribution as sorting whole records.
    clock = _clock_table()
    user_parts = rng.choices(prefixes, k=n)
    outcome_parts = rng.choices(outcomes, k=n)
    chunks: list[bytes] = []
    starts = array("q")
    for lo in range(0, n, _CHUNK_RECORDS):
        hi = min(n, lo + _CHUNK_RECORDS)
        records = [
            f'{p}{o}{clock[m // _US_PER_SECOND]}"}}'
            if not m % _US_PER_SECOND
            else f'{p}{o}{clock[m // _US_PER_SECOND]}.{m % _US_PER_SECOND:06d}"}}'
            for p, o, m in zip(user_parts[lo:hi], outcome_parts[lo:hi], micros[lo:hi], strict=True)
        ]
        chunks.append(",".join(records).encode("ascii"))
        starts.extend(itertools.accumulate((len(r) + 1 for r in records[:-1]), initial=0))
    return _RenderedDay(chunks=chunks, starts=starts, micros=micros)


def _interleave(pieces: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """Brackets and commas around comma-less pieces: the parts of one JSON array."""
    parts: list[bytes | memoryview] = [b"["]
    for i, piece in enumerate(pieces):
        if i:
            parts.append(b",")
        parts.append(piece)
    parts.append(b"]")
    return parts


def render_day_json(
    day: date, *, seed: int = DEFAULT_SEED, attempts_per_day: int = DEFAULT_ATTEMPTS_PER_DAY
) -> bytes:
    """The API's whole-day response body for `day` (UTC), exactly as the simulator serves it."""
    return b"".join(_interleave(_render(day, seed, attempts_per_day).chunks))


def generate_day(
    day: date, *, seed: int = DEFAULT_SEED, attempts_per_day: int = DEFAULT_ATTEMPTS_PER_DAY
) -> list[dict[str, Any]]:
    """The day's records as dicts, sorted by created_at: the served bytes, parsed back."""
    return orjson.loads(render_day_json(day, seed=seed, attempts_per_day=attempts_per_day))


# --- request handling -------------------------------------------------------------------------


class _BadRequest(Exception):
    """A 400 with its messages; raised while parsing the query."""

    def __init__(self, *errors: str) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)


def _parse_moment(name: str, value: str) -> datetime:
    """Accept the formats the real API takes: space or T separator, with or without time/µs."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _BadRequest(
            f"invalid {name}: {value!r} (expected 'YYYY-MM-DD HH:MM:SS.ffffff' or 'YYYY-MM-DD')"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _created_at_micros(record: Any) -> int | None:
    """created_at as epoch microseconds, or None if the record has no usable timestamp."""
    if not isinstance(record, dict) or not isinstance(record.get("created_at"), str):
        return None
    try:
        moment = datetime.fromisoformat(record["created_at"])
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return _epoch_us(moment)


_EPOCH = datetime(1970, 1, 1)


def _epoch_us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * _US_PER_SECOND + delta.microseconds


@dataclass(frozen=True)
class _Override:
    """A day whose data a test has replaced: either records to filter, or bytes to serve as-is."""

    raw: bytes
    records: list[Any] | None  # None when raw is not a JSON array


@dataclass
class _Fault:
    kind: str
    options: dict[str, Any]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    simulator: ApiSimulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that times out or hangs up mid-body is expected here, not a bug to print."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # resets, broken pipes, timeouts
            logger.debug("client %s went away: %r", client_address, exc)
            return
        logger.exception("simulator failed to answer %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "itresume-simulator"

    def log_message(self, format: str, *args: Any) -> None:
        """The default line carries the query string, i.e. the client key; log our own instead."""

    def do_GET(self) -> None:
        self.server.simulator._handle(self)


class ApiSimulator:
    """The statistics API on a local port, for tests (in-process) and the demo (console script).

    Faults queued with `inject` are consumed, in order, by the next requests to the endpoint,
    so a test can script "two 503s, then success" and watch the client's retries in `requests`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = DEFAULT_SEED,
        attempts_per_day: int = DEFAULT_ATTEMPTS_PER_DAY,
        client: str = DEFAULT_CLIENT,
        client_key: str = DEFAULT_CLIENT_KEY,
        latency: float = 0.0,
    ) -> None:
        if attempts_per_day < 0:
            raise ValueError("attempts_per_day must be >= 0")
        self.host = host
        self.port = port
        self.seed = seed
        self.attempts_per_day = attempts_per_day
        self.client = client
        self.client_key = client_key
        self.latency = latency
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        self._overrides: dict[date, _Override] = {}
        self._cache: OrderedDict[tuple[int, date, int], _RenderedDay] = OrderedDict()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ApiSimulator:
        """Bind and serve in a daemon thread; port 0 picks a free port, read back from `.port`."""
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.simulator = self
        self.port = server.server_address[1]
        self._server = server
        self._closing.clear()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # close() waits for one poll; keep fixtures quick
            name=f"itresume-simulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; sleeping handlers (latency, slow faults) wake up and finish at once."""
        self._closing.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ApiSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The full endpoint, i.e. what ITRESUME_API_URL should be set to."""
        return self.base_url + ENDPOINT_PATH

    # --- test controls -----------------------------------------------------------------------

    def inject(self, kind: str, *, times: int = 1, **options: Any) -> None:
        """Queue `times` faults for the next requests to the endpoint.

        kinds: "status" (code=500, body=None, retry_after=None), "429" (retry_after=None),
        "slow" (seconds=5.0, then a normal answer), "truncate" (full Content-Length, half the
        body, then close), "garbage" (200 with an HTML page, or `body`), "reset" (drop the
        connection without answering), "trickle" (the normal answer, its body sent `chunk=1`
        bytes every `interval=1.0` s), "redirect" (`code=302` to `location`, which is
        required; `with_query=True` appends the request's query string, key included, as a
        proxy that rewrites only the host would). A "status" body may trickle too (`trickle=`
        seconds between bytes). A bare status code such as "503" is shorthand for "status".
        """
        if kind.isdigit() and kind != "429":
            options = {**options, "code": int(kind)}
            kind = "status"
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        allowed = {
            "status": {"code", "body", "retry_after", "content_type", "trickle"},
            "429": {"body", "retry_after"},
            "slow": {"seconds"},
            "truncate": set(),
            "garbage": {"body", "content_type"},
            "reset": set(),
            "trickle": {"interval", "chunk"},
            "redirect": {"location", "code", "with_query"},
        }[kind]
        if unknown := set(options) - allowed:
            raise TypeError(f"fault {kind!r} takes no option(s) {sorted(unknown)}")
        if kind == "redirect" and not options.get("location"):
            raise TypeError("fault 'redirect' needs a location")
        if kind == "status" and "code" not in options:
            options["code"] = 500
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.extend(_Fault(kind, dict(options)) for _ in range(times))

    def clear_faults(self) -> None:
        """Drop faults that no request has consumed yet."""
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def set_day_payload(self, day: date, payload: Sequence[Any] | bytes | None) -> None:
        """Replace one day's data: records (rendered with orjson) or raw bytes; None restores it.

        A window of exactly that day gets the payload verbatim, bad records and out-of-day
        timestamps included, which is how tests feed the pipeline's validation. A longer window
        that covers the day gets all of its records; a window that cuts the day gets those whose
        created_at falls inside it. Raw bytes that are not a JSON array appear only verbatim.
        """
        if payload is None:
            with self._lock:
                self._overrides.pop(day, None)
            return
        if isinstance(payload, bytes | bytearray | memoryview):
            raw = bytes(payload)
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = None
            records = parsed if isinstance(parsed, list) else None
        else:
            records = list(payload)
            raw = orjson.dumps(records)
        with self._lock:
            self._overrides[day] = _Override(raw=raw, records=records)

    # --- serving -----------------------------------------------------------------------------

    def _day(self, day: date) -> _RenderedDay:
        key = (self.seed, day, self.attempts_per_day)
        with self._render_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            rendered = _render(day, self.seed, self.attempts_per_day)
            self._cache[key] = rendered
            # Evict by count and by size, but never the day just rendered.
            while len(self._cache) > 1 and (
                len(self._cache) > DAY_CACHE_SIZE
                or sum(d.nbytes for d in self._cache.values()) > DAY_CACHE_BYTES
            ):
                self._cache.popitem(last=False)
            return rendered

    def _window_pieces(self, start: datetime, end: datetime) -> list[bytes | memoryview]:
        """The JSON array for [start, end) as pieces to write one after another."""
        if end <= start:
            return [b"[]"]
        first, last = start.date(), (end - timedelta(microseconds=1)).date()
        if (last - first).days >= MAX_WINDOW_DAYS:
            raise _BadRequest(f"window too long: at most {MAX_WINDOW_DAYS} days per request")
        with self._lock:
            overrides = dict(self._overrides)
        start_us, end_us = _epoch_us(start), _epoch_us(end)
        if first == last and (override := overrides.get(first)) is not None:
            day_us = _epoch_us(datetime.combine(first, datetime.min.time()))
            if start_us == day_us and end_us == day_us + _US_PER_DAY:
                return [override.raw]

        parts: list[bytes | memoryview] = []
        day = first
        while day <= last:
            day_us = _epoch_us(datetime.combine(day, datetime.min.time()))
            lo, hi = max(start_us - day_us, 0), min(end_us - day_us, _US_PER_DAY)
            if (override := overrides.get(day)) is not None:
                parts.extend(_override_window(override, lo, hi, day_us))
            else:
                parts.extend(self._day(day).window(lo, hi))
            day += timedelta(days=1)
        return _interleave(parts)

    def _handle(self, h: _Handler) -> None:
        """Answer one request: path, faults, latency, validation, then the data."""
        url = urlsplit(h.path)
        raw_params = parse_qs(url.query, keep_blank_values=True)
        params = {k: v[0] for k, v in raw_params.items()}
        logged = {k: ("***" if k == "client_key" else v) for k, v in params.items()}

        def record(status: int | None) -> None:
            # Logged before the answer goes out, so a test that got its response can rely on it.
            with self._lock:
                self.requests.append({"path": url.path, "params": logged, "status": status})
            logger.info("GET %s %s -> %s", url.path, logged, status)

        if self.latency > 0:
            self._closing.wait(self.latency)
        if url.path != ENDPOINT_PATH:
            record(404)
            self._send_json(h, 404, {"errors": [f"not found: {url.path}"]})
            return

        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.kind == "slow":
            self._closing.wait(float(fault.options.get("seconds", 5.0)))
            fault = None
        if fault is not None and self._send_fault(h, fault, record):
            return

        try:
            pieces = self._answer(params)
        except _BadRequest as exc:
            record(400)
            self._send_json(h, 400, {"errors": exc.errors})
            return
        except _Unauthorized:
            record(401)
            self._send_json(h, 401, {"errors": ["invalid client_key"]})
            return

        total = sum(len(p) for p in pieces)
        record(200)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(total))
        h.end_headers()
        if fault is not None and fault.kind == "truncate":
            _write_truncated(h, pieces, total // 2)
            return
        if fault is not None and fault.kind == "trickle":
            opts = fault.options
            self._trickle(h, pieces, float(opts.get("interval", 1.0)), int(opts.get("chunk", 1)))
            return
        for piece in pieces:
            h.wfile.write(piece)

    def _answer(self, params: dict[str, str]) -> list[bytes | memoryview]:
        missing = [k for k in ("client", "client_key", "start", "end") if not params.get(k)]
        if missing:
            raise _BadRequest(*(f"missing required parameter: {k}" for k in missing))
        if params["client"] != self.client or params["client_key"] != self.client_key:
            raise _Unauthorized
        errors: list[str] = []
        moments: list[datetime] = []
        for name in ("start", "end"):
            try:
                moments.append(_parse_moment(name, params[name]))
            except _BadRequest as exc:
                errors.extend(exc.errors)
        if errors:
            raise _BadRequest(*errors)
        try:
            return self._window_pieces(moments[0], moments[1])
        except OverflowError:
            raise _BadRequest("start/end out of range") from None

    def _send_fault(self, h: _Handler, fault: _Fault, record: Callable[[int | None], None]) -> bool:
        """Play a fault; False means "answer normally afterwards" (truncate)."""
        opts = fault.options
        if fault.kind in ("truncate", "trickle"):
            return False
        if fault.kind == "redirect":
            code = int(opts.get("code", 302))
            location = str(opts["location"])
            if opts.get("with_query", True) and (query := urlsplit(h.path).query):
                location += ("&" if "?" in location else "?") + query
            record(code)
            self._send(h, code, b"", "text/plain", {"Location": location})
            return True
        if fault.kind == "reset":
            record(None)
            # SO_LINGER 0 makes close() send RST: the client sees a reset, not a clean EOF.
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.rfile.close()  # the reader holds a reference that would defer the close
            h.connection.close()
            return True
        if fault.kind == "garbage":
            body = opts.get("body") or (
                b"<!DOCTYPE html><html><head><title>Technical works</title></head>"
                b"<body><h1>The service is temporarily unavailable</h1></body></html>"
            )
            record(200)
            self._send(
                h, 200, _as_bytes(body), opts.get("content_type", "text/html; charset=utf-8")
            )
            return True
        code = 429 if fault.kind == "429" else int(opts["code"])
        body = opts.get("body")
        if body is None:
            body = {"errors": [f"simulated {code} {_reason(code)}"]}
        headers = {}
        if opts.get("retry_after") is not None:
            headers["Retry-After"] = str(opts["retry_after"])
        content_type = opts.get(
            "content_type",
            "application/json" if not isinstance(body, str | bytes) else "text/plain",
        )
        record(code)
        if opts.get("trickle") is not None:
            h.send_response(code)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(_as_bytes(body))))
            for name, value in headers.items():
                h.send_header(name, value)
            h.end_headers()
            self._trickle(h, [_as_bytes(body)], float(opts["trickle"]), 1)
            return True
        self._send(h, code, _as_bytes(body), content_type, headers)
        return True

    def _trickle(
        self, h: _Handler, pieces: Sequence[bytes | memoryview], interval: float, chunk: int
    ) -> None:
        """Write the body `chunk` bytes at a time, `interval` s apart, until it is all sent,
        the client hangs up, or the simulator closes (then the connection is dropped)."""
        h.close_connection = True
        body = memoryview(b"".join(pieces))
        for at in range(0, len(body), max(1, chunk)):
            try:
                h.wfile.write(body[at : at + max(1, chunk)])
                h.wfile.flush()
            except OSError:  # the client gave up: what a trickle is meant to provoke
                return
            if self._closing.wait(interval):
                return

    @staticmethod
    def _send(
        h: _Handler,
        code: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        h.send_response(code)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)

    def _send_json(self, h: _Handler, code: int, payload: Any) -> None:
        self._send(h, code, orjson.dumps(payload), "application/json")


class _Unauthorized(Exception):
    """Wrong client or key."""


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "error"


def _as_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return orjson.dumps(body)


def _override_window(override: _Override, lo: int, hi: int, day_us: int) -> list[bytes]:
    """An overridden day's share of a window: all of it if fully covered, else by created_at."""
    if override.records is None:
        return []
    if lo == 0 and hi == _US_PER_DAY:
        chosen = override.records
    else:
        chosen = []
        for rec in override.records:
            us = _created_at_micros(rec)
            if us is not None and lo <= us - day_us < hi:
                chosen.append(rec)
    return [orjson.dumps(rec) for rec in chosen]


def _write_truncated(h: _Handler, pieces: list[bytes | memoryview], limit: int) -> None:
    """Send only `limit` bytes of a body whose full length was declared, then hang up."""
    sent = 0
    for piece in pieces:
        if sent >= limit:
            break
        chunk = memoryview(piece)[: limit - sent]
        h.wfile.write(chunk)
        sent += len(chunk)
    h.close_connection = True
    with contextlib.suppress(OSError):
        h.connection.shutdown(socket.SHUT_RDWR)


# --- console script ---------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itresume-simulator",
        description="Serve the IT Resume statistics API contract with deterministic data.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="data seed (42)")
    parser.add_argument(
        "--attempts-per-day",
        type=int,
        default=DEFAULT_ATTEMPTS_PER_DAY,
        help=f"records per UTC day ({DEFAULT_ATTEMPTS_PER_DAY})",
    )
    parser.add_argument("--client", default=DEFAULT_CLIENT, help="accepted client name")
    parser.add_argument("--client-key", default=DEFAULT_CLIENT_KEY, help="accepted client key")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds to wait before each answer (0)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then exit 0."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    sim = ApiSimulator(
        host=args.host,
        port=args.port,
        seed=args.seed,
        attempts_per_day=args.attempts_per_day,
        client=args.client,
        client_key=args.client_key,
        latency=args.latency,
    )
    try:
        sim.start()
    except OSError as exc:
        print(f"itresume-simulator: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    try:
        # The demo credentials are not secrets; printing them is the point of this line.
        print(
            f"itresume-simulator serving {sim.url} "
            f"(ITRESUME_API_URL={sim.url} ITRESUME_CLIENT={sim.client} "
            f"ITRESUME_CLIENT_KEY={sim.client_key}; seed={sim.seed}, "
            f"{sim.attempts_per_day} attempts/day)",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        sim.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
