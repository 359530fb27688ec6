"""Dated log files: naming, retention, line format, concurrency, and real Dagster runs.

The clock is each record's `created` time, which the handler names files after, so tests freeze
it by building records at fixed instants rather than by patching the system clock.
"""

import logging
import multiprocessing
import os
import re
import subprocess
import sys
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster import AssetExecutionContext

from itresume_pipeline.logs import (
    DatedFileHandler,
    apply_retention,
    dated_file_executor,
    instance_wires_dated_file,
    retention_days,
)
from itresume_pipeline.settings import SettingError
from itresume_pipeline_tests.helpers import TEST_CLIENT, TEST_CLIENT_KEY

SECRET = TEST_CLIENT_KEY
REPO = Path(__file__).resolve().parent.parent
LINE_RE = re.compile(
    r"^(?P<ts>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3})Z "
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) +run=(?P<run>[0-9a-f]{8}|-) "
    r"step=(?P<step>\S+) (?P<msg>.*)$"
)


def at(when: datetime, msg: str = "hello", level: int = logging.INFO) -> logging.LogRecord:
    """A record logged at `when` (the handler's clock)."""
    record = logging.LogRecord("itresume_pipeline.test", level, __file__, 1, msg, (), None)
    record.created = when.timestamp()
    return record


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "logs"
    monkeypatch.setenv("ITRESUME_LOG_DIR", str(directory))
    monkeypatch.delenv("ITRESUME_LOG_RETENTION_DAYS", raising=False)
    monkeypatch.setenv("ITRESUME_CLIENT_KEY", SECRET)
    return directory


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def shipped_python_logs() -> dict:
    """The python_logs section of the dagster.yaml that deployments install."""
    return yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())["python_logs"]


# --- naming ------------------------------------------------------------------------------------


def test_file_is_named_after_the_utc_day_of_each_record(log_dir: Path):
    handler = DatedFileHandler()
    handler.handle(at(datetime(2024, 10, 8, 23, 59, 59, 999000, tzinfo=UTC), "before midnight"))
    handler.handle(at(datetime(2024, 10, 9, 0, 0, 0, tzinfo=UTC), "after midnight"))
    # 02:30 in Moscow is still the 8th in UTC
    moscow = datetime.fromisoformat("2024-10-09T02:30:00+03:00")
    handler.handle(at(moscow, "late, Moscow time"))

    assert files(log_dir) == ["2024-10-08.txt", "2024-10-09.txt"]
    first = (log_dir / "2024-10-08.txt").read_text().splitlines()
    assert [LINE_RE.match(line)["msg"] for line in first] == [
        "[itresume_pipeline.test] before midnight",
        "[itresume_pipeline.test] late, Moscow time",
    ]
    assert first[0].startswith("2024-10-08 23:59:59.999Z INFO ")
    assert "after midnight" in (log_dir / "2024-10-09.txt").read_text()


def test_lines_append_and_the_directory_is_created(log_dir: Path):
    noon = datetime(2024, 10, 8, 12, tzinfo=UTC)
    DatedFileHandler().handle(at(noon, "first handler"))
    DatedFileHandler().handle(at(noon, "second handler"))  # Dagster builds one per run
    text = (log_dir / "2024-10-08.txt").read_text()
    assert text.count("\n") == 2 and "first handler" in text and "second handler" in text


def test_debug_is_dropped_and_a_traceback_is_kept(log_dir: Path):
    handler = DatedFileHandler()
    noon = datetime(2024, 10, 8, 12, tzinfo=UTC)
    handler.handle(at(noon, "chatter", logging.DEBUG))
    try:
        raise RuntimeError(f"exploded with client_key={SECRET}")
    except RuntimeError:
        import sys

        record = at(noon, "it failed", logging.ERROR)
        record.exc_info = sys.exc_info()
    handler.handle(record)
    text = (log_dir / "2024-10-08.txt").read_text()
    assert "chatter" not in text
    lines = text.splitlines()
    assert LINE_RE.match(lines[0])["level"] == "ERROR"
    assert "Traceback (most recent call last):" in text
    assert "RuntimeError: exploded with client_key=***" in text
    assert all(line.startswith("    ") for line in lines[1:]), "continuations are indented"
    assert SECRET not in text


