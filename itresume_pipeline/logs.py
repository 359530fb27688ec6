"""Dated log files a person can read: `$ITRESUME_LOG_DIR/YYYY-MM-DD.txt` (the UTC day logged),
wired by the instance's `python_logs` or, on an instance without it, `dated_file_executor`."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.executor.in_process import InProcessExecutor

from itresume_pipeline import settings
from itresume_pipeline.alerts import error_chain
from itresume_pipeline.redaction import install_log_redaction, redact

_LOG_FILE_RE = re.compile(r"(\d{4}-\d{2}-\d{2})\.txt")
# The engine events (logged at DEBUG) an operator reads; the UI keeps the rest.
_MILESTONES = {
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_UP_FOR_RETRY,
    dg.DagsterEventType.STEP_RESTARTED,
    dg.DagsterEventType.ASSET_CHECK_EVALUATION,
}
# These repeat an error written in full with the step's failure: only its messages are kept.
_SUMMARY_ONLY = (dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.STEP_UP_FOR_RETRY)


def retention_days() -> int:
    return settings.integer("ITRESUME_LOG_RETENTION_DAYS", 3, minimum=1)


def apply_retention(directory: Path, today: date, keep_days: int) -> list[Path]:
    """Delete the `YYYY-MM-DD.txt` files older than the last `keep_days` days; return them."""
    oldest_kept = today - timedelta(days=max(keep_days, 1) - 1)
    deleted: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            named = _LOG_FILE_RE.fullmatch(entry.name)
            with contextlib.suppress(ValueError, OSError):  # not a date, or gone already
                old = named is not None and date.fromisoformat(named[1]) < oldest_kept
                if old and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    deleted.append(Path(entry.path))
    return deleted


def append_line(path: Path, text: str) -> None:
    """One O_APPEND write, so concurrent writers interleave whole records; no descriptor is held
    open for Dagster's `dictConfig` to close under us."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode("utf-8", errors="replace"))
    finally:
        os.close(fd)


def _error_text(event: Any) -> str:
    data = getattr(event, "event_specific_data", None)
    error = getattr(data, "error", None)
    if error is None:
        return ""
    if event.event_type in _SUMMARY_ONLY:
        messages = [text for e in error_chain(error) if (text := (e.message or "").strip())][:5]
        return "\n".join(messages[:1] + [f"caused by {text}" for text in messages[1:]])
    return getattr(data, "error_display_string", None) or error.to_string()


def _event_level(event: Any, level: int) -> int:
    kind = event.event_type
    data = getattr(event, "event_specific_data", None)
    if kind == dg.DagsterEventType.STEP_UP_FOR_RETRY:
        return max(level, logging.WARNING)
    if kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION and not getattr(data, "passed", True):
        severity = getattr(getattr(data, "severity", None), "value", "ERROR")
        return logging.WARNING if severity == "WARN" else logging.ERROR
    return max(level, logging.INFO)


class DatedFileHandler(logging.Handler):
    """Appends redacted records to the dated file; never raises, so a full disk fails no run.
    At DEBUG, so the engine's milestones reach it; `min_level` holds back plain messages."""

    def __init__(
        self,
        level: int | str = logging.NOTSET,
        *,
        directory: str | os.PathLike[str] | None = None,
        retention_days: int | None = None,
        min_level: int | str = logging.INFO,
    ) -> None:
        super().__init__(level)
        install_log_redaction()
        self.directory = Path(directory).expanduser() if directory else None
        self.retention_days = retention_days
        self.min_level = (
            logging.getLevelName(min_level.upper()) if isinstance(min_level, str) else min_level
        )
        self._opened: tuple[Path, date] | None = None

    def format_record(self, record: logging.LogRecord) -> str | None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        level = record.levelno
        if event is not None:
            if level < logging.WARNING and event.event_type not in _MILESTONES:
                return None
            level = _event_level(event, level)
        elif level < self.min_level:
            return None
        message = meta.get("orig_message") or record.getMessage()
        if record.name not in ("dagster", "") and not record.name.startswith("dagster."):
            message = f"[{record.name}] {message}"
        if record.exc_info and not record.exc_text:  # as logging.Formatter caches it
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        parts = [message, _error_text(event), record.exc_text or "", record.stack_info or ""]
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        run, step = (meta.get("run_id") or "-")[:8], meta.get("step_key") or "-"
        head = f"{stamp}Z {logging.getLevelName(level):<8} run={run} step={step} "
        lines = redact("\n".join(p.strip("\n") for p in parts if p)).splitlines() or [""]
        # Continuations indented, blank ones dropped: a line without a timestamp continues one.
        rest = "".join(f"\n    {line.rstrip()}" for line in lines[1:] if line.strip())
        return f"{head}{lines[0]}{rest}\n"

    def emit(self, record: logging.LogRecord) -> None:
        """The first record of a day applies retention."""
        try:
            if (text := self.format_record(record)) is None:
                return
            directory = (self.directory or settings.log_dir()).absolute()
            day = datetime.fromtimestamp(record.created, UTC).date()
            if self._opened != (directory, day):
                directory.mkdir(parents=True, exist_ok=True)
                self._opened = (directory, day)
                try:
                    keep = self.retention_days or retention_days()
                except settings.SettingError as exc:  # keep logging; guess at nothing to delete
                    self._complain(f"{exc.description}; old log files are kept")
                else:
                    apply_retention(directory, day, keep)
            append_line(directory / f"{day.isoformat()}.txt", text)
        except Exception as exc:
            self._complain(f"cannot write a log line: {exc!r}")

    def _complain(self, problem: str) -> None:
        # `handleError` would print the unredacted record
        with contextlib.suppress(Exception):
            sys.stderr.write(redact(f"itresume log handler: {problem}\n"))


def instance_wires_dated_file(python_logs: Mapping[str, Any] | None) -> bool:
    handlers = ((python_logs or {}).get("dagster_handler_config") or {}).get("handlers") or {}
    return any(h.get("class") == f"{__name__}.DatedFileHandler" for h in handlers.values())


def _as_record(entry: dg.EventLogEntry) -> logging.LogRecord:
    meta = dict(run_id=entry.run_id, step_key=entry.step_key, dagster_event=entry.dagster_event)
    fields = dict(name="dagster", levelno=entry.level, msg=entry.user_message)
    return logging.makeLogRecord({**fields, "created": entry.timestamp, "dagster_meta": meta})


class _DatedFileExecutor(InProcessExecutor):
    """Dagster's in-process executor, feeding the dated file when the instance does not."""

    def execute(self, plan_context: Any, execution_plan: Any) -> Any:
        instance = plan_context.instance
        if not instance_wires_dated_file(instance.get_settings("python_logs")):
            handler = DatedFileHandler(logging.DEBUG)
            instance.add_event_listener(
                plan_context.run_id, lambda entry: handler.handle(_as_record(entry))
            )
        yield from super().execute(plan_context, execution_plan)


@dg.executor(name="in_process", config_schema=dg.in_process_executor.config_schema)
def dated_file_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """One process per run, writing the dated file on a throwaway instance too (no DAGSTER_HOME)."""
    inner = dg.in_process_executor.executor_creation_fn(init_context)
    return _DatedFileExecutor(inner.retries, inner.step_dependency_config, inner.marker_to_close)
