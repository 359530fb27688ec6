"""Failure alerts: the e-mail of a failed run, and the outbox that delivers it exactly once:
written to ``pending/<run_id>.eml`` before any send, moved to ``<run_id>.eml`` once accepted."""

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, cast

from dagster import DagsterEvent, DagsterRun
from dagster._utils.error import SerializableErrorInfo
from filelock import FileLock, Timeout

from itresume_pipeline import settings
from itresume_pipeline.redaction import redact
from itresume_pipeline.resources.mail import MailResource

WILL_RETRY_TAG = "dagster/will_retry"
_DAGSTER_FRAMES = ("/site-packages/dagster/", "\\site-packages\\dagster\\", "contextlib.py")


def partition_label(tags: Mapping[str, str]) -> str | None:
    start, end = (tags.get(f"dagster/asset_partition_range_{side}") for side in ("start", "end"))
    range_label = f"{start or '?'}...{end or '?'}" if start or end else None
    return tags.get("dagster/partition") or range_label


def error_chain(error: SerializableErrorInfo | None) -> list[SerializableErrorInfo]:
    out: list[SerializableErrorInfo] = []
    while error is not None and len(out) < 20:
        out.append(error)
        error = error.cause or error.context
    return out


def _text(error: SerializableErrorInfo) -> str:  # Dagster may have put the class name in front
    message, name = (error.message or "").strip(), error.cls_name or "Error"
    named = message in ("", name) or message.startswith(f"{name}:")
    return (message or name) if named else f"{name}: {message}"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def describe_error(error: SerializableErrorInfo | None) -> tuple[str, list[str]]:
    """The real error under Dagster's wrappers; then the retries, the chain, our last frames."""
    chain = error_chain(error)
    if not chain:
        return "(no error information recorded)", []
    wrappers = ("Dagster", "RetryRequested")
    real = next((e for e in chain if not (e.cls_name or "").startswith(wrappers)), chain[-1])
    retries = [e for e in chain if (e.cls_name or "").startswith("RetryRequested")][:1]
    lines = [f"(after retries: {(e.message or '').strip().rstrip(':')})" for e in retries]
    if len(chain) > 1:
        lines += ["", "Error chain (outermost first):"]
        lines += [f"  {_truncate(_text(e).splitlines()[0], 300)}" for e in chain]
    ours = [f for f in real.stack if not any(m in f for m in _DAGSTER_FRAMES)] or real.stack
    if ours:
        lines += ["", "Stack (innermost frames):", "".join(ours[-4:]).rstrip()]
    return _text(real), lines


def build_failure_email(
    run: DagsterRun,
    step_failures: Sequence[DagsterEvent] = (),
    run_failure: DagsterEvent | None = None,
    problem: BaseException | None = None,
) -> EmailMessage:
    """Job, partition, failed steps, real errors, a link, redacted; ``problem``: no details."""
    partition = partition_label(run.tags)
    link = f"{settings.dagster_url().rstrip('/')}/runs/{run.run_id}"
    failed = [(e.step_key, getattr(e.step_failure_data, "error", None)) for e in step_failures]
    run_error = getattr(getattr(run_failure, "event_specific_data", None), "error", None)
    if not failed and run_error is not None:  # no step failed: a worker crash, bad config
        failed = [("(run)", run_error)]
    described = [(step, *describe_error(error)) for step, error in failed]
    steps = ", ".join(step for step, _, _ in described) or "(none)"
    headline = described[0][1].splitlines()[0] if described else "run failed"
    subject = f"[itresume] FAILED {run.job_name}" + (f" [{partition}]" if partition else "")
    subject += f" step {steps}: {_truncate(headline, 120)}"
    header = {
        "Job": run.job_name,
        "Partition": partition or "(not partitioned)",
        "Failed": steps,
        "Run": run.run_id,
        "Link": link,
        "Backfill": run.tags.get("dagster/backfill"),
    }
    lines = ["A Dagster run failed.", "", *(f"{k + ':':<12}{v}" for k, v in header.items() if v)]
    if problem is not None:
        lines += ["", f"(The details could not be read: {type(problem).__name__}: {problem})"]
    if getattr(run_failure, "message", None):
        lines += ["", str(run_failure.message)]  # type: ignore[union-attr]
    for step, text, details in described:
        lines += ["", f"--- step {step} ---", text, *details]
    if not described:
        lines += ["", "No step failure was recorded; see the run's event log."]
    msg = EmailMessage()
    msg["Subject"] = redact(" ".join(subject.split()))
    msg["Message-ID"] = f"<run-failure.{run.run_id}@itresume-pipeline>"
    msg["Date"] = formatdate(usegmt=True)
    msg["X-Dagster-Run-Id"] = run.run_id
    msg.set_content(redact("\n".join([*lines, "", f"Open the run: {link}", ""])), charset="utf-8")
    return msg


@dataclass
class FlushResult:
    sent: list[str] = field(default_factory=list)  # keys delivered now
    failed: dict[str, str] = field(default_factory=dict)  # key -> error, still pending
    deferred: list[str] = field(default_factory=list)  # not tried: relay down, or flush busy


def _move(source: Path, target: Path) -> None:  # durable across power loss, best effort
    os.replace(source, target)
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Outbox:
    """``pending/<key>.eml`` waiting, ``<key>.eml`` delivered."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root else settings.outbox_dir()
        self.pending = self.root / "pending"

    def pending_keys(self) -> list[str]:
        stamped = []
        for path in self.pending.glob("*.eml"):
            with contextlib.suppress(FileNotFoundError):  # delivered by a concurrent flush
                stamped.append((path.stat().st_mtime_ns, path.stem))
        return [key for _, key in sorted(stamped)]  # oldest first: in the order of the failures

    def sent_keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.eml"))

    def enqueue(self, key: str, msg: EmailMessage) -> bool:
        """Record ``msg`` under ``key`` (a run id); False if that key is already pending or sent."""
        name = f"{key}.eml"
        self.pending.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / ".lock"):
            if (self.pending / name).exists() or (self.root / name).exists():
                return False
            partial = self.pending / f".{name}.tmp"  # not *.eml: never sent half-written
            with partial.open("wb") as fh:
                fh.write(msg.as_bytes())
                os.fsync(fh.fileno())
            _move(partial, self.pending / name)
        return True

    def flush(self, sender: MailResource | None, logger: Any = None) -> FlushResult:
        """Deliver each pending message once, one flush at a time; no ``sender``: the move is it."""
        logger, result = logger or logging.getLogger(__name__), FlushResult()
        try:
            flushing = FileLock(self.root / ".flush").acquire(timeout=0)
        except Timeout:
            return FlushResult(deferred=self.pending_keys())  # the flush holding it sends them
        with flushing:
            keys = self.pending_keys()
            for index, key in enumerate(keys):
                path = self.pending / f"{key}.eml"
                try:
                    parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
                    where = sender.send(cast(EmailMessage, parsed)) if sender else str(self.root)
                except Exception as exc:  # one bad message must not block the others
                    result.failed[key] = error = redact(f"{type(exc).__name__}: {exc}")
                    logger.warning(f"alert {key} not sent, kept in {self.pending}: {error}")
                    if getattr(exc, "step", "send") != "send":  # the rest would only fail too
                        result.deferred = keys[index + 1 :]
                        break
                    continue
                # No lock: enqueue checks pending/ first, and the rename is atomic.
                _move(path, self.root / path.name)
                result.sent.append(key)
                logger.info(f"alert {key} sent to {where}")
        return result
