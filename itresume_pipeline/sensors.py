"""Sensors that e-mail operators when a run fails; they live in the alerting code location.

``run_failure_alert`` records and sends the alert for each failed run; since a
``run_failure_sensor`` only runs its body on a *new* failure event, ``alert_outbox_flush`` retries,
every 30 s, whatever the relay refused earlier, and says on every tick when alerts cannot go out
at all (no relay configured). Both go through `itresume_pipeline.alerts.AlertSpool`, which makes
delivery exactly-once. ``dead_run_detector`` marks failed the runs whose process died without a
word (`itresume_pipeline.dead_runs`), so that they are alerted like any other failure.
"""

from __future__ import annotations

from typing import Any

from dagster import (
    DefaultSensorStatus,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from itresume_pipeline.alerts import (
    WILL_RETRY_TAG,
    AlertSpool,
    FlushResult,
    build_failure_email,
    minimal_failure_email,
)
from itresume_pipeline.dead_runs import find_dead_runs
from itresume_pipeline.resources.mail import MailResource

ALERT_INTERVAL_S = 30
# With the sensor daemon's own delays, a dead run is failed and alerted within about 2 minutes.
DEAD_RUN_INTERVAL_S = 60


def _summary(result: FlushResult, spool: AlertSpool) -> str:
    parts = [f"sent {len(result.sent)}"]
    if result.failed:
        parts.append(f"{len(result.failed)} still pending (relay failed)")
    if result.deferred:
        parts.append(f"{len(result.deferred)} deferred to the next tick")
    if result.busy:
        parts.append(f"{len(result.busy)} being sent by another tick")
    return f"alert spool {spool.root}: " + ", ".join(parts)


def _undeliverable(context: Any, mail: MailResource, spool: AlertSpool) -> str | None:
    """The warning of a tick that cannot deliver (no relay or no recipients), logged; else None.

    The alerts are kept pending: once the relay is configured, the next tick sends them, once.
    """
    problem = mail.delivery_problem()
    if problem is None:
        return None
    waiting = len(spool.pending_keys())
    text = f"{problem}; {waiting} alert(s) waiting in {spool.pending}"
    context.log.warning(text)
    return text


@run_failure_sensor(
    name="run_failure_alert",
    description="E-mails the operators when any run fails (also runs launched from the CLI).",
    # CLI runs (`dagster asset materialize`) have no remote origin; only this setting sees them.
    monitor_all_code_locations=True,
    minimum_interval_seconds=ALERT_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
)
def run_failure_alert(context: RunFailureSensorContext, mail: MailResource) -> None:
    """Spool the alert first (so the cursor moving on can never lose it), then send."""
    run = context.dagster_run
    spool = AlertSpool()
    if str(run.tags.get(WILL_RETRY_TAG, "")).lower() == "true":
        context.log.info(f"run {run.run_id} failed but will be retried: no alert")
    else:
        try:
            msg = build_failure_email(run, context.get_step_failure_events(), context.failure_event)
        except Exception as exc:  # the cursor moves on regardless: never drop the alert
            context.log.warning(f"could not format the alert for run {run.run_id}: {exc!r}")
            msg = minimal_failure_email(run, exc)
        try:
            queued = spool.enqueue(run.run_id, msg)
        except OSError as exc:
            # The spool is unwritable: send now without the exactly-once bookkeeping rather than
            # lose the alert. If that fails too the tick errors and shows up in the UI.
            context.log.warning(f"alert spool {spool.root} unusable ({exc}); sending directly")
            context.log.info(f"alert for run {run.run_id} sent to {mail.send(msg)}")
            return
        if queued:
            context.log.info(f"alert for run {run.run_id} spooled in {spool.pending}")
        else:
            context.log.info(f"alert for run {run.run_id} already spooled: not doubled")
    # Returning None (not a SkipReason) lets the sensor go on to the next failed run this tick.
    if _undeliverable(context, mail, spool) is None:
        context.log.info(_summary(spool.flush(mail, context.log), spool))


@sensor(
    name="alert_outbox_flush",
    description="Retries failure e-mails the relay did not take earlier.",
    minimum_interval_seconds=ALERT_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
)
def alert_outbox_flush(context: SensorEvaluationContext, mail: MailResource) -> SkipReason:
    """Never requests runs: it only drains ``pending/`` and reports what it did."""
    spool = AlertSpool()
    problem = _undeliverable(context, mail, spool)
    if problem is not None:
        return SkipReason(problem)
    if not spool.pending_keys():
        return SkipReason("no pending alerts")
    return SkipReason(_summary(spool.flush(mail, context.log), spool))


@sensor(
    name="dead_run_detector",
    description=(
        "Marks failed the STARTED runs whose process is gone (kill -9, crash), so that "
        "run_failure_alert e-mails them."
    ),
    minimum_interval_seconds=DEAD_RUN_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
)
def dead_run_detector(context: SensorEvaluationContext) -> SkipReason:
    """Reports each dead run failed once: a failed run is no longer STARTED on the next tick."""
    dead = find_dead_runs(context.instance)
    for found in dead:
        context.log.warning(f"run {found.run.run_id}: {found.message()}")
        context.instance.report_run_failed(found.run, found.message())
    if not dead:
        return SkipReason("no dead runs")
    return SkipReason(f"marked failed: {', '.join(found.run.run_id for found in dead)}")
