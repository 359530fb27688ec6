"""The failure e-mail, end to end: a real failed run, the real sensors, a real SMTP server.

Each test gets its own outbox (ITRESUME_OUTBOX_DIR) and SMTP server; the failed runs are
made once per module, since `materialize` is the slow part.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import trustme
from dagster import DagsterEventType, DagsterInstance, DagsterRun

from itresume_pipeline.alerts import Outbox, build_failure_email, describe_error, partition_label
from itresume_pipeline.resources.mail import MailResource
from itresume_pipeline.sensors import alert_outbox_flush, run_failure_alert
from itresume_pipeline_tests.helpers import free_port, mail_for, smtp_server

SECRET = "SECRET123"
DAGSTER_URL = "http://dagster.example.test:3000/"
daily = dg.DailyPartitionsDefinition(start_date="2024-01-01")


@dg.asset(partitions_def=daily, retry_policy=dg.RetryPolicy(max_retries=1, delay=0))
def flaky_download() -> None:
    raise ValueError(f"boom с кириллицей client_key={SECRET}")


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    outbox = tmp_path / "outbox"
    monkeypatch.setenv("ITRESUME_OUTBOX_DIR", str(outbox))
    monkeypatch.setenv("ITRESUME_DAGSTER_URL", DAGSTER_URL)
    monkeypatch.setenv("ITRESUME_CLIENT_KEY", SECRET)
    return outbox


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def _fail(instance: DagsterInstance, partition: str, tags: dict[str, str] | None = None) -> Any:
    result = dg.materialize(
        [flaky_download],
        instance=instance,
        partition_key=partition,
        raise_on_error=False,
        tags=tags,
    )
    assert not result.success
    return result


@pytest.fixture(scope="module")
def failed(instance: DagsterInstance) -> tuple[DagsterRun, Any]:
    result = _fail(instance, "2024-01-05")
    event = next(e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE)
    return result.dagster_run, event


def _call_failure_sensor(
    instance: DagsterInstance, run: DagsterRun, event: Any, mail: MailResource
) -> None:
    ctx = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=event,
        resources={"mail": mail},
    ).for_run_failure()
    run_failure_alert(ctx)


def _call_flush_sensor(instance: DagsterInstance, mail: MailResource) -> str | None:
    result = alert_outbox_flush(
        dg.build_sensor_context(instance=instance, resources={"mail": mail})
    )
    assert isinstance(result, dg.SkipReason)
    return result.skip_message


def _raw(sink: Any) -> bytes:
    return b"".join(e.original_content for e in sink.envelopes)


def _assert_alert(msg: EmailMessage, run: DagsterRun) -> None:
    # Over SMTP the lines end in CRLF, and the parser keeps them in the body.
    subject, body = msg["Subject"], msg.get_content().replace("\r\n", "\n")
    for text in (subject, body):
        assert "__ephemeral_asset_job__" in text
        assert "2024-01-05" in text
        assert "flaky_download" in text
        assert "ValueError: boom с кириллицей client_key=***" in text
        assert SECRET not in text
    assert f"http://dagster.example.test:3000/runs/{run.run_id}" in body
    assert msg["Date"]
    assert msg["Message-ID"].strip() == f"<run-failure.{run.run_id}@itresume-pipeline>"
    assert "Exceeded max_retries of 1" in body
    assert "in flaky_download\n    raise ValueError(" in body  # the stack tail: our frame
    assert "site-packages/dagster" not in body


# -- the sensors against a real failed run ------------------------------------------------------


def test_failure_sends_exactly_one_email(
    instance: DagsterInstance, failed: tuple[DagsterRun, Any], tls_ca: tuple[trustme.CA, Path]
) -> None:
    run, event = failed
    ca, ca_path = tls_ca
    with smtp_server("starttls", ca) as (sink, port):
        mail = mail_for(port, "starttls", ca_path)
        _call_failure_sensor(instance, run, event, mail)
        assert len(sink.envelopes) == 1
        _call_failure_sensor(instance, run, event, mail)  # same run again: nothing more
        assert _call_flush_sensor(instance, mail) == "no pending alerts"
        assert len(sink.envelopes) == 1
    (msg,) = sink.messages()
    _assert_alert(msg, run)
    assert msg["From"] == "alerts@example.test"
    assert SECRET.encode() not in _raw(sink)
    outbox = Outbox()
    assert outbox.pending_keys() == [] and outbox.sent_keys() == [run.run_id]


def test_smtp_down_keeps_the_alert_until_a_later_tick_sends_it_once(
    instance: DagsterInstance, failed: tuple[DagsterRun, Any], tls_ca: tuple[trustme.CA, Path]
) -> None:
    run, event = failed
    ca, ca_path = tls_ca
    port = free_port()
    mail = mail_for(port, "ssl", ca_path, timeout_s=2.0)  # nothing listens on `port` yet
    _call_failure_sensor(instance, run, event, mail)
    outbox = Outbox()
    assert outbox.pending_keys() == [run.run_id] and outbox.sent_keys() == []
    assert "1 still pending" in (_call_flush_sensor(instance, mail) or "")  # still down
    assert outbox.pending_keys() == [run.run_id]

    with smtp_server("ssl", ca, port=port) as (sink, _):
        assert "sent 1" in (_call_flush_sensor(instance, mail) or "")
        assert _call_flush_sensor(instance, mail) == "no pending alerts"
        _call_failure_sensor(instance, run, event, mail)  # a replayed failure event
    assert len(sink.envelopes) == 1
    _assert_alert(sink.messages()[0], run)
    assert outbox.pending_keys() == [] and outbox.sent_keys() == [run.run_id]


def test_will_retry_runs_send_nothing(instance: DagsterInstance) -> None:
    result = _fail(instance, "2024-01-06")
    run_id = result.dagster_run.run_id
    instance.add_run_tags(run_id, {"dagster/will_retry": "true"})  # as the retry daemon does
    run = instance.get_run_by_id(run_id)
    assert run is not None
    event = next(e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE)
    with smtp_server("none") as (sink, port):
        _call_failure_sensor(instance, run, event, mail_for(port, "none", None))
    assert sink.envelopes == []
    assert Outbox().pending_keys() == [] and Outbox().sent_keys() == []


def test_locally_without_a_relay_the_outbox_holds_one_eml_per_failed_run(
    instance: DagsterInstance,
    failed: tuple[DagsterRun, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ITRESUME_PROFILE", "local")
    run, event = failed
    mail = MailResource(to_addrs="ops@example.test", from_addr="alerts@example.test")
    _call_failure_sensor(instance, run, event, mail)
    _call_failure_sensor(instance, run, event, mail)
    assert _call_flush_sensor(instance, mail) == "no pending alerts"
    (eml,) = (tmp_path / "outbox").glob("*.eml")  # the queue's own file: no second copy
    assert eml.name == f"{run.run_id}.eml" and Outbox().pending_keys() == []
    msg = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert (msg["From"], msg["To"]) == ("alerts@example.test", "ops@example.test")
    _assert_alert(msg, run)


def test_without_a_relay_in_production_alerts_wait_and_every_tick_says_so(
    instance: DagsterInstance,
    failed: tuple[DagsterRun, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ITRESUME_PROFILE", raising=False)
    monkeypatch.setenv("ITRESUME_HOME", str(tmp_path / "home"))
    run, event = failed
    unconfigured = MailResource(to_addrs="")  # no ITRESUME_SMTP_HOST, no ITRESUME_ALERT_TO
    capfd.readouterr()
    _call_failure_sensor(instance, run, event, unconfigured)
    tick_log = capfd.readouterr().err  # what the sensor's context.log wrote
    assert "WARNING - alerts are NOT being delivered" in tick_log
    assert "ITRESUME_SMTP_HOST" in tick_log and "ITRESUME_ALERT_TO" in tick_log
    outbox = Outbox()
    assert outbox.pending_keys() == [run.run_id] and outbox.sent_keys() == []
    assert not (tmp_path / "home" / "outbox").exists()  # no .eml that nobody reads

    for _ in range(2):  # every tick says it, not just the first
        reason = _call_flush_sensor(instance, unconfigured) or ""
        tick_log = capfd.readouterr().err
        assert "WARNING - alerts are NOT being delivered" in tick_log
        for text in (reason, tick_log):
            assert "NOT being delivered" in text
            assert "ITRESUME_SMTP_HOST" in text and "ITRESUME_ALERT_TO" in text
            assert "1 alert(s) waiting" in text
    assert outbox.pending_keys() == [run.run_id]

    with smtp_server("none") as (sink, port):  # the relay is configured later
        relay = mail_for(port, "none", None)
        assert "sent 1" in (_call_flush_sensor(instance, relay) or "")
        assert _call_flush_sensor(instance, relay) == "no pending alerts"
        _call_failure_sensor(instance, run, event, relay)
    assert len(sink.envelopes) == 1
    _assert_alert(sink.messages()[0], run)


def test_no_relay_is_reported_even_with_nothing_pending(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ITRESUME_PROFILE", raising=False)
    reason = _call_flush_sensor(instance, MailResource(to_addrs="ops@example.test")) or ""
    assert "NOT being delivered" in reason and "ITRESUME_SMTP_HOST" in reason
    assert "0 alert(s) waiting" in reason


def test_full_ticks_through_the_cursor(tls_ca: tuple[trustme.CA, Path]) -> None:
    """Daemon-like: evaluate_tick with a persisted cursor, as `dagster dev` would."""
    ca, ca_path = tls_ca
    with dg.instance_for_test() as inst, smtp_server("starttls", ca) as (sink, port):
        mail = mail_for(port, "starttls", ca_path)
        defs = dg.Definitions(
            assets=[flaky_download],
            sensors=[run_failure_alert, alert_outbox_flush],
            resources={"mail": mail},
        )
        repo = defs.get_repository_def()
        sensor_def = defs.resolve_sensor_def("run_failure_alert")
        assert sensor_def.default_status == dg.DefaultSensorStatus.RUNNING
        assert defs.resolve_sensor_def("alert_outbox_flush").default_status == (
            dg.DefaultSensorStatus.RUNNING
        )

        def tick(cursor: str | None) -> Any:
            ctx = dg.build_sensor_context(
                instance=inst, repository_def=repo, resources={"mail": mail}, cursor=cursor
            )
            return sensor_def.evaluate_tick(ctx)

        first = tick(None)
        assert "Initiating" in (first.skip_message or "")
        assert sink.envelopes == []

        run = _fail(inst, "2024-02-01").dagster_run
        second = tick(first.cursor)
        assert len(sink.envelopes) == 1
        assert [r.dagster_run.run_id for r in second.dagster_run_reactions or []] == [run.run_id]
        assert not any(r.error for r in second.dagster_run_reactions or [])

        third = tick(second.cursor)
        assert not third.dagster_run_reactions
        tick(first.cursor)  # a replay from an old cursor (crash before the cursor was saved)
        assert len(sink.envelopes) == 1

        flush = defs.resolve_sensor_def("alert_outbox_flush").evaluate_tick(
            dg.build_sensor_context(instance=inst, repository_def=repo, resources={"mail": mail})
        )
        assert flush.skip_message == "no pending alerts"
    msg = sink.messages()[0]
    assert "2024-02-01" in msg["Subject"] and run.run_id in msg.get_content()


# -- pieces -------------------------------------------------------------------------------------


def test_partition_label_from_tags() -> None:
    assert partition_label({"dagster/partition": "2024-10-08"}) == "2024-10-08"
    assert (
        partition_label(
            {
                "dagster/asset_partition_range_start": "2024-10-01",
                "dagster/asset_partition_range_end": "2024-10-07",
            }
        )
        == "2024-10-01...2024-10-07"
    )
    assert partition_label({}) is None


def test_email_for_a_range_run_without_step_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITRESUME_DAGSTER_URL", "http://ui:3000")
    run = DagsterRun(
        job_name="__ASSET_JOB",
        run_id="0c4e1b9a-0000-4000-8000-000000000001",
        tags={
            "dagster/asset_partition_range_start": "2024-10-01",
            "dagster/asset_partition_range_end": "2024-10-07",
            "dagster/backfill": "bf1",
        },
    )
    msg = build_failure_email(run)
    assert msg["Subject"].startswith("[itresume] FAILED __ASSET_JOB [2024-10-01...2024-10-07]")
    body = msg.get_content()
    assert "http://ui:3000/runs/0c4e1b9a-0000-4000-8000-000000000001" in body
    assert "Backfill:   bf1" in body and "No step failure was recorded" in body


def test_describe_error_picks_the_real_exception() -> None:
    from dagster._utils.error import SerializableErrorInfo

    leaf = SerializableErrorInfo(
        "ConnectionError: reset\n", ['  File "x.py", line 1, in f\n'], "ConnectionError"
    )
    real = SerializableErrorInfo(
        "ApiError: GET https://api?client_key=abc failed\n", [], "ApiError", cause=leaf
    )
    wrapper = SerializableErrorInfo(
        "Error occurred while executing op\n", [], "DagsterExecutionStepExecutionError", cause=real
    )
    text, details = describe_error(wrapper)
    assert text.startswith("ApiError: GET https://api?client_key=abc")  # redacted later
    assert details[details.index("Error chain (outermost first):") + 1 :] == [
        "  DagsterExecutionStepExecutionError: Error occurred while executing op",
        "  ApiError: GET https://api?client_key=abc failed",
        "  ConnectionError: reset",
    ]
    assert describe_error(None) == ("(no error information recorded)", [])


class _SlowSender:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, msg: EmailMessage) -> str:
        time.sleep(0.3)
        self.sent.append(str(msg["Subject"]))
        return "slow://"


def test_concurrent_flushes_send_once(tmp_path: Path) -> None:
    """The failure sensor and the flush sensor may drain the outbox at the same moment."""
    outbox = Outbox(tmp_path / "s")
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content("y")
    assert outbox.enqueue("run-1", msg) is True
    assert outbox.enqueue("run-1", msg) is False
    sender = _SlowSender()
    threads = [threading.Thread(target=outbox.flush, args=(sender,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sender.sent == ["x"]
    assert outbox.enqueue("run-1", msg) is False  # already sent: never doubled
    assert outbox.pending_keys() == [] and outbox.sent_keys() == ["run-1"]
    assert list((tmp_path / "s" / "pending").iterdir()) == []  # no temp file left


def test_relay_down_defers_the_backlog_then_sends_it_in_order(tmp_path: Path) -> None:
    """One connection failure per tick, not one timeout per pending message."""
    outbox = Outbox(tmp_path / "s")
    for n in range(3):
        msg = EmailMessage()
        msg["Subject"] = f"alert {n}"
        msg.set_content("body")
        assert outbox.enqueue(f"run-{n}", msg)
        time.sleep(0.01)  # distinct mtimes: the outbox sends oldest first
    port = free_port()
    down = outbox.flush(mail_for(port, "none", None, timeout_s=2.0))
    assert list(down.failed) == ["run-0"] and down.deferred == ["run-1", "run-2"]
    assert "connect failed" in down.failed["run-0"]
    with smtp_server("none", port=port) as (sink, _):
        up = outbox.flush(mail_for(port, "none", None))
    assert up.sent == ["run-0", "run-1", "run-2"] and not up.failed
    assert [m["Subject"] for m in sink.messages()] == ["alert 0", "alert 1", "alert 2"]


def test_a_formatting_bug_still_sends_a_minimal_alert(
    instance: DagsterInstance, failed: tuple[DagsterRun, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import itresume_pipeline.alerts as alerts_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("bug")

    monkeypatch.setattr(alerts_module, "describe_error", broken)
    run, event = failed
    with smtp_server("none") as (sink, port):
        _call_failure_sensor(instance, run, event, mail_for(port, "none", None))
    (msg,) = sink.messages()
    assert "2024-01-05" in msg["Subject"] and run.run_id in msg.get_content()
    assert "KeyError" in msg.get_content()


def test_an_unwritable_outbox_sends_directly(
    instance: DagsterInstance,
    failed: tuple[DagsterRun, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("ITRESUME_OUTBOX_DIR", str(not_a_dir / "alerts"))
    run, event = failed
    with smtp_server("none") as (sink, port):
        _call_failure_sensor(instance, run, event, mail_for(port, "none", None))
    assert len(sink.envelopes) == 1
