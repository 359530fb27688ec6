"""Dated log files a person can read: `$ITRESUME_LOG_DIR/YYYY-MM-DD.txt`.

The handler is wired through Dagster's own `python_logs.dagster_handler_config` (see the shipped
`dagster.yaml`), because that is the one hook every run and sensor tick goes through, whatever
launched it (UI, schedule, `dagster asset materialize`) and whichever process executes it. With
`managed_python_loggers: [itresume_pipeline]`, the warnings of our own modules (API retries,
Sheets back-off) land there too. A run on an instance without that setting (a shell run with
DAGSTER_HOME unset gets a throwaway one) is covered by the pipeline location's executor,
`dated_file_executor`, which then feeds the run's events to the same handler.

What a line looks like::

    2024-10-08 01:00:04.512Z INFO     run=1a2b3c4d step=raw_attempts download finished: ...

Design choices, each for a reason:

* The file is named after the UTC date *of each record*, so a run that crosses midnight
  continues in the next day's file, and the name never depends on the partition being loaded.
* Each record is one `os.write` on a descriptor opened with `O_APPEND` and closed right after.
  Several run workers, threads and the daemon may write the same file at once; append mode keeps
  their lines whole, and holding no descriptor open survives Dagster calling `logging.config.
  dictConfig` (which closes every existing handler) whenever it builds a run's loggers.
* Engine events arrive at DEBUG. Only the milestones an operator reads are kept (run started,
  step finished in N s, retries, check results, run finished); plain messages need INFO.
* Every line passes through `redaction.redact` before it is written, and setting up the handler
  installs `redaction`'s filter on the HTTP loggers that the instance may capture.
* `emit` never raises: a full disk or a bad directory must not fail a data run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from dagster import (
    DagsterEventType,
    EventLogEntry,
    Executor,
    InitExecutorContext,
    executor,
    in_process_executor,
)

from itresume_pipeline import settings
from itresume_pipeline.alerts import error_chain
from itresume_pipeline.redaction import install_log_redaction, redact

DEFAULT_RETENTION_DAYS = 3
LOG_FILE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})\.txt$")
HANDLER_CLASS = "itresume_pipeline.logs.DatedFileHandler"
MANAGED_LOGGER = "itresume_pipeline"

# Engine events worth a line. Everything else at DEBUG (step start, outputs, resource init...)
# is noise for a reader of these files; the UI keeps all of it.
_MILESTONES = frozenset(
    kind.value
    for kind in (
        DagsterEventType.RUN_START,
        DagsterEventType.RUN_SUCCESS,
        DagsterEventType.RUN_FAILURE,
        DagsterEventType.RUN_CANCELED,
        DagsterEventType.STEP_SUCCESS,
        DagsterEventType.STEP_UP_FOR_RETRY,
        DagsterEventType.STEP_RESTARTED,
        DagsterEventType.ASSET_CHECK_EVALUATION,
    )
)
# Events that repeat an error already written in full with the step's STEP_FAILURE line.
_SUMMARY_ONLY = frozenset(
    {DagsterEventType.RUN_FAILURE.value, DagsterEventType.STEP_UP_FOR_RETRY.value}
)
_SHORT_RUN_ID = 8
_CONTINUATION = "    "


RETENTION_VAR = "ITRESUME_LOG_RETENTION_DAYS"


def retention_days() -> int:
    """`ITRESUME_LOG_RETENTION_DAYS`, a whole number of days, at least 1 (today's file).

    Anything else (0, -1, "three") is a `settings.SettingError` naming the variable, raised here
    and, through this function, when either code location loads.
    """
    return settings.integer(RETENTION_VAR, DEFAULT_RETENTION_DAYS, minimum=1)


def log_file_for(directory: Path, day: date) -> Path:
    return directory / f"{day.isoformat()}.txt"


def _day_of(name: str) -> date | None:
    match = LOG_FILE_RE.match(name)
    if not match:
        return None
    try:
        return date(*(int(part) for part in match.groups()))
    except ValueError:  # 2024-13-45.txt looks like a log file but is not one of ours
        return None


def apply_retention(directory: Path, today: date, keep_days: int) -> list[Path]:
    """Delete `YYYY-MM-DD.txt` files older than today and the `keep_days - 1` days before it.

    Only regular files whose whole name is a real date are candidates; anything else in the
    folder (other files, sub-folders, symlinks, `notes.txt`, `2024-01-01.txt.gz`) is left alone.
    Returns what was deleted. Safe to run from several processes at once.
    """
    oldest_kept = today - timedelta(days=max(keep_days, 1) - 1)  # today's file always stays
    deleted: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            day = _day_of(entry.name)
            if day is None or day >= oldest_kept:
                continue
            with contextlib.suppress(OSError):  # gone already (another process), or not ours
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    deleted.append(Path(entry.path))
    return deleted


def append_line(path: Path, text: str) -> None:
    """Append `text` with one write on an O_APPEND descriptor, so concurrent writers interleave
    whole records, never fragments."""
    data = text.encode("utf-8", errors="replace")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        view = memoryview(data)
        while view:  # a regular file takes it all at once; loop only for the pathological case
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def _level(value: int | str) -> int:
    if isinstance(value, int):
        return value
    number = logging.getLevelName(str(value).upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {value!r}")
    return number


def _error_text(event: Any) -> str:
    """The error a failure event carries: the full traceback for the failed step itself, and only
    the chain of messages for the run failure and retry events that repeat it."""
    data = getattr(event, "event_specific_data", None)
    error = getattr(data, "error", None) if data is not None else None
    if error is None:
        return ""
    if getattr(event, "event_type_value", "") in _SUMMARY_ONLY:
        return _error_summary(error)
    display = getattr(data, "error_display_string", None)
    return display if isinstance(display, str) and display else error.to_string()


def _error_summary(error: Any) -> str:
    messages = [text for e in error_chain(error) if (text := (e.message or "").strip())][:5]
    return "\n".join(messages[:1] + [f"caused by {text}" for text in messages[1:]])


def _event_level(event: Any, record_level: int) -> int:
    """The level an engine event is shown at: milestones at INFO, retries and failed checks up."""
    kind = getattr(event, "event_type_value", "")
    if kind == DagsterEventType.STEP_UP_FOR_RETRY.value:
        return max(record_level, logging.WARNING)
    if kind == DagsterEventType.ASSET_CHECK_EVALUATION.value:
        evaluation = getattr(event, "event_specific_data", None)
        if evaluation is not None and not getattr(evaluation, "passed", True):
            severity = str(getattr(getattr(evaluation, "severity", None), "value", "ERROR"))
            return logging.WARNING if severity == "WARN" else logging.ERROR
        return max(record_level, logging.INFO)
    return max(record_level, logging.INFO)


class DatedFileHandler(logging.Handler):
    """Appends each run's log lines to the dated file of the day the line was logged (UTC).

    Configure it with level DEBUG in `dagster_handler_config` so that the engine's milestone
    events reach it; `min_level` still holds plain messages to INFO and above.
    `directory` and `retention_days` default to `ITRESUME_LOG_DIR` and
    `ITRESUME_LOG_RETENTION_DAYS`, read when each record is written.

    A bad `ITRESUME_LOG_RETENTION_DAYS` does not cost a run its log: the lines are still
    written, no file is deleted (a wrong guess at the retention would delete the wrong ones),
    and the `SettingError` goes to stderr once per day file, on the same path as any other
    failure of this handler. The code locations refuse to load with it anyway.
    """

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
        self.min_level = _level(min_level)
        self._retention_lock = threading.Lock()
        self._opened: tuple[Path, date] | None = None

    # --- what goes in a line -------------------------------------------------------------------

    def format_record(self, record: logging.LogRecord) -> str | None:
        """The text to write for `record` (possibly several lines), or None to skip it."""
        meta = getattr(record, "dagster_meta", None)
        meta = meta if isinstance(meta, dict) else {}
        event = meta.get("dagster_event")
        level = record.levelno
        if event is not None:
            kind = getattr(event, "event_type_value", "")
            if level < logging.WARNING and kind not in _MILESTONES:
                return None
            level = _event_level(event, level)
        elif level < self.min_level:
            return None

        message = meta.get("orig_message")
        if not isinstance(message, str):
            message = record.getMessage()
        if record.name not in ("dagster", "") and not record.name.startswith("dagster."):
            message = f"[{record.name}] {message}"
        extra: list[str] = []
        if event is not None:
            error = _error_text(event)
            if error:
                extra.append(error)
        if record.exc_info:
            extra.append(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            extra.append(record.exc_text)
        if record.stack_info:
            extra.append(record.stack_info)

        run_id = meta.get("run_id") or ""
        step = meta.get("step_key") or "-"
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        head = (
            f"{stamp[:-3]}Z {logging.getLevelName(level):<8} "
            f"run={run_id[:_SHORT_RUN_ID] or '-'} step={step} "
        )
        body = "\n".join(part.strip("\n") for part in [message, *extra] if part)
        lines = redact(body).splitlines() or [""]
        # Continuations are indented and blank lines dropped, so every line that does not start
        # with a timestamp belongs to the record above it (grep -A, awk friendly).
        rest = "".join(f"\n{_CONTINUATION}{line.rstrip()}" for line in lines[1:] if line.strip())
        return head + lines[0] + rest + "\n"

    # --- where it goes --------------------------------------------------------------------------

    def log_dir(self) -> Path:
        return (self.directory or settings.log_dir()).absolute()

    def _retention(self) -> int:
        return self.retention_days if self.retention_days is not None else retention_days()

    def path_for(self, record: logging.LogRecord) -> Path:
        """The file for `record`; opening a day's file for the first time applies retention."""
        directory = self.log_dir()
        day = datetime.fromtimestamp(record.created, UTC).date()
        with self._retention_lock:
            if self._opened != (directory, day):
                directory.mkdir(parents=True, exist_ok=True)
                self._opened = (directory, day)
                try:
                    keep_days = self._retention()
                except settings.SettingError as exc:
                    self._report_failure(exc)
                else:
                    apply_retention(directory, day, keep_days)
        return log_file_for(directory, day)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format_record(record)
            if text is not None:
                append_line(self.path_for(record), text)
        except Exception as exc:  # never fail a run because a log line could not be written
            self._report_failure(exc)

    def _report_failure(self, exc: Exception) -> None:
        """One short, redacted line on stderr; `handleError` would print the unredacted record."""
        with contextlib.suppress(Exception):
            sys.stderr.write(redact(f"itresume log handler: {_short(exc)}\n"))


def _short(exc: Exception) -> str:
    if isinstance(exc, settings.SettingError):
        return f"{exc.description}; old log files are kept"
    return f"cannot write a log line: {exc!r}"


# --- without the shipped dagster.yaml ----------------------------------------------------------


def instance_wires_dated_file(python_logs: Mapping[str, Any] | None) -> bool:
    """Does an instance's ``python_logs`` setting hand every run's records to DatedFileHandler?"""
    try:
        handlers = (python_logs or {})["dagster_handler_config"]["handlers"]
        return any(h.get("class") == HANDLER_CLASS for h in handlers.values())
    except (KeyError, TypeError, AttributeError):
        return False


def _as_record(entry: EventLogEntry) -> logging.LogRecord:
    """The record an instance's handler would have been given for this event-log entry."""
    record = logging.makeLogRecord(
        {"name": "dagster", "levelno": entry.level, "msg": entry.user_message}
    )
    record.levelname, record.created = logging.getLevelName(entry.level), entry.timestamp
    record.dagster_meta = {
        "run_id": entry.run_id,
        "step_key": entry.step_key,
        "dagster_event": entry.dagster_event,
        "orig_message": entry.user_message,
    }
    return record


class _DatedFileExecutor(Executor):
    """Dagster's in-process executor, writing the dated file when the instance does not."""

    def __init__(self, inner: Executor) -> None:
        self._inner = inner

    @property
    def retries(self) -> Any:
        return self._inner.retries

    @property
    def step_dependency_config(self) -> Any:
        return self._inner.step_dependency_config

    def execute(self, plan_context: Any, execution_plan: Any) -> Any:
        instance = plan_context.instance
        if not instance_wires_dated_file(instance.get_settings("python_logs")):
            handler = DatedFileHandler(logging.DEBUG)
            instance.add_event_listener(
                plan_context.run_id, lambda entry: handler.handle(_as_record(entry))
            )
        yield from self._inner.execute(plan_context, execution_plan)


@executor(name="in_process", config_schema=in_process_executor.config_schema)
def dated_file_executor(init_context: InitExecutorContext) -> Executor:
    """One process per run, and the dated log file even on an instance without our dagster.yaml.

    `dagster asset materialize` with DAGSTER_HOME unset runs on a throwaway instance that never
    read deploy/dagster.yaml; the run's events then reach DatedFileHandler through the instance's
    event listener. On an instance that wires the handler nothing is added, so no line is
    written twice.
    """
    return _DatedFileExecutor(in_process_executor.executor_creation_fn(init_context))


def python_logs_settings(level: str = "INFO") -> dict[str, Any]:
    """The `python_logs` section of the shipped dagster.yaml, for tests and in-process runs."""
    return {
        "python_log_level": level,
        "managed_python_loggers": [MANAGED_LOGGER],
        "dagster_handler_config": {
            "handlers": {"itresume_daily_file": {"class": HANDLER_CLASS, "level": "DEBUG"}}
        },
    }
