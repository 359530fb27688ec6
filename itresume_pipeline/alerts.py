"""Failure alerts: what the e-mail says, and a durable spool that delivers it exactly once.

Delivery goes through a spool on disk rather than straight to SMTP because a run-failure sensor
sees each failure once: its cursor moves on even when the body raises. So the sensor first
*records* the alert (``pending/<run_id>.eml``), then tries to send everything pending; whatever
the relay refuses stays pending for the next tick (of either sensor).

Guarantees:

* never lost: a message leaves ``pending/`` only by a rename into ``sent/`` after the relay
  accepted it;
* never doubled: a run id already in ``pending/`` or ``sent/`` is not enqueued again (checked and
  created under a spool-wide lock), and a per-message lock stops two concurrent flushes (the
  failure sensor and the flush sensor) from sending the same file.

The one window left: a crash (kill -9, power loss) after the relay accepted the message but
before the rename into ``sent/`` sends it again on the next tick. Both copies carry the same
Message-ID (derived from the run id), so most mail clients show one. Closing that window would
need the relay to take part in a two-phase commit, which SMTP has no way to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from itresume_pipeline import settings
from itresume_pipeline.redaction import redact

if TYPE_CHECKING:
    from dagster import DagsterEvent, DagsterRun
    from dagster._utils.error import SerializableErrorInfo

try:  # POSIX only; without it the spool still works, minus the cross-process locks
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"
WILL_RETRY_TAG = "dagster/will_retry"

SUBJECT_PREFIX = "[itresume]"
STACK_TAIL_FRAMES = 4
_SUBJECT_ERROR_LEN = 120

# Exceptions Dagster wraps user errors in; the interesting one is further down the chain.
_WRAPPER_PREFIXES = ("Dagster", "RetryRequested")
_RELAY_DOWN_STEPS = frozenset({"connect", "starttls", "login", "config"})
_DAGSTER_FRAME_MARKERS = ("/site-packages/dagster/", "\\site-packages\\dagster\\", "contextlib.py")


# -- spool location -----------------------------------------------------------------------------


def spool_dir() -> Path:
    """``$ITRESUME_ALERT_SPOOL_DIR``, else ``$ITRESUME_HOME/alerts``; read at call time."""
    explicit = settings.env("ITRESUME_ALERT_SPOOL_DIR")
    if explicit:
        return Path(explicit).expanduser().absolute()
    return settings.home() / "alerts"


def run_url(run_id: str, base_url: str | None = None) -> str:
    base = base_url or settings.env("ITRESUME_DAGSTER_URL", settings.DEFAULT_DAGSTER_URL)
    return f"{base.rstrip('/')}/runs/{run_id}"


# -- reading a failure --------------------------------------------------------------------------


def partition_label(tags: Mapping[str, str]) -> str | None:
    """The partition of a run from its tags: a single key, or ``start...end`` for a range run."""
    if tags.get(PARTITION_TAG):
        return tags[PARTITION_TAG]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if start or end:
        return f"{start or '?'}...{end or '?'}"
    return None


def _chain(error: SerializableErrorInfo | None) -> list[SerializableErrorInfo]:
    """The error and its causes (explicit ``cause`` first, else implicit ``context``)."""
    out: list[SerializableErrorInfo] = []
    while error is not None and len(out) < 20:
        out.append(error)
        error = error.cause or error.context
    return out


def _one_line(error: SerializableErrorInfo) -> str:
    """``Class: message``, first line only. Dagster already prefixes some messages with the
    class name (``"ValueError: boom"``), so it is not added twice."""
    message = (error.message or "").strip()
    first = message.splitlines()[0].strip() if message else ""
    cls_name = error.cls_name or "Error"
    if first.startswith(f"{cls_name}:") or first == cls_name:
        return first
    return f"{cls_name}: {first}" if first else cls_name


def _message_text(error: SerializableErrorInfo) -> str:
    message = (error.message or "").strip()
    cls_name = error.cls_name or "Error"
    return message if message.startswith(f"{cls_name}:") else f"{cls_name}: {message}"


def _is_dagster_frame(frame: str) -> bool:
    return any(marker in frame for marker in _DAGSTER_FRAME_MARKERS)


def _stack_tail(error: SerializableErrorInfo, frames: int = STACK_TAIL_FRAMES) -> str:
    """The innermost frames, without Dagster's own plumbing (unless that is all there is)."""
    stack = list(error.stack or [])
    ours = [f for f in stack if not _is_dagster_frame(f)] or stack
    lines: list[str] = []
    for frame in ours[-frames:]:
        for line in frame.rstrip("\n").splitlines():
            if line.strip() and set(line.strip()) - set("^~ "):  # drop caret-marker lines
                lines.append(line.rstrip())
    return "\n".join(lines)


