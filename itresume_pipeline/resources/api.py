"""Client for the IT Resume statistics API, assumed hostile: every text is masked, error bodies
are read bounded, redirects stay on the origin (the key is in the query), and a watchdog enforces
the total deadline (`ITRESUME_API_DEADLINE_S`) and cancellation."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode, urljoin, urlsplit

import orjson
import requests
from dagster import ConfigurableResource
from isal import isal_zlib
from pydantic import Field
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError, MaxRetryError

from itresume_pipeline.redaction import redact
from itresume_pipeline.retrying import attempts_behind, http_retry
from itresume_pipeline.settings import DEFAULT_API_URL, SettingError, api_deadline_s
from itresume_pipeline.streams import ChunkStream

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
ERROR_BODY_BYTES = 64 << 10  # an error body is read up to this size, then cut to an excerpt
MAX_REDIRECTS = 3  # all to the same scheme, host and port
URL_VAR = "ITRESUME_API_URL"
CLIENT_VAR = "ITRESUME_CLIENT"
CLIENT_KEY_VAR = "ITRESUME_CLIENT_KEY"
_DEFAULT_PORTS = {"http": 80, "https": 443}
Validator = Callable[[BinaryIO], int]  # counts a payload's records; ValueError: not a whole one


class ApiError(Exception):
    """The API could not deliver the window (the message is masked); `retryable`: a retry may."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None) -> None:
        super().__init__(f"IT Resume API {message}")
        self.retryable = retryable
        self.status = status


class ApiAuthError(ApiError):
    """401/403: the credentials are wrong, and no retry can fix that."""


class ApiCancelled(ApiError):
    """The caller set the cancel event (the run is stopping); never retried."""


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


