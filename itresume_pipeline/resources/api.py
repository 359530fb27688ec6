"""Client for the IT Resume statistics API.

The API answers one JSON array per request, with no pagination, in 25–40 s for a real day. The
client therefore streams the body to a file (flat memory), uses minute-scale read timeouts, and
retries only what a retry can fix, all within one budget of `max_attempts` requests:

* urllib3's `Retry` on the session (`itresume_pipeline.retrying`): 429 and 5xx (`Retry-After`
  honoured), connect errors, timeouts and broken connections before the headers;
* this module, for what urllib3 cannot see: a 200 whose body breaks off mid-stream, or is not
  one complete array (proxies send HTML error pages transiently).

It also assumes the API, or something in front of it, may be hostile:

* every message it logs or raises is masked, requests' own exception texts included (they carry
  the full URL, key and all); an error body is read bounded (`ERROR_BODY_BYTES`, at most
  `error_body_timeout_s`), masked whole, and only then cut to an excerpt;
* a download has a total deadline, `ITRESUME_API_DEADLINE_S`, over every attempt and wait,
  connect, headers and the whole body: a read timeout bounds only the silence between two
  bytes, so a body trickling in a byte at a time would otherwise never end. At the deadline a
  watchdog shuts the request's socket down, which returns a blocked read at once;
* `download(cancel=...)`: setting the event stops the request the same way within a fraction
  of a second (and cuts a backoff wait short), raising `ApiCancelled`;
* redirects are followed only within the same scheme, host and port (the key is in the query
  string, so any other host would receive it);
* a 200 whose body is a JSON object is the API's error message, not data: it fails at once,
  quoting the message.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode, urljoin, urlsplit

import orjson
import requests
import urllib3
from dagster import ConfigurableResource
from isal import isal_zlib
from pydantic import Field
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import MaxRetryError

from itresume_pipeline.redaction import redact
from itresume_pipeline.retrying import HttpRetry, http_retry, mount
from itresume_pipeline.settings import DEFAULT_API_URL, SettingError, api_deadline_s
from itresume_pipeline.streams import ChunkStream

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
STREAM_CHUNK_BYTES = 1 << 20
#: An error body is read up to this size (and `error_body_timeout_s`), then cut to an excerpt.
ERROR_BODY_BYTES = 64 << 10
ERROR_EXCERPT_CHARS = 300
#: Same-origin redirects followed per request; a redirect anywhere else is refused.
MAX_REDIRECTS = 3
#: How often the watchdog looks at the clock and at the cancel event.
WATCH_INTERVAL_S = 0.1
URL_VAR = "ITRESUME_API_URL"
CLIENT_VAR = "ITRESUME_CLIENT"
CLIENT_KEY_VAR = "ITRESUME_CLIENT_KEY"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MESSAGE_KEYS = ("errors", "error", "message", "detail")


class ApiError(Exception):
    """The API could not deliver the window; the message is already redacted.

    `retryable` says whether another request might succeed; an error that reaches the caller
    has already spent the retries it deserved.
    """

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class ApiAuthError(ApiError):
    """401/403: the credentials are wrong, and no retry can fix that."""


class ApiCancelled(ApiError):
    """The caller set the cancel event (the run is being stopped); never retried."""

    def __init__(self) -> None:
        super().__init__("IT Resume API download cancelled: the run is stopping", retryable=False)


@dataclass(frozen=True)
class Download:
    """What one successful request delivered to disk."""

    path: Path
    bytes: int
    records: int  # -1 when no validator counted them
    sha256: str
    attempts: int
    seconds: float
    url: str  # redacted


def format_api_datetime(moment: datetime) -> str:
    """The API's own timestamp format, `YYYY-MM-DD HH:MM:SS.ffffff` (naive UTC)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


