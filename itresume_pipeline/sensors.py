"""Sensors that e-mail operators when a run fails; they live in the alerting code location.

``run_failure_alert`` queues the alert of each failed run in the outbox and delivers it; since a
``run_failure_sensor`` only runs its body on a *new* failure event, ``alert_outbox_flush``
retries, every 30 s, whatever the relay refused earlier, and says on every tick when alerts
cannot go out at all (no relay in production). `itresume_pipeline.alerts.Outbox` makes delivery
exactly-once. ``dead_run_detector`` marks failed the runs whose process died without a word
(`itresume_pipeline.dead_runs`), so that they are alerted like any other failure.
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
    Outbox,
    build_failure_email,
    minimal_failure_email,
)
from itresume_pipeline.dead_runs import find_dead_runs
from itresume_pipeline.resources.mail import MailResource

ALERT_INTERVAL_S = 30
# With the sensor daemon's own delays, a dead run is failed and alerted within about 2 minutes.
DEAD_RUN_INTERVAL_S = 60


def _deliver(context: Any, mail: MailResource, outbox: Outbox) -> str:
    """Flush the outbox and log what happened; a warning, alerts kept, when nothing can go out.

    Once the relay is configured, the next tick sends what waited, once.
    """
    problem = mail.delivery_problem()
    if problem is not None:
        text = f"{problem}; {len(outbox.pending_keys())} alert(s) waiting in {outbox.pending}"
        context.log.warning(text)
        return text
    if not outbox.pending_keys():
        return "no pending alerts"
    result = outbox.flush(mail if mail.has_relay else None, context.log)
    parts = [f"sent {len(result.sent)}"]
    if result.failed:
        parts.append(f"{len(result.failed)} still pending (relay failed)")
    if result.deferred:
        parts.append(f"{len(result.deferred)} deferred to the next tick")
    if result.busy:
        parts.append(f"{len(result.busy)} being sent by another tick")
    summary = f"alert outbox {outbox.root}: " + ", ".join(parts)
    context.log.info(summary)
    return summary


@run_failure_sensor(
    name="run_failure_alert",
    description="E-mails the operators when any run fails (also runs launched from the CLI).",
    # CLI runs (`dagster asset materialize`) have no remote origin; only this setting sees them.
    monitor_all_code_locations=True,
    minimum_interval_seconds=ALERT_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
)
def run_failure_alert(context: RunFailureSensorContext, mail: MailResource) -> None:
    """Queue the alert first (so the cursor moving on can never lose it), then deliver."""
    run = context.dagster_run
    outbox = Outbox()
    if str(run.tags.get(WILL_RETRY_TAG, "")).lower() == "true":
        context.log.info(f"run {run.run_id} failed but will be retried: no alert")
    else:
        try:
            msg = build_failure_email(run, context.get_step_failure_events(), context.failure_event)
        except Exception as exc:  # the cursor moves on regardless: never drop the alert
            context.log.warning(f"could not format the alert for run {run.run_id}: {exc!r}")
            msg = minimal_failure_email(run, exc)
        try:
            queued = outbox.enqueue(run.run_id, mail.address(msg))
        except OSError as exc:
            # The outbox is unwritable: send now without the exactly-once bookkeeping rather
            # than lose the alert. If that fails too the tick errors and shows up in the UI.
            context.log.warning(f"alert outbox {outbox.root} unusable ({exc}); sending directly")
            context.log.info(f"alert for run {run.run_id} sent to {mail.send(msg)}")
            return
        state = "queued in" if queued else "already in (not doubled)"
        context.log.info(f"alert for run {run.run_id} {state} {outbox.root}")
    # Returning None (not a SkipReason) lets the sensor go on to the next failed run this tick.
    _deliver(context, mail, outbox)


@sensor(
    name="alert_outbox_flush",
    description="Retries failure e-mails the relay did not take earlier.",
    minimum_interval_seconds=ALERT_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
)
def alert_outbox_flush(context: SensorEvaluationContext, mail: MailResource) -> SkipReason:
    """Never requests runs: it only drains ``pending/`` and reports what it did."""
    return SkipReason(_deliver(context, mail, Outbox()))


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