def test_emit_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log directory should be")
    monkeypatch.setenv("ITRESUME_LOG_DIR", str(blocker))
    monkeypatch.setenv("ITRESUME_CLIENT_KEY", SECRET)
    DatedFileHandler().handle(at(datetime(2024, 10, 8, tzinfo=UTC), f"key {SECRET}"))
    err = capsys.readouterr().err
    assert "cannot write a log line" in err
    assert SECRET not in err


# --- retention ---------------------------------------------------------------------------------


def _populate(directory: Path) -> dict[str, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    for day in range(1, 10):
        (directory / f"2024-10-{day:02d}.txt").write_text(f"log of day {day}\n")
    (directory / "2024-10-12.txt").write_text("a future day is not older than today\n")
    others = {
        "notes.txt": b"operator notes",
        "2024-10-01.txt.gz": b"compressed by hand",
        "2024-10-01.log": b"other extension",
        "backup-2024-10-01.txt": b"prefixed",
        "2024-10-1.txt": b"not zero-padded",
        "2024-13-01.txt": b"not a date",
        "README": b"readme",
    }
    for name, content in others.items():
        (directory / name).write_bytes(content)
    (directory / "2024-09-01.txt").mkdir()  # a directory that looks like a log file
    (directory / "2024-09-01.txt" / "keep.txt").write_text("inside")
    return others


def _assert_untouched(directory: Path, others: dict[str, bytes]) -> None:
    for name, content in others.items():
        assert (directory / name).read_bytes() == content, name
    assert (directory / "2024-09-01.txt" / "keep.txt").read_text() == "inside"


def test_retention_keeps_today_and_the_days_before_it(log_dir: Path):
    """With no retention setting: today and the two days before it, the documented default."""
    others = _populate(log_dir)
    DatedFileHandler().handle(at(datetime(2024, 10, 9, 1, 0, tzinfo=UTC), "the daily run"))

    kept = ["2024-10-07.txt", "2024-10-08.txt", "2024-10-09.txt", "2024-10-12.txt"]
    assert files(log_dir) == sorted([*kept, *others, "2024-09-01.txt"])
    assert (log_dir / "2024-09-01.txt").is_dir()
    _assert_untouched(log_dir, others)
    assert (log_dir / "2024-10-07.txt").read_text() == "log of day 7\n"
    assert "the daily run" in (log_dir / "2024-10-09.txt").read_text()


@pytest.mark.parametrize(
    ("setting", "kept"),
    [
        ("1", ["2024-10-09.txt"]),
        ("2", ["2024-10-08.txt", "2024-10-09.txt"]),
        (" 3 ", ["2024-10-07.txt", "2024-10-08.txt", "2024-10-09.txt"]),
    ],
)
def test_retention_setting(log_dir: Path, monkeypatch: pytest.MonkeyPatch, setting, kept):
    monkeypatch.setenv("ITRESUME_LOG_RETENTION_DAYS", setting)
    others = _populate(log_dir)
    DatedFileHandler().handle(at(datetime(2024, 10, 9, 23, 0, tzinfo=UTC)))
    remaining = [n for n in files(log_dir) if n.startswith("2024-10-") and n[8:10] <= "09"]
    assert [n for n in remaining if n.endswith(".txt") and len(n) == 14] == kept
    _assert_untouched(log_dir, others)


@pytest.mark.parametrize("setting", ["0", "-1", "three", "2.5"])
def test_a_bad_retention_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, setting: str
):
    monkeypatch.setenv("ITRESUME_LOG_RETENTION_DAYS", setting)
    with pytest.raises(SettingError, match="ITRESUME_LOG_RETENTION_DAYS"):
        retention_days()


