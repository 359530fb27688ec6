"""Retries of HTTP transients for both clients: urllib3's `Retry`, mounted on a requests session.

urllib3 already retries what a retry can fix before a response is handed over (connect errors,
reads that fail before the headers, the listed statuses), with exponential backoff and jitter,
honouring `Retry-After`, within one budget of attempts. `HttpRetry` adds only what the two
clients need on top:

* every wait goes through `pause`, so the API client can cut it short (cancel, deadline);
* every retry is logged with its method, path and cause, never the query (it carries the key);
* a retried answer's body is dropped with its connection instead of being read: a hostile
  server may trickle it for ever, and only the final answer is ever quoted;
* `Retry-After` alone makes only 429 and 503 retryable (urllib3 adds 413: a 4xx is final);
  fractional seconds are honoured and an unreadable value means no hint, not a failed call.

`raise_on_status=False`: when the budget is spent, the last answer reaches the caller, which
explains it (a masked excerpt of its body) and says how many attempts were made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from itresume_pipeline.redaction import redact

log = logging.getLogger(__name__)


class HttpRetry(Retry):
    """urllib3's `Retry` with a chosen pause, a log line per retry and undrained bodies."""

    RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

    label = "HTTP"
    pause: Callable[[float], None] = staticmethod(time.sleep)
    mask: Callable[[str], str] = staticmethod(redact)

    def new(self, **kw: Any) -> HttpRetry:
        retry = super().new(**kw)
        retry.label, retry.pause, retry.mask = self.label, self.pause, self.mask
        return retry

    @property
    def attempts(self) -> int:
        """Requests made through this budget so far, the current one included."""
        return len(self.history) + 1

    @property
    def max_attempts(self) -> int:
        return len(self.history) + int(self.total or 0) + 1

    def increment(self, *args: Any, **kwargs: Any) -> HttpRetry:
        retry = super().increment(*args, **kwargs)  # raises once the budget is spent
        response = kwargs.get("response")
        if response is not None:
            response.close()  # urllib3 would read the whole body to reuse the connection
        return retry

    def parse_retry_after(self, retry_after: str) -> float:
        try:
            seconds = float(retry_after)
        except ValueError:
            try:
                return super().parse_retry_after(retry_after)  # an HTTP date
            except InvalidHeader:
                return 0.0
        return min(seconds, self.retry_after_max) if seconds > 0 else 0.0

    def sleep(self, response: Any = None) -> None:
        """Wait as urllib3 would (the server's `Retry-After`, else the backoff), via `pause`."""
        hint = None
        if response is not None and self.respect_retry_after_header:
            hint = self.get_retry_after(response)
        delay = hint or self.get_backoff_time()
        log.warning(
            "%s attempt %d/%d failed: %s; retrying in %.2f s",
            self.label,
            len(self.history),
            self.max_attempts,
            self._cause(),
            delay,
        )
        self.pause(delay)

    def _cause(self) -> str:
        last = self.history[-1]
        what = f"{last.method} {urlsplit(last.url or '').path}"
        if last.error is not None:
            return f"{what} failed with {type(last.error).__name__}: {self.mask(str(last.error))}"
        return f"{what} answered {last.status}"


def http_retry(
    *,
    label: str,
    max_attempts: int,
    backoff_s: float,
    backoff_max_s: float,
    statuses: Collection[int],
    methods: Collection[str] | None,
    pause: Callable[[float], None] = time.sleep,
    mask: Callable[[str], str] = redact,
) -> HttpRetry:
    """A budget of `max_attempts` tries. The n-th retry waits `backoff_s * 2**(n-1)` s plus up
    to `backoff_s` of jitter (the first goes at once), or what `Retry-After` asks; either is
    capped at `backoff_max_s`. `methods=None` retries every method."""
    retry = HttpRetry(
        total=max_attempts - 1,
        allowed_methods=methods,
        status_forcelist=statuses,
        backoff_factor=backoff_s,
        backoff_jitter=backoff_s,
        backoff_max=backoff_max_s,
        retry_after_max=backoff_max_s,  # type: ignore[arg-type]
        raise_on_status=False,
    )
    retry.label, retry.pause, retry.mask = label, pause, mask
    return retry


def mount(
    session: requests.Session, retry: Retry, adapter_class: type[HTTPAdapter] = HTTPAdapter
) -> HTTPAdapter:
    """Send every request of `session` through `retry`; returns the adapter (one for both)."""
    adapter = adapter_class(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return adapter


def attempts_behind(response: requests.Response) -> int:
    """How many requests it took to get `response` (1 without an `HttpRetry`)."""
    retry = getattr(response.raw, "retries", None)
    return retry.attempts if isinstance(retry, HttpRetry) else 1