class ItResumeApiResource(ConfigurableResource):
    """The statistics endpoint with its credentials, timeouts and retry budget."""

    url: str = Field(default=DEFAULT_API_URL, description=f"Statistics endpoint ({URL_VAR}).")
    client: str = Field(default="", description=f"API client name ({CLIENT_VAR}).")
    client_key: str = Field(default="", description=f"API client key ({CLIENT_KEY_VAR}).")
    connect_timeout_s: float = Field(default=10.0, description="TCP/TLS connect timeout.")
    read_timeout_s: float = Field(
        default=300.0,
        description="Max silence between bytes; real calls take 25-40 s. The total time of a "
        "download is bounded by ITRESUME_API_DEADLINE_S.",
    )
    error_body_timeout_s: float = Field(
        default=10.0, gt=0, description="Max time spent reading an error body (an excerpt)."
    )
    max_attempts: int = Field(
        default=5, ge=1, description="Requests per window, first one included, whatever failed."
    )
    backoff_base_s: float = Field(
        default=1.0,
        ge=0,
        description="Backoff factor: the n-th retry waits this x 2^(n-1) s plus up to this of "
        "jitter; the first retry goes at once.",
    )
    backoff_max_s: float = Field(
        default=60.0, ge=0, description="Cap on one retry wait, Retry-After included."
    )
    max_concurrent_requests: int = Field(
        default=4, ge=1, description="Parallel day requests during a backfill."
    )

    # -- public -------------------------------------------------------------------------------

    def redacted_url(self, start: datetime, end: datetime) -> str:
        """The request URL as it may be shown: the key replaced by ***."""
        return self._url(start, end, key="***")

    def download(
        self,
        start: datetime,
        end: datetime,
        dest: Path,
        *,
        validate_stream: Callable[[BinaryIO], int] | None = None,
        cancel: threading.Event | None = None,
    ) -> Download:
        """Stream the window's payload into `dest` (gzip), retrying what a retry can fix.

        `validate_stream` reads the raw body as it arrives and returns its record count, or
        raises ValueError for a body that is not a complete payload (an HTML error page, a
        cut-off array). Such a body is retried like a 5xx: proxies in front of APIs produce them
        transiently. Meanwhile another thread hashes and compresses the body, so checking
        overlaps compression on a second core and the file is never read back.

        Setting `cancel` stops the call within a fraction of a second with `ApiCancelled`.
        """
        self._require_credentials()
        url = self._url(start, end, key=self.client_key)
        began = time.perf_counter()
        with _Watchdog(api_deadline_s(), cancel) as watch, requests.Session() as session:
            adapter = mount(session, self._retry(watch), _WatchedAdapter)
            watch.check()  # cancelled already: not even one request
            while True:
                response = self._get(session, url, watch)
                retry: HttpRetry = response.raw.retries
                try:
                    with response:
                        self._raise_for_status(response, watch, retry.attempts)
                        size, digest, records = self._land(response, dest, validate_stream, watch)
                except ApiError as error:
                    if not error.retryable:
                        raise
                    adapter.max_retries = self._retry_body(retry, error)
                    continue
                return Download(
                    path=dest,
                    bytes=size,
                    records=records,
                    sha256=digest,
                    attempts=retry.attempts,
                    seconds=time.perf_counter() - began,
                    url=self.redacted_url(start, end),
                )

    # -- internals ----------------------------------------------------------------------------

    def _url(self, start: datetime, end: datetime, *, key: str) -> str:
        query = urlencode(
            {
                "client": self.client,
                "client_key": key,
                "start": format_api_datetime(start),
                "end": format_api_datetime(end),
            }
        )
        return f"{self.endpoint}?{query}"

    @property
    def endpoint(self) -> str:
        """The configured URL, refused unless it is http(s) with a host: a typo is no retry."""
        value = self.url.strip()
        parts = urlsplit(value)
        if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
            raise SettingError(
                f"{URL_VAR}={self._clean(value)!r} is not an http(s) URL: use e.g. "
                f"{DEFAULT_API_URL}"
            )
        return value

    def _require_credentials(self) -> None:
        missing = [
            name
            for name, value in (
                (CLIENT_VAR, self.client),
                (CLIENT_KEY_VAR, self.client_key),
            )
            if not value.strip()
        ]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise SettingError(
                f"{' and '.join(missing)} {verb} not set: required to call the IT Resume API"
            )

    def _clean(self, text: str) -> str:
        """Mask the key (whole, cut short or encoded) and every other secret we know of."""
        return redact(text, secrets=(self.client_key,))

    def _excerpt(self, text: str) -> str:
        """Mask first, then cut: a key straddling the cut is still recognised whole."""
        text = " ".join(self._clean(text).split())
        if not text:
            return "<empty body>"
        if len(text) <= ERROR_EXCERPT_CHARS:
            return text
        return text[:ERROR_EXCERPT_CHARS] + "…"

    def _retry(self, watch: _Watchdog) -> HttpRetry:
        """The download's one budget; only GET is ever sent, and a 4xx other than 429 is final."""
        return http_retry(
            label="IT Resume API",
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            statuses=RETRYABLE_STATUSES,
            methods=frozenset({"GET"}),
            pause=watch.pause,
            mask=self._clean,
        )

    def _retry_body(self, retry: HttpRetry, error: ApiError) -> HttpRetry:
        """A body that failed after a 200 spends the same budget and waits like urllib3 would."""
        try:
            retry = retry.increment("GET", urlsplit(self.endpoint).path, error=error)
        except MaxRetryError:
            raise ApiError(
                f"{error} (gave up after {retry.attempts} attempts)", retryable=False
            ) from None
        retry.sleep()
        return retry

    def _get(self, session: requests.Session, url: str, watch: _Watchdog) -> requests.Response:
        """GET `url`, following at most `MAX_REDIRECTS` redirects, all to the same origin."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = session.get(
                    url,
                    timeout=(min(self.connect_timeout_s, watch.deadline_s), self.read_timeout_s),
                    stream=True,
                    allow_redirects=False,
                    headers={"Accept": "application/json", "Accept-Encoding": "gzip"},
                )
            except requests.RequestException as error:
                watch.check()
                spent = bool(error.args) and isinstance(error.args[0], MaxRetryError)
                budget = session.get_adapter(url).max_retries.max_attempts
                raise ApiError(
                    "IT Resume API request failed: "
                    f"{type(error).__name__}: {self._clean(str(error))}"
                    + (f" (gave up after {budget} attempts)" if spent else ""),
                    retryable=False,
                ) from None
            if not response.is_redirect:
                return response
            target = urljoin(url, response.headers["Location"])
            response.close()
            if _origin(target) != _origin(url):
                raise ApiError(
                    f"IT Resume API redirected (HTTP {response.status_code}) to another host, "
                    f"{self._clean(_host(target))}; not followed, since the request carries the "
                    f"client key. Check {URL_VAR}.",
                    retryable=False,
                    status=response.status_code,
                )
            session.get_adapter(target).max_retries = response.raw.retries
            url = target
        raise ApiError(
            f"IT Resume API redirected more than {MAX_REDIRECTS} times; check {URL_VAR}.",
            retryable=False,
        )

    def _land(
        self,
        response: requests.Response,
        dest: Path,
        validate_stream: Callable[[BinaryIO], int] | None,
        watch: _Watchdog,
    ) -> tuple[int, str, int]:
        """Land the body (gzip, sha256) on a thread while `validate_stream` reads it here.

        A body that breaks off or fails validation is retryable; anything else is final.
        """
        writer = _GzipWriterThread(dest)
        body = _TeeReader(response.iter_content(STREAM_CHUNK_BYTES), writer.put, watch.check)
        try:
            self._refuse_error_object(body)
            records = validate_stream(body) if validate_stream else -1
            body.drain()  # a validator may stop early; the landing copy must be whole
        except requests.RequestException as error:
            watch.check()
            raise ApiError(
                "IT Resume API response broke off mid-body: "
                f"{type(error).__name__}: {self._clean(str(error))}",
                retryable=True,
            ) from None
        except ValueError as error:
            watch.check()
            raise ApiError(
                f"IT Resume API sent an invalid payload: {self._clean(str(error))}",
                retryable=True,
            ) from None
        finally:
            size, digest = writer.close()
        return size, digest, records

    def _refuse_error_object(self, body: _TeeReader) -> None:
        """A 200 with a JSON object is the API's own error (e.g. an unknown key): no retry."""
        if body.first_nonblank() != b"{":
            return
        try:
            answer = orjson.loads(body.peek(ERROR_BODY_BYTES))
        except orjson.JSONDecodeError:
            return  # not a whole object: the validator says what it is, and it is retried
        if isinstance(answer, dict):
            raise ApiError(
                "IT Resume API answered HTTP 200 with an error instead of data: "
                f"{self._excerpt(_api_message(answer))}",
                retryable=False,
                status=200,
            )

    def _raise_for_status(self, response: requests.Response, watch: _Watchdog, tries: int) -> None:
        """Any status but 200 is final here: urllib3 retried the retryable ones already."""
        status = response.status_code
        if status == 200:
            return
        watch.cut_after(self.error_body_timeout_s)
        detail = self._excerpt(_read_error_body(response))
        watch.check()
        where = f"for client {self.client!r}"
        if status in (401, 403):
            raise ApiAuthError(
                f"IT Resume API refused the credentials {where} (HTTP {status}): {detail}. "
                "Check ITRESUME_CLIENT and ITRESUME_CLIENT_KEY.",
                retryable=False,
                status=status,
            )
        spent = f" (gave up after {tries} attempts)" if status in RETRYABLE_STATUSES else ""
        raise ApiError(
            f"IT Resume API answered HTTP {status} {where}: {detail}{spent}",
            retryable=False,
            status=status,
        )


