"""Sensors that e-mail operators when a run fails (DESIGN §4 "Alerts").

Two sensors, because a ``run_failure_sensor`` only runs its body when there is a *new* failure
event: ``run_failure_alert`` records and sends the alert for each failed run, and
``alert_outbox_flush`` retries, every 30 s, whatever the relay refused earlier. Both go through
`itresume_pipeline.alerts.AlertSpool`, which makes delivery exactly-once.
"""

from __future__ import annotations

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
from itresume_pipeline.resources.mail import MailResource

ALERT_INTERVAL_S = 30


def _summary(result: FlushResult, spool: AlertSpool) -> str:
    parts = [f"sent {len(result.sent)}"]
    if result.failed:
        parts.append(f"{len(result.failed)} still pending (relay failed)")
    if result.deferred:
        parts.append(f"{len(result.deferred)} deferred to the next tick")
    if result.busy:
        parts.append(f"{len(result.busy)} being sent by another tick")
    return f"alert spool {spool.root}: " + ", ".join(parts)


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
    if not spool.pending_keys():
        return SkipReason("no pending alerts")
    return SkipReason(_summary(spool.flush(mail, context.log), spool))