@dataclass(frozen=True)
class StepError:
    """One failed step, reduced to what an operator needs to act."""

    step_key: str
    error: str  # "ValueError: boom", the real exception after Dagster's wrappers
    chain: tuple[str, ...] = ()  # every level, outermost first, one line each
    stack_tail: str = ""
    retries_exhausted: str | None = None  # "Exceeded max_retries of 3", when it applies


def describe_error(step_key: str, error: SerializableErrorInfo | None) -> StepError:
    """Pick the real exception out of Dagster's wrappers (retry policy, step execution)."""
    chain = _chain(error)
    if not chain:
        return StepError(step_key=step_key, error="(no error information recorded)")
    real = next((e for e in chain if not (e.cls_name or "").startswith(_WRAPPER_PREFIXES)), None)
    real = real or chain[-1]
    retries = next(
        (
            (e.message or "").strip().rstrip(":")
            for e in chain
            if (e.cls_name or "").startswith("RetryRequested")
        ),
        None,
    )
    return StepError(
        step_key=step_key,
        error=_message_text(real),
        chain=tuple(_one_line(e) for e in chain),
        stack_tail=_stack_tail(real),
        retries_exhausted=retries,
    )


def step_errors(step_failures: Sequence[DagsterEvent]) -> list[StepError]:
    out = []
    for event in step_failures:
        data = getattr(event, "step_failure_data", None)
        out.append(describe_error(event.step_key or "?", getattr(data, "error", None)))
    return out


def _run_failure_error(run_failure: DagsterEvent | None) -> StepError | None:
    """For failures outside any step (run worker crash, bad config, resource init)."""
    if run_failure is None:
        return None
    data = getattr(run_failure, "event_specific_data", None)
    error = getattr(data, "error", None)
    if error is None:
        return None
    return describe_error("(run)", error)