# -- the watchdog: a total deadline and cancellation for blocking reads -----------------------

_current = threading.local()  # the watchdog of the download this thread is making


class _Watchdog:
    """Bounds a download: at its deadline, or once `cancel` is set, shuts its sockets down.

    A blocked `recv` cannot be interrupted from another thread, but a socket shut down under
    it returns at once, and the read fails. The sockets are those the connection classes below
    open while this watchdog is the thread's current one. `check()` turns the cause into the
    error the caller sees, and is also called between chunks.
    """

    def __init__(self, deadline_s: float, cancel: threading.Event | None) -> None:
        self.deadline_s = deadline_s
        self._deadline = time.monotonic() + deadline_s
        self._cut_at: float | None = None
        self._cancel = cancel
        self._reason: str | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._fired = threading.Event()
        self._thread = threading.Thread(target=self._run, name="itresume-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        _current.watchdog = self
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _current.watchdog = None
        self._done.set()

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self._reason is not None
        if fired:
            _shut(sock)

    def cut_after(self, seconds: float) -> None:
        """Also stop the request `seconds` from now, without that counting as an error."""
        self._cut_at = time.monotonic() + seconds

    def pause(self, seconds: float) -> None:
        """A retry's wait, cut short by cancel or the deadline, which then raise."""
        self._fired.wait(max(0.0, min(seconds, self._deadline - time.monotonic())))
        self.check()

    def check(self) -> None:
        """Raise if the request was (or is due to be) stopped by cancel or the deadline."""
        reason = self._reason or self._due()
        if reason == "cancelled":
            raise ApiCancelled
        if reason == "deadline":
            raise ApiError(
                f"IT Resume API download did not finish within its deadline of "
                f"{self.deadline_s:g} s (ITRESUME_API_DEADLINE_S), every attempt, wait and body "
                "included; not retried",
                retryable=False,
            )

    def _due(self) -> str | None:
        if self._cancel is not None and self._cancel.is_set():
            return "cancelled"
        now = time.monotonic()
        if now >= self._deadline:
            return "deadline"
        if self._cut_at is not None and now >= self._cut_at:
            return "cut"
        return None

    def _run(self) -> None:
        while not self._done.wait(WATCH_INTERVAL_S):
            reason = self._due()
            if reason is not None:
                with self._lock:
                    self._reason = reason
                    sockets = list(self._sockets)
                self._fired.set()
                for sock in sockets:
                    _shut(sock)
                return


def _shut(sock: socket.socket) -> None:
    # The plain socket's method, also for an SSLSocket: only the kernel's side must stop here;
    # the reading thread still owns the TLS state.
    with suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _register(sock: Any) -> None:
    watchdog = getattr(_current, "watchdog", None)
    if watchdog is not None and isinstance(sock, socket.socket):
        watchdog.register(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _register(sock)
        return sock


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _register(sock)
        return sock

    def connect(self) -> None:
        super().connect()
        _register(self.sock)  # the TLS socket that replaced the plain one


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter, with connections the current `_Watchdog` can shut down."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # SOCKS managers keep their own pools
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


# -- bodies -----------------------------------------------------------------------------------


class _TeeReader(ChunkStream):
    """The response body as a readable binary stream; every chunk is also handed to `sink`.

    `check` runs before each chunk is fetched, so a cancelled or overdue request stops between
    chunks even when the socket is not blocked.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        sink: Callable[[bytes], None],
        check: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self._chunks = chunks
        self._sink = sink
        self._check = check

    def _next_chunk(self) -> bytes:
        self._check()
        for chunk in self._chunks:
            if chunk:
                self._sink(chunk)
                return chunk
        return b""

    def drain(self) -> None:
        """Pass the rest of the body to the sink: a validator may stop early."""
        while self._next_chunk():
            pass


class _GzipWriterThread:
    """Hash, compress and write chunks on a thread of its own.

    sha256 and ISA-L's deflate release the GIL on large buffers, so this runs on the second core
    while the caller's thread parses the same bytes. A bounded queue keeps memory flat.
    """

    def __init__(self, dest: Path) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._digest = hashlib.sha256()
        self._size = 0
        self._error: BaseException | None = None
        self._out = open(dest, "wb")  # noqa: SIM115 - closed by close()
        self._thread = threading.Thread(target=self._run, name="itresume-gzip", daemon=True)
        self._thread.start()

    def put(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def _run(self) -> None:
        # Level 1: the landing copy is for replay; higher levels cost more CPU than they save.
        compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so put() never blocks forever
            try:
                self._size += len(chunk)
                self._digest.update(chunk)
                self._out.write(compressor.compress(chunk))
            except BaseException as error:  # reported to the caller by put() or close()
                self._error = error
        if self._error is None:
            try:
                self._out.write(compressor.flush())
            except BaseException as error:
                self._error = error

    def close(self) -> tuple[int, str]:
        self._queue.put(None)
        self._thread.join()
        try:
            self._out.close()
        except OSError as error:  # the last buffered bytes may fail to write too (a full disk)
            self._error = self._error or error
        if self._error is not None:
            raise self._error
        return self._size, self._digest.hexdigest()


def _read_error_body(response: requests.Response) -> str:
    """At most `ERROR_BODY_BYTES` of the body, until the watchdog cuts it: a hostile or broken
    server may trickle an error page for ever, and only an excerpt of it is ever shown."""
    data = bytearray()
    with suppress(requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        while len(data) < ERROR_BODY_BYTES:
            chunk = response.raw.read1(ERROR_BODY_BYTES - len(data), decode_content=True)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace")


def _api_message(answer: dict[str, Any]) -> str:
    """The API's own words from an error object, else the object itself."""
    for key in _MESSAGE_KEYS:
        value = answer.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and value:
            return "; ".join(v if isinstance(v, str) else orjson.dumps(v).decode() for v in value)
    return orjson.dumps(answer).decode()


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number: no origin we would trust
        port = -1
    return scheme, (parts.hostname or "").lower(), port


def _host(url: str) -> str:
    """Where a URL points, as may be shown: host and port, never path, query or user info."""
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}" if port not in (None, -1) else f"{scheme}://{host}"
