"""Client for the IT Resume statistics API.

The API answers one JSON array per request, with no pagination, in 25–40 s for a real day. The
client therefore streams the body to a file (flat memory), uses minute-scale read timeouts, and
retries only what a retry can fix: 429, 5xx, timeouts and broken connections. Every message it
logs or raises has the client key removed, including requests' own exception texts, which carry
the full URL with its query string.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode

import requests
from dagster import ConfigurableResource
from isal import isal_zlib
from pydantic import Field, PrivateAttr

from itresume_pipeline.redaction import redact
from itresume_pipeline.settings import DEFAULT_API_URL, env
from itresume_pipeline.streams import ChunkStream

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
STREAM_CHUNK_BYTES = 1 << 20


class ApiError(Exception):
    """The API could not deliver the window; the message is already redacted."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class ApiAuthError(ApiError):
    """401/403: the credentials are wrong, and no retry can fix that."""


class ApiConfigError(ApiError):
    """A required setting is missing."""


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

    url: str = Field(
        default="",
        description="Statistics endpoint; empty: ITRESUME_API_URL at run time, else the real API.",
    )
    client: str = Field(default="", description="API client name (ITRESUME_CLIENT).")
    client_key: str = Field(default="", description="API client key (ITRESUME_CLIENT_KEY).")
    connect_timeout_s: float = Field(default=10.0, description="TCP/TLS connect timeout.")
    read_timeout_s: float = Field(
        default=300.0, description="Max silence between bytes; real calls take 25-40 s."
    )
    max_attempts: int = Field(default=5, ge=1, description="Tries per window, first one included.")
    backoff_base_s: float = Field(default=2.0, ge=0, description="First retry delay.")
    backoff_max_s: float = Field(default=60.0, ge=0, description="Cap on one retry delay.")
    max_concurrent_requests: int = Field(
        default=4, ge=1, description="Parallel day requests during a backfill."
    )

    _sleep: Callable[[float], None] = PrivateAttr(default=time.sleep)

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
    ) -> Download:
        """Stream the window's payload into `dest` (gzip), retrying what a retry can fix.

        `validate_stream` reads the raw body as it arrives and returns its record count, or
        raises ValueError for a body that is not a complete payload (an HTML error page, a
        cut-off array). Such a body is retried like a 5xx: proxies in front of APIs produce them
        transiently. Meanwhile another thread hashes and compresses the body, so checking
        overlaps compression on a second core and the file is never read back.
        """
        self._require_credentials()
        shown_url = self.redacted_url(start, end)
        began = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                size, digest, records = self._download_once(start, end, dest, validate_stream)
            except ApiError as error:
                if not error.retryable:
                    raise
                if attempt >= self.max_attempts:
                    raise ApiError(
                        f"{error} (gave up after {attempt} attempts)",
                        retryable=False,
                        status=error.status,
                    ) from None
                delay = self._retry_delay(attempt, error.retry_after)
                logger.warning(
                    "IT Resume API attempt %d/%d failed: %s; retrying in %.1f s",
                    attempt,
                    self.max_attempts,
                    error,
                    delay,
                )
                self._sleep(delay)
                continue
            return Download(
                path=dest,
                bytes=size,
                records=records,
                sha256=digest,
                attempts=attempt,
                seconds=time.perf_counter() - began,
                url=shown_url,
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
        return self.url or env("ITRESUME_API_URL", DEFAULT_API_URL)

    def _require_credentials(self) -> None:
        missing = [
            name
            for name, value in (
                ("ITRESUME_CLIENT", self.client),
                ("ITRESUME_CLIENT_KEY", self.client_key),
            )
            if not value
        ]
        if missing:
            raise ApiConfigError(
                f"IT Resume API credentials missing: set {' and '.join(missing)}",
                retryable=False,
            )

    def _clean(self, text: str) -> str:
        """Remove the key both by pattern and as a literal, whatever the text came from."""
        if self.client_key:
            text = text.replace(self.client_key, "***")
        return redact(text)

    def _download_once(
        self,
        start: datetime,
        end: datetime,
        dest: Path,
        validate_stream: Callable[[BinaryIO], int] | None = None,
    ) -> tuple[int, str, int]:
        try:
            response = requests.get(
                self._url(start, end, key=self.client_key),
                timeout=(self.connect_timeout_s, self.read_timeout_s),
                stream=True,
                headers={"Accept": "application/json", "Accept-Encoding": "gzip"},
            )
        except requests.RequestException as error:
            raise ApiError(
                f"IT Resume API request failed: {type(error).__name__}: {self._clean(str(error))}",
                retryable=True,
            ) from None
        with response:
            self._raise_for_status(response)
            try:
                return self._stream_validated(response, dest, validate_stream)
            except requests.RequestException as error:
                raise ApiError(
                    "IT Resume API response broke off mid-body: "
                    f"{type(error).__name__}: {self._clean(str(error))}",
                    retryable=True,
                ) from None

    def _stream_validated(
        self,
        response: requests.Response,
        dest: Path,
        validate_stream: Callable[[BinaryIO], int] | None,
    ) -> tuple[int, str, int]:
        """Land the body (gzip, sha256) on a thread while `validate_stream` reads it here."""
        writer = _GzipWriterThread(dest)
        body = _TeeReader(response.iter_content(STREAM_CHUNK_BYTES), writer.put)
        try:
            try:
                records = validate_stream(body) if validate_stream else -1
            except ValueError as error:
                raise ApiError(
                    f"IT Resume API sent an invalid payload: {self._clean(str(error))}",
                    retryable=True,
                ) from None
            body.drain()  # a validator may stop early; the landing copy must be whole
        finally:
            size, digest = writer.close()
        return size, digest, records

    def _raise_for_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status == 200:
            return
        detail = self._clean(_short_body(response))
        where = f"for client {self.client!r}"
        if status in (401, 403):
            raise ApiAuthError(
                f"IT Resume API refused the credentials {where} (HTTP {status}): {detail}. "
                "Check ITRESUME_CLIENT and ITRESUME_CLIENT_KEY.",
                retryable=False,
                status=status,
            )
        raise ApiError(
            f"IT Resume API answered HTTP {status} {where}: {detail}",
            retryable=status in RETRYABLE_STATUSES,
            status=status,
            retry_after=_retry_after_seconds(response.headers.get("Retry-After")),
        )

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter, but never sooner than the server asked."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        delay = random.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay


class _TeeReader(ChunkStream):
    """The response body as a readable binary stream; every chunk is also handed to `sink`."""

    def __init__(self, chunks: Iterator[bytes], sink: Callable[[bytes], None]) -> None:
        super().__init__()
        self._chunks = chunks
        self._sink = sink

    def _next_chunk(self) -> bytes:
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
        self._out.close()
        if self._error is not None:
            raise self._error
        return self._size, self._digest.hexdigest()


def _short_body(response: requests.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except requests.RequestException:
        return "<unreadable body>"
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "") if text else "<empty body>"


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
