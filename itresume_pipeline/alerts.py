"""Failure alerts: what the e-mail says, and the one outbox that delivers it exactly once.

A run-failure sensor sees each failure once (its cursor moves on even when the body raises), so
the alert is first *recorded* in the outbox, ``pending/<run_id>.eml``, and only then delivered;
whatever the relay refuses stays pending for the next tick of either sensor. A delivered message
is moved up into the outbox folder itself, ``<run_id>.eml``: with a relay, after the relay took
it; in the local profile without a relay, that move is the delivery, and the file is what people
read.

Guarantees:

* never lost: a message leaves ``pending/`` only by that rename, after the relay accepted it;
* never doubled: a run id already pending or delivered is not enqueued again (checked and
  created under an outbox-wide lock), and a per-message lock stops two concurrent flushes (the
  failure sensor and the flush sensor) from sending the same file.

The one window left: a crash (kill -9, power loss) after the relay accepted the message but
before the rename sends it again on the next tick. Both copies carry the same Message-ID
(derived from the run id), so most mail clients show one. Closing that window would need the
relay to take part in a two-phase commit, which SMTP has no way to do.
"""

from __future__ import annotations

import contextlib
import fcntl
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


# -- outbox location ----------------------------------------------------------------------------

outbox_dir = settings.outbox_dir  # the rule lives in settings; this name is kept for importers


def run_url(run_id: str, base_url: str | None = None) -> str:
    base = base_url or settings.dagster_url()
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


def error_chain(error: SerializableErrorInfo | None) -> list[SerializableErrorInfo]:
    """The error and its causes (explicit ``cause`` first, else implicit ``context``)."""
    out: list[SerializableErrorInfo] = []
    while error is not None and len(out) < 20:
        out.append(error)
        error = error.cause or error.context
    return out


def _text(error: SerializableErrorInfo, *, first_line: bool = False) -> str:
    """``Class: message``. Dagster already prefixes some messages with the class name
    (``"ValueError: boom"``), so it is not added twice."""
    message = (error.message or "").strip()
    if first_line and message:
        message = message.splitlines()[0].strip()
    cls_name = error.cls_name or "Error"
    if message.startswith(f"{cls_name}:") or message == cls_name:
        return message
    return f"{cls_name}: {message}" if message else cls_name


def _stack_tail(error: SerializableErrorInfo, frames: int = STACK_TAIL_FRAMES) -> str:
    """The innermost frames, without Dagster's own plumbing (unless that is all there is)."""
    stack = list(error.stack or [])
    ours = [f for f in stack if not any(m in f for m in _DAGSTER_FRAME_MARKERS)] or stack
    lines = [
        line.rstrip()
        for frame in ours[-frames:]
        for line in frame.rstrip("\n").splitlines()
        if line.strip() and set(line.strip()) - set("^~ ")  # drop caret-marker lines
    ]
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
    chain = error_chain(error)
    if not chain:
        return StepError(step_key=step_key, error="(no error information recorded)")
    unwrapped = [e for e in chain if not (e.cls_name or "").startswith(_WRAPPER_PREFIXES)]
    real = unwrapped[0] if unwrapped else chain[-1]
    retries = [e for e in chain if (e.cls_name or "").startswith("RetryRequested")]
    return StepError(
        step_key=step_key,
        error=_text(real),
        chain=tuple(_text(e, first_line=True) for e in chain),
        stack_tail=_stack_tail(real),
        retries_exhausted=(retries[0].message or "").strip().rstrip(":") if retries else None,
    )


def _errors(
    step_failures: Sequence[DagsterEvent], run_failure: DagsterEvent | None
) -> list[StepError]:
    """The failed steps; without any, the run's own error (worker crash, bad config)."""
    errors = [
        describe_error(e.step_key or "?", getattr(e.step_failure_data, "error", None))
        for e in step_failures
    ]
    run_error = getattr(getattr(run_failure, "event_specific_data", None), "error", None)
    return errors or ([describe_error("(run)", run_error)] if run_error is not None else [])


# -- building the message -----------------------------------------------------------------------


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _email(run: DagsterRun, subject: str, body: str) -> EmailMessage:
    """Every piece of text goes through `redact`: error messages routinely echo request URLs and
    connection strings. The Message-ID comes from the run id, so a resent copy is one message."""
    msg = EmailMessage()
    msg["Subject"] = redact(" ".join(subject.split()))  # one line, whatever the error held
    msg["Message-ID"] = f"<run-failure.{_safe_id(run.run_id)}@itresume-pipeline>"
    msg["X-Dagster-Run-Id"] = run.run_id
    msg.set_content(redact(body), charset="utf-8")
    return msg