# -- building the message -----------------------------------------------------------------------


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def build_failure_email(
    run: DagsterRun,
    step_failures: Sequence[DagsterEvent] = (),
    run_failure: DagsterEvent | None = None,
    *,
    base_url: str | None = None,
) -> EmailMessage:
    """The alert for a failed run: job, partition, failed steps, the real error and a link.

    Every piece of text goes through `redact`, because error messages routinely echo request
    URLs and connection strings. From/To are left to `MailResource.send`, which knows them.
    """
    tags = dict(run.tags or {})
    partition = partition_label(tags)
    errors = step_errors(step_failures)
    if not errors:
        fallback = _run_failure_error(run_failure)
        if fallback is not None:
            errors = [fallback]
    link = run_url(run.run_id, base_url)
    steps = ", ".join(e.step_key for e in errors) or "(none)"

    headline = errors[0].error.splitlines()[0] if errors else "run failed"
    subject = f"{SUBJECT_PREFIX} FAILED {run.job_name}"
    if partition:
        subject += f" [{partition}]"
    subject += f" step {steps}: {_truncate(headline, _SUBJECT_ERROR_LEN)}"

    lines = [
        "A Dagster run failed.",
        "",
        f"Job:        {run.job_name}",
        f"Partition:  {partition or '(not partitioned)'}",
        f"Failed:     {steps}",
        f"Run:        {run.run_id}",
        f"Link:       {link}",
    ]
    if tags.get(BACKFILL_TAG):
        lines.append(f"Backfill:   {tags[BACKFILL_TAG]}")
    if run_failure is not None and getattr(run_failure, "message", None):
        lines += ["", str(run_failure.message)]
    for err in errors:
        lines += ["", f"--- step {err.step_key} ---", err.error]
        if err.retries_exhausted:
            lines.append(f"(after retries: {err.retries_exhausted})")
        if len(err.chain) > 1:
            lines += ["", "Error chain (outermost first):"]
            lines += [f"  {_truncate(level, 300)}" for level in err.chain]
        if err.stack_tail:
            lines += ["", "Stack (innermost frames):", err.stack_tail]
    if not errors:
        lines += ["", "No step failure was recorded; see the run's event log."]
    lines += ["", f"Open the run: {link}", ""]

    msg = EmailMessage()
    msg["Subject"] = redact(" ".join(subject.split()))  # one line, whatever the error held
    msg["Message-ID"] = f"<run-failure.{_safe_id(run.run_id)}@itresume-pipeline>"
    msg["X-Dagster-Run-Id"] = run.run_id
    msg.set_content(redact("\n".join(lines)), charset="utf-8")
    return msg


def minimal_failure_email(
    run: DagsterRun, problem: BaseException, base_url: str | None = None
) -> EmailMessage:
    """Fallback when the full alert cannot be built: a bug there must not swallow the alert."""
    link = run_url(run.run_id, base_url)
    partition = partition_label(dict(run.tags or {}))
    msg = EmailMessage()
    msg["Subject"] = redact(f"{SUBJECT_PREFIX} FAILED {run.job_name} [{partition or '-'}]")
    msg["Message-ID"] = f"<run-failure.{_safe_id(run.run_id)}@itresume-pipeline>"
    msg["X-Dagster-Run-Id"] = run.run_id
    body = (
        f"A Dagster run failed.\n\nJob:        {run.job_name}\nPartition:  {partition or '-'}\n"
        f"Run:        {run.run_id}\nLink:       {link}\n\n"
        f"(The details could not be formatted: {type(problem).__name__}: {problem})\n"
    )
    msg.set_content(redact(body), charset="utf-8")
    return msg


# -- the spool ----------------------------------------------------------------------------------


class Sender(Protocol):
    def send(self, msg: EmailMessage) -> str: ...


class _Logger(Protocol):
    def info(self, msg: str, *args: Any) -> None: ...
    def warning(self, msg: str, *args: Any) -> None: ...


_SAFE_ID_RE = re.compile(r"[^A-Za-z0-9_.-]")


def _safe_id(key: str) -> str:
    cleaned = _SAFE_ID_RE.sub("_", key).strip(".")
    if not cleaned:
        raise ValueError(f"unusable spool key {key!r}")
    return cleaned[:200]


@dataclass
class FlushResult:
    sent: list[str] = field(default_factory=list)  # keys delivered now
    failed: dict[str, str] = field(default_factory=dict)  # key -> error, still pending
    busy: list[str] = field(default_factory=list)  # being sent by another flush right now
    deferred: list[str] = field(default_factory=list)  # not tried: the relay was down