class ItResumeApiResource(ConfigurableResource):
    """The statistics endpoint with its credentials, timeouts and retry budget."""

    url: str = Field(default=DEFAULT_API_URL, description=f"Statistics endpoint ({URL_VAR}).")
    client: str = Field(default="", description=f"API client name ({CLIENT_VAR}).")
    client_key: str = Field(default="", description=f"API client key ({CLIENT_KEY_VAR}).")
    connect_timeout_s: float = Field(default=10.0, description="TCP/TLS connect timeout.")
    read_timeout_s: float = Field(default=300.0, description="Max silence between two bytes.")
    error_body_timeout_s: float = Field(default=10.0, gt=0, description="Max error body read.")
    max_attempts: int = Field(default=5, ge=1, description="Requests per window, all causes.")
    backoff_base_s: float = Field(default=1.0, ge=0, description="n-th retry: this x 2^(n-1) s.")
    backoff_max_s: float = Field(default=60.0, ge=0, description="Cap on a wait, Retry-After too.")
    max_concurrent_requests: int = Field(default=4, ge=1, description="Parallel days in a range.")

    def download(
        self,
        start: datetime,
        end: datetime,
        dest: Path,
        *,
        validate_stream: Validator | None = None,
        cancel: threading.Event | None = None,
    ) -> Download:
        """Stream the window's payload into `dest` (gzip) while `validate_stream` counts its
        records (its ValueError is retried); setting `cancel` stops it (`ApiCancelled`)."""
        settings = ((CLIENT_VAR, self.client), (CLIENT_KEY_VAR, self.client_key))
        if missing := [name for name, value in settings if not value.strip()]:
            verb = "is" if len(missing) == 1 else "are"
            raise SettingError(f"{' and '.join(missing)} {verb} not set: required to call the API")
        url = self._url(start, end, key=self.client_key)
        began = time.perf_counter()
        with requests.Session() as session:  # closing it closes the watchdog too
            watch = _Watchdog(api_deadline_s(), cancel)
            session.mount("http://", watch)
            session.mount("https://", watch)
            watch.max_retries = http_retry(
                label="IT Resume API",
                max_attempts=self.max_attempts,
                backoff_s=self.backoff_base_s,
                backoff_max_s=self.backoff_max_s,
                statuses=RETRYABLE_STATUSES,
                methods=frozenset({"GET"}),
                pause=watch.pause,
                mask=self._clean,
            )
            session.max_redirects = MAX_REDIRECTS
            session.headers.update({"Accept": "application/json", "Accept-Encoding": "gzip"})
            session.hooks["response"].append(self._stay_on_origin)
            watch.check()  # cancelled already: not even one request
            while True:
                try:
                    with self._get(session, url, watch) as response:
                        self._raise_for_status(response, watch)
                        size, digest, records = self._land(response, dest, validate_stream, watch)
                    seconds = time.perf_counter() - began
                    attempts, shown = attempts_behind(response), self._url(start, end, key="***")
                    return Download(dest, size, records, digest, attempts, seconds, shown)
                except ApiError as error:
                    watch.check()  # a request stopped by the watchdog fails somehow: say why
                    if not error.retryable:
                        raise
                    try:  # a body that failed after a 200 spends the same budget
                        retry = watch.max_retries.increment("GET", urlsplit(url).path, error=error)
                    except MaxRetryError:
                        error.args = (f"{error}{self._gave_up()}",)
                        raise error from None
                    retry.sleep()
                    watch.max_retries = retry

    def _url(self, start: datetime, end: datetime, *, key: str) -> str:
        """The window's URL; one that is not http(s) with a host is refused: a typo is no retry."""
        endpoint = self.url.strip()
        parts = urlsplit(endpoint)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            shown = self._clean(endpoint)
            raise SettingError(f"{URL_VAR}={shown!r} is not an http(s) URL: e.g. {DEFAULT_API_URL}")
        stamp = "%Y-%m-%d %H:%M:%S.%f"  # the API's own format, naive UTC
        window = {"start": start.strftime(stamp), "end": end.strftime(stamp)}
        return f"{endpoint}?{urlencode({'client': self.client, 'client_key': key, **window})}"

    def _clean(self, text: str) -> str:
        """Mask the key (whole, cut short or encoded) and every other secret we know of."""
        return redact(text, secrets=(self.client_key,))

    def _excerpt(self, text: str) -> str:
        """Mask first, then cut: a key straddling the cut is still recognised whole."""
        text = " ".join(self._clean(text).split())
        return text[:300] + "…" if len(text) > 300 else text or "<empty body>"

    def _cause(self, error: Exception) -> str:
        return f"{type(error).__name__}: {self._clean(str(error))}"

    def _gave_up(self, spent: object = True) -> str:
        return f" (gave up after {self.max_attempts} attempts)" if spent else ""

    def _get(self, session: requests.Session, url: str, watch: _Watchdog) -> requests.Response:
        try:
            return session.get(
                url,
                timeout=(min(self.connect_timeout_s, watch.deadline_s), self.read_timeout_s),
                stream=True,
            )
        except requests.TooManyRedirects:
            raise ApiError(f"redirected more than {MAX_REDIRECTS} times; check {URL_VAR}") from None
        except (requests.RequestException, ValueError) as error:  # ValueError: a bad redirect
            gave_up = self._gave_up(error.args and isinstance(error.args[0], MaxRetryError))
            raise ApiError(f"request failed: {self._cause(error)}{gave_up}") from None

    def _stay_on_origin(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """One retry budget across redirects, which stay on the origin: the URL carries the key."""
        response.connection.max_retries = response.raw.retries
        if not response.is_redirect:
            return
        response.close()
        target = _origin(urljoin(response.url, response.headers["Location"]))
        if target != _origin(response.url):
            raise ApiError(
                f"redirected (HTTP {response.status_code}) to another host, {self._clean(target)}; "
                f"not followed, as the request carries the client key. Check {URL_VAR}.",
                status=response.status_code,
            )

    def _raise_for_status(self, response: requests.Response, watch: _Watchdog) -> None:
        """Any status but 200 is final here: urllib3 retried the retryable ones already."""
        status = response.status_code
        if status == 200:
            return
        watch.cut_at = time.monotonic() + self.error_body_timeout_s  # it may trickle forever
        body = bytearray()
        with suppress(requests.RequestException, HTTPError, OSError):  # cut by the watchdog
            while chunk := response.raw.read1(ERROR_BODY_BYTES - len(body), decode_content=True):
                body += chunk
        detail = self._excerpt(body.decode("utf-8", "replace"))
        auth = status in (401, 403)  # the credentials are wrong
        hint = f". Check {CLIENT_VAR} and {CLIENT_KEY_VAR}." if auth else ""
        spent = self._gave_up(status in RETRYABLE_STATUSES)
        message = f"answered HTTP {status} for client {self.client!r}: {detail}{hint}{spent}"
        raise (ApiAuthError if auth else ApiError)(message, status=status)

    def _land(
        self, response: requests.Response, dest: Path, validate: Validator | None, watch: _Watchdog
    ) -> tuple[int, str, int]:
        """A body that breaks off or fails validation is retried; a JSON object is a final error."""
        body = _Tee(response.iter_content(1 << 20), dest, watch.check)
        try:
            head = body.peek(ERROR_BODY_BYTES)
            if head.lstrip().startswith(b"{"):
                with suppress(orjson.JSONDecodeError):  # cut off: the validator refuses it
                    answer = orjson.loads(head)
                    said = answer.get("errors") or answer  # the API's own words, else the object
                    said = said if isinstance(said, str) else orjson.dumps(said).decode()
                    raise ApiError(
                        f"answered HTTP 200 with an error instead of data: {self._excerpt(said)}",
                        status=200,
                    )
            records = validate(body) if validate else -1
            while body.read(1 << 20):  # a validator may stop early; the landing copy is whole
                pass
            watch.check()  # a socket shut down under a body without a length looks like its end
        except (requests.RequestException, ValueError) as error:
            broke = isinstance(error, requests.RequestException)
            what = "response broke off mid-body" if broke else "sent an invalid payload"
            raise ApiError(f"{what}: {self._cause(error)}", retryable=True) from None
        finally:
            size, digest = body.finish()
        return size, digest, records


def _origin(url: str) -> str:
    """Scheme, host and port, which may be shown: never path, query or user info."""
    parts = urlsplit(url)  # a port that is not a number raises ValueError
    return f"{parts.scheme}://{parts.hostname}:{parts.port or _DEFAULT_PORTS.get(parts.scheme)}"


class _Watchdog(HTTPAdapter):
    """requests' adapter, which shuts its sockets down at the deadline, on cancel or at a cut: a
    blocked read cannot be interrupted, but it returns at once when its socket is shut down."""

    def __init__(self, deadline_s: float, cancel: threading.Event | None) -> None:
        super().__init__()
        self.deadline_s = deadline_s
        self._deadline = time.monotonic() + deadline_s
        self.cut_at = float("inf")  # a stop that is no error: an error body's time is up
        self._cancel = cancel or threading.Event()
        self._closed = threading.Event()  # ends the watching thread
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._watch, name="itresume-watchdog", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        super().close()

    def pause(self, seconds: float) -> None:
        """A retry's wait, cut short by cancel or the deadline, which then raise."""
        self._cancel.wait(max(0.0, min(seconds, self._deadline - time.monotonic())))
        self.check()

    def check(self) -> None:
        if self._cancel.is_set():
            raise ApiCancelled("download cancelled: the run is stopping")
        if time.monotonic() >= self._deadline:
            raise ApiError(
                f"download passed its deadline of {self.deadline_s:g} s "
                "(ITRESUME_API_DEADLINE_S), all attempts and waits included; not retried"
            )

    def _watch(self) -> None:
        """Until closed: a socket that connects after the stop is shut down too."""
        while not self._closed.wait(0.1):
            if self._cancel.is_set() or time.monotonic() >= min(self._deadline, self.cut_at):
                for sock in self.sockets:  # the plain socket's method: the reader owns any TLS
                    with suppress(OSError):
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        """The pool (a proxy's too), whose new connections give their sockets to this watchdog."""
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        if not hasattr(pool.ConnectionCls, "watch"):

            class Watched(pool.ConnectionCls):  # type: ignore[name-defined]
                watch = self

                def connect(self) -> None:
                    super().connect()
                    if isinstance(self.sock, socket.socket):  # for HTTPS, the TLS socket
                        self.watch.sockets.append(self.sock)

            pool.ConnectionCls = Watched
        return pool


class _Tee(ChunkStream):
    """The body as a stream for the validator, while a second thread hashes, gzips and writes
    each chunk (sha256 and ISA-L release the GIL); a few chunks in flight keep memory flat."""

    def __init__(self, chunks: Iterator[bytes], dest: Path, check: Callable[[], None]) -> None:
        super().__init__()
        self._chunks = chunks
        self._check = check  # before each chunk: a stopped request ends between chunks too
        self._digest = hashlib.sha256()
        self._size = 0
        # Level 1: the landing copy is for replay; higher levels cost more CPU than they save.
        self._compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
        self._out = open(dest, "wb")  # noqa: SIM115 - closed by finish()
        self._writer = ThreadPoolExecutor(1, "itresume-gzip")
        self._in_flight: deque[Future[None]] = deque()

    def _next_chunk(self) -> bytes:
        self._check()
        chunk = next(self._chunks, b"")
        while self._in_flight and (self._in_flight[0].done() or len(self._in_flight) >= 8):
            self._in_flight.popleft().result()  # the writer's error, if any, is raised here
        self._in_flight.append(self._writer.submit(self._write, chunk))
        return chunk

    def _write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        self._digest.update(chunk)
        self._out.write(self._compressor.compress(chunk))

    def finish(self) -> tuple[int, str]:
        """Close the file (a full disk may refuse its last bytes too); size and sha256."""
        with self._out, self._writer:
            while self._in_flight:
                self._in_flight.popleft().result()
            self._out.write(self._compressor.flush())
        return self._size, self._digest.hexdigest()