def build_failure_email(
    run: DagsterRun,
    step_failures: Sequence[DagsterEvent] = (),
    run_failure: DagsterEvent | None = None,
    *,
    base_url: str | None = None,
) -> EmailMessage:
    """The alert for a failed run: job, partition, failed steps, the real error and a link.

    From/To are left to `MailResource`, which knows them.
    """
    tags = dict(run.tags or {})
    partition = partition_label(tags)
    errors = _errors(step_failures, run_failure)
    link = run_url(run.run_id, base_url)
    steps = ", ".join(e.step_key for e in errors) or "(none)"
    headline = errors[0].error.splitlines()[0] if errors else "run failed"
    subject = f"{SUBJECT_PREFIX} FAILED {run.job_name}"
    subject += f" [{partition}]" if partition else ""
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
    if getattr(run_failure, "message", None):
        lines += ["", str(run_failure.message)]  # type: ignore[union-attr]
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
    return _email(run, subject, "\n".join(lines))


def minimal_failure_email(
    run: DagsterRun, problem: BaseException, base_url: str | None = None
) -> EmailMessage:
    """Fallback when the full alert cannot be built: a bug there must not swallow the alert."""
    partition = partition_label(dict(run.tags or {})) or "-"
    body = (
        f"A Dagster run failed.\n\nJob:        {run.job_name}\nPartition:  {partition}\n"
        f"Run:        {run.run_id}\nLink:       {run_url(run.run_id, base_url)}\n\n"
        f"(The details could not be formatted: {type(problem).__name__}: {problem})\n"
    )
    return _email(run, f"{SUBJECT_PREFIX} FAILED {run.job_name} [{partition}]", body)


# -- the outbox ---------------------------------------------------------------------------------


class Sender(Protocol):
    def send(self, msg: EmailMessage) -> str: ...


_SAFE_ID_RE = re.compile(r"[^A-Za-z0-9_.-]")


def _safe_id(key: str) -> str:
    cleaned = _SAFE_ID_RE.sub("_", key).strip(".")
    if not cleaned:
        raise ValueError(f"unusable outbox key {key!r}")
    return cleaned[:200]


@dataclass
class FlushResult:
    sent: list[str] = field(default_factory=list)  # keys delivered now
    failed: dict[str, str] = field(default_factory=dict)  # key -> error, still pending
    busy: list[str] = field(default_factory=list)  # being sent by another flush right now
    deferred: list[str] = field(default_factory=list)  # not tried: the relay was down


class Outbox:
    """``pending/<key>.eml`` waiting, ``<key>.eml`` delivered; see the module docstring."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root is not None else outbox_dir()
        self.pending = self.root / "pending"
        self._tmp = self.root / "tmp"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialises "is it known?" + "create" and "pending -> delivered"; held briefly."""
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def pending_keys(self) -> list[str]:
        """Oldest first, so a backlog goes out in the order the failures happened."""
        stamped = []
        for path in self.pending.glob("*.eml"):
            with contextlib.suppress(FileNotFoundError):  # delivered by a concurrent flush
                stamped.append((path.stat().st_mtime_ns, path.stem))
        return [key for _, key in sorted(stamped)]

    def sent_keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.eml"))

    def enqueue(self, key: str, msg: EmailMessage) -> bool:
        """Record ``msg`` under ``key`` (a run id). False if that key is already pending or sent.

        Written to a temp file, then hard-linked into ``pending/``: the link fails if the name
        exists (the O_EXCL guarantee) and a reader never sees a partial file.
        """
        name = f"{_safe_id(key)}.eml"
        for folder in (self.pending, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix=f"{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(msg.as_bytes())  # LF line ends: parsed back, the body has no stray CR
                fh.flush()
                os.fsync(fh.fileno())
            with self._lock():
                if (self.root / name).exists():
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def flush(self, sender: Sender | None, logger: Any = None) -> FlushResult:
        """Deliver every pending message once; failures stay pending for the next tick.

        ``sender`` None means no relay in the local profile: the move into the outbox folder is
        the whole delivery.
        """
        logger = logger or log
        result = FlushResult()
        keys = self.pending_keys()
        for index, key in enumerate(keys):
            try:
                outcome = self._deliver(self.pending / f"{key}.eml", sender)
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

    def _deliver(self, path: Path, sender: Sender | None) -> str | bool | None:
        """Returns where it went; None if another flush holds it; False if it vanished."""
        try:
            fh = open(path, "rb")  # noqa: SIM115 - the lock must outlive the parse
        except FileNotFoundError:
            return False  # delivered by a concurrent flush since we listed the folder
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Still the pending file? A concurrent flush may have delivered it between our
                # open() and our lock.
                if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                    return False
            except BlockingIOError:
                return None
            except FileNotFoundError:
                return False
            delivered = self.root / path.name
            where = str(delivered)
            if sender is not None:
                where = sender.send(
                    cast(EmailMessage, BytesParser(policy=policy.default).parse(fh))
                )
            with self._lock():
                os.replace(path, delivered)
            _fsync_dir(self.root)
            return where


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across power loss (best effort; not possible everywhere)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