class AlertSpool:
    """``pending/`` and ``sent/`` folders of ``<key>.eml`` files; see the module docstring."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root is not None else spool_dir()
        self.pending = self.root / "pending"
        self.sent = self.root / "sent"
        self._tmp = self.root / "tmp"

    def _ensure(self) -> None:
        for folder in (self.pending, self.sent, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _spool_lock(self) -> Iterator[None]:
        """Serialises "is it known?" + "create" and "pending -> sent"; held only briefly."""
        with open(self.root / ".lock", "a+b") as fh:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def pending_keys(self) -> list[str]:
        """Oldest first, so a backlog goes out in the order the failures happened."""
        if not self.pending.is_dir():
            return []
        stamped = []
        for path in self.pending.glob("*.eml"):
            try:
                stamped.append((path.stat().st_mtime_ns, path.stem))
            except FileNotFoundError:  # moved to sent/ by a concurrent flush
                continue
        return [key for _, key in sorted(stamped)]

    def sent_keys(self) -> list[str]:
        if not self.sent.is_dir():
            return []
        return sorted(p.stem for p in self.sent.glob("*.eml"))

    def enqueue(self, key: str, msg: EmailMessage) -> bool:
        """Record ``msg`` under ``key`` (a run id). False if that key is already pending or sent.

        The content is written to a temp file first and then hard-linked into ``pending/``: the
        link fails if the name exists (the O_EXCL guarantee) and a reader never sees a partial
        file.
        """
        name = f"{_safe_id(key)}.eml"
        self._ensure()
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix=f"{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(msg.as_bytes())  # LF line ends: parsed back, the body has no stray CR
                fh.flush()
                os.fsync(fh.fileno())
            with self._spool_lock():
                if (self.sent / name).exists() or (self.pending / name).exists():
                    return False
                try:
                    os.link(tmp, self.pending / name)
                except FileExistsError:
                    return False
                except OSError:  # no hard links here: O_EXCL create + rename over it
                    os.close(os.open(self.pending / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    os.replace(tmp, self.pending / name)
            _fsync_dir(self.pending)
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def flush(self, sender: Sender, logger: _Logger | None = None) -> FlushResult:
        """Try to send every pending message once; failures stay pending for the next tick."""
        logger = logger or log
        result = FlushResult()
        keys = self.pending_keys()
        if keys:
            self._ensure()
        for index, key in enumerate(keys):
            path = self.pending / f"{key}.eml"
            try:
                outcome = self._send_one(path, sender)
            except Exception as exc:  # one bad message must not block the others
                error = redact(f"{type(exc).__name__}: {exc}")
                result.failed[key] = error
                logger.warning(
                    f"alert {key} not sent, kept in {self.pending} for the next tick: {error}"
                )
                if getattr(exc, "step", None) in _RELAY_DOWN_STEPS:
                    # The relay itself is unusable: trying the rest would only add a timeout
                    # each and could push the sensor tick past its deadline.
                    result.deferred = keys[index + 1 :]
                    break
                continue
            if outcome is None:
                result.busy.append(key)
            elif outcome:
                result.sent.append(key)
                logger.info(f"alert {key} sent to {outcome}")
        return result

    def _send_one(self, path: Path, sender: Sender) -> str | bool | None:
        """Returns where it went; None if another flush holds it; False if it vanished."""
        try:
            fh = open(path, "rb")  # noqa: SIM115 - the lock must outlive the parse
        except FileNotFoundError:
            return False  # sent by a concurrent flush since we listed the folder
        with fh:
            if fcntl is not None:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
            try:
                # Still the pending file? A concurrent flush may have moved it to sent/ between
                # our open() and our lock.
                if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                    return False
            except FileNotFoundError:
                return False
            msg = cast(EmailMessage, BytesParser(policy=policy.default).parse(fh))
            where = sender.send(msg)
            with self._spool_lock():
                os.replace(path, self.sent / path.name)
            _fsync_dir(self.sent)
            return where

    def read(self, key: str) -> EmailMessage | None:
        """The spooled message for ``key``, pending or sent (for tests and operators)."""
        name = f"{_safe_id(key)}.eml"
        for folder in (self.pending, self.sent):
            path = folder / name
            if path.exists():
                with open(path, "rb") as fh:
                    return cast(EmailMessage, BytesParser(policy=policy.default).parse(fh))
        return None


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across power loss (best effort; not possible everywhere)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