def test_a_bad_retention_keeps_logging_and_deletes_nothing(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.setenv("ITRESUME_LOG_RETENTION_DAYS", "0")
    _populate(log_dir)
    before = files(log_dir)
    handler = DatedFileHandler()
    handler.handle(at(datetime(2024, 10, 9, 23, 0, tzinfo=UTC), "still written"))
    handler.handle(at(datetime(2024, 10, 9, 23, 1, tzinfo=UTC), "and again"))
    assert files(log_dir) == before
    text = (log_dir / "2024-10-09.txt").read_text()
    assert "still written" in text and "and again" in text
    err = capsys.readouterr().err
    assert err.count("ITRESUME_LOG_RETENTION_DAYS='0' must be at least 1") == 1


def test_retention_runs_again_when_a_new_day_starts(log_dir: Path):
    handler = DatedFileHandler(retention_days=2)
    handler.handle(at(datetime(2024, 10, 9, 23, 59, tzinfo=UTC), "late"))
    assert files(log_dir) == ["2024-10-09.txt"]
    (log_dir / "2024-10-08.txt").write_text("yesterday's, kept today\n")
    handler.handle(at(datetime(2024, 10, 9, 23, 59, 30, tzinfo=UTC), "same day: no rescan"))
    assert files(log_dir) == ["2024-10-08.txt", "2024-10-09.txt"]
    handler.handle(at(datetime(2024, 10, 10, 0, 0, 1, tzinfo=UTC), "a new day"))
    assert files(log_dir) == ["2024-10-09.txt", "2024-10-10.txt"]


def test_apply_retention_reports_what_it_deleted(tmp_path: Path):
    for name in ("2024-01-01.txt", "2024-01-02.txt", "2024-01-03.txt"):
        (tmp_path / name).write_text("x")
    deleted = apply_retention(tmp_path, date(2024, 1, 3), 2)
    assert [p.name for p in deleted] == ["2024-01-01.txt"]
    assert apply_retention(tmp_path / "missing", date(2024, 1, 3), 2) == []


# --- concurrency -------------------------------------------------------------------------------

_LONG = "x" * 6000  # longer than PIPE_BUF: whole-line appends must not rely on it


def _write_many(directory: str, tag: str, count: int) -> None:
    handler = DatedFileHandler(directory=directory)
    when = datetime(2024, 10, 8, 12, tzinfo=UTC)
    for i in range(count):
        handler.handle(at(when, f"{tag}-{i} {_LONG if i % 10 == 0 else ''}end"))


@pytest.mark.processes
def test_threads_and_processes_append_whole_lines(tmp_path: Path):
    directory = str(tmp_path / "logs")
    threads = [
        threading.Thread(target=_write_many, args=(directory, f"t{n}", 200)) for n in range(4)
    ]
    fork = multiprocessing.get_context("fork")
    processes = [fork.Process(target=_write_many, args=(directory, f"p{n}", 200)) for n in range(3)]
    for worker in [*threads, *processes]:
        worker.start()
    for thread in threads:
        thread.join(60)
    for process in processes:
        process.join(60)
        assert process.exitcode == 0

    lines = (tmp_path / "logs" / "2024-10-08.txt").read_text().splitlines()
    assert len(lines) == 7 * 200
    seen = set()
    for line in lines:
        match = LINE_RE.match(line)
        assert match, line[:120]
        assert match["msg"].endswith("end")
        seen.add(match["msg"].split()[1])
    assert len(seen) == 7 * 200


# --- through Dagster ---------------------------------------------------------------------------

daily = dg.DailyPartitionsDefinition(start_date="2024-01-01")


@dg.asset(partitions_def=daily)
def tiny_download(context: AssetExecutionContext) -> None:
    context.log.info(f"download started: {context.partition_key}")
    logging.getLogger("itresume_pipeline.resources.api").warning(
        f"HTTP 503 from http://api.test/stats?client_key={SECRET}; retry 1 of 5 in 0.1 s"
    )
    context.log.info("download finished: 3 records in 0.1 s")


@dg.asset(partitions_def=daily, deps=[tiny_download])
def tiny_load(context: AssetExecutionContext) -> None:
    context.log.info("parse and load started")
    raise ValueError(f"load failed, password={SECRET}")


def test_dagster_runs_write_the_dated_file(log_dir: Path):
    with dg.instance_for_test(overrides={"python_logs": shipped_python_logs()}) as instance:
        result = dg.materialize(
            [tiny_download, tiny_load],
            instance=instance,
            partition_key="2024-10-08",
            raise_on_error=False,
        )
    assert not result.success
    today = datetime.now(UTC).date().isoformat()  # named after the day logged, not the partition
    text = (log_dir / f"{today}.txt").read_text()
    assert SECRET not in text

    short = result.run_id[:8]
    heads = [LINE_RE.match(line) for line in text.splitlines() if not line.startswith(" ")]
    assert all(heads), text
    by_message = {m["msg"]: m for m in heads}
    started = by_message["download started: 2024-10-08"]
    assert (started["run"], started["step"], started["level"]) == (short, "tiny_download", "INFO")
    assert "download finished: 3 records in 0.1 s" in by_message
    assert any(m.startswith('Finished execution of step "tiny_download" in') for m in by_message)
    warning = next(m for m in heads if "HTTP 503" in m["msg"])
    assert warning["level"] == "WARNING"
    assert warning["msg"].startswith("[itresume_pipeline.resources.api] ")
    assert "client_key=***" in warning["msg"]

    failure = next(m for m in heads if m["msg"] == 'Execution of step "tiny_load" failed.')
    assert (failure["level"], failure["step"]) == ("ERROR", "tiny_load")
    after_failure = text.split('Execution of step "tiny_load" failed.', 1)[1]
    assert "ValueError: load failed, password=***" in after_failure
    # the user's own frame of the traceback, indented under the record
    assert "in tiny_load\n        raise ValueError(" in after_failure
    run_failed = next(m for m in heads if m["msg"].startswith("Execution of run for"))
    assert run_failed["level"] == "ERROR" and run_failed["step"] == "-"
    # engine chatter (step start, outputs, resource init) stays in the UI only
    assert "Started execution of step" not in text
    assert "Started execution of run" in text


# --- runs on an instance without the shipped dagster.yaml --------------------------------------
@pytest.mark.processes
def test_a_shell_run_without_dagster_home_writes_the_dated_file(tmp_path: Path, simulator):
    """`dagster asset materialize` on a throwaway instance: the location's executor writes it."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DAGSTER_", "ITRESUME_"))
    }
    env.update(
        ITRESUME_HOME=str(tmp_path / "home"),
        ITRESUME_LOG_DIR=str(tmp_path / "logs"),
        ITRESUME_API_URL=simulator.url,
        ITRESUME_CLIENT=TEST_CLIENT,
        ITRESUME_CLIENT_KEY=TEST_CLIENT_KEY,
    )
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize"]
    command += ["-m", "itresume_pipeline", "--select", "raw_attempts", "--partition", "2024-10-08"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (log_file,) = (tmp_path / "logs").iterdir()
    text = log_file.read_text()
    assert text.count("download finished: 2024-10-08") == 1
    assert text.count('Finished execution of step "raw_attempts"') == 1
    assert TEST_CLIENT_KEY not in text


@dg.asset
def say_once(context: AssetExecutionContext) -> None:
    context.log.info("exactly once")


def say_once_job() -> dg.JobDefinition:
    """Through the code location's executor, as `dagster asset materialize` runs it."""
    job = dg.define_asset_job("say_once_job", selection=[say_once])
    defs = dg.Definitions(assets=[say_once], jobs=[job], executor=dated_file_executor)
    return defs.resolve_job_def("say_once_job")


def test_one_line_per_record_whether_or_not_the_instance_wires_the_file(log_dir: Path):
    """The shipped dagster.yaml wires the handler and so does the executor: still one line."""
    overrides = {"python_logs": shipped_python_logs()}
    with dg.instance_for_test(overrides=overrides) as instance:
        assert dg.execute_job(dg.reconstructable(say_once_job), instance).success
    with dg.instance_for_test() as bare:  # no python_logs: the executor feeds the handler
        assert dg.execute_job(dg.reconstructable(say_once_job), bare).success
    (log_file,) = log_dir.iterdir()
    text = log_file.read_text()
    assert text.count("exactly once") == 2
    assert text.count('Finished execution of step "say_once"') == 2
    assert SECRET not in text


def test_instance_wires_dated_file_reads_python_logs():
    assert instance_wires_dated_file(shipped_python_logs())
    assert not instance_wires_dated_file(None)
    assert not instance_wires_dated_file({})
    assert not instance_wires_dated_file({"dagster_handler_config": {"handlers": {"x": {}}}})
