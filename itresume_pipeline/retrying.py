"""HTTP transients retried by urllib3's `Retry` on a requests session, for both API clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from itresume_pipeline.redaction import redact

log = logging.getLogger(__name__)


class HttpRetry(Retry):
    """urllib3's `Retry`, waiting through a `pause` the caller can cut short, logging each retry
    masked, and dropping a retried answer unread (a hostile server may trickle it)."""

    # Retry-After alone makes only these retryable (urllib3 adds 413): any other 4xx is final.
    RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

    label: str  # these three are set on a subclass by http_retry, which new() keeps
    pause: Callable[[float], None]
    mask: Callable[[str], str]

    def increment(self, *args: Any, **kwargs: Any) -> HttpRetry:
        retry = super().increment(*args, **kwargs)  # raises once the budget is spent
        if kwargs.get("response") is not None:
            kwargs["response"].close()  # urllib3 would read the whole body to reuse the socket
        return retry

    def parse_retry_after(self, retry_after: str) -> float:
        """Fractional seconds too; an unreadable value means no hint, not a failed call."""
        with suppress(ValueError):
            return max(0.0, min(float(retry_after), self.retry_after_max))
        with suppress(InvalidHeader):
            return super().parse_retry_after(retry_after)  # an HTTP date
        return 0.0

    def sleep(self, response: Any = None) -> None:
        """Wait as urllib3 would (`Retry-After`, else the backoff), but through `pause`."""
        delay = (response and self.get_retry_after(response)) or self.get_backoff_time()
        last, tries = self.history[-1], len(self.history)
        cause = f"{last.method} {urlsplit(last.url or '').path}"  # the query carries the key
        if last.error is None:
            cause += f" answered {last.status}"
        else:
            cause += f" failed with {type(last.error).__name__}: {self.mask(str(last.error))}"
        log.warning(
            f"{self.label} attempt {tries}/{tries + int(self.total or 0) + 1} failed: {cause}; "
            f"retrying in {delay:.2f} s"
        )
        self.pause(delay)


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
    """`max_attempts` tries; the n-th retry waits `backoff_s * 2**(n-1)` s plus up to `backoff_s`
    of jitter (the first goes at once), or `Retry-After`, capped at `backoff_max_s`."""
    hooks = {"label": label, "pause": staticmethod(pause), "mask": staticmethod(mask)}
    return type("HttpRetry", (HttpRetry,), hooks)(
        total=max_attempts - 1,
        allowed_methods=methods,
        status_forcelist=statuses,
        backoff_factor=backoff_s,
        backoff_jitter=backoff_s,
        backoff_max=backoff_max_s,
        retry_after_max=backoff_max_s,  # type: ignore[arg-type]
        raise_on_status=False,  # the caller explains the last answer, masked
    )


def mount(session: requests.Session, retry: Retry) -> None:
    """Send every request of `session`, http or https, through `retry`."""
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def attempts_behind(response: requests.Response) -> int:
    """How many requests it took to get `response`, the last one included."""
    retries = getattr(response.raw, "retries", None)
    return len(retries.history) + 1 if retries else 1
