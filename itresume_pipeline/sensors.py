"""The alert sensors: a failed run's e-mail is queued in the outbox, then delivered or retried."""

from typing import Any

import dagster as dg

from itresume_pipeline.alerts import WILL_RETRY_TAG, Outbox, build_failure_email
from itresume_pipeline.resources.mail import MailResource

ALERT_INTERVAL_S = 30


def _deliver(context: Any, mail: MailResource, outbox: Outbox) -> str:
    if (problem := mail.delivery_problem()) is not None:
        text = f"{problem}; {len(outbox.pending_keys())} alert(s) waiting in {outbox.pending}"
        context.log.warning(text)
        return text
    if not outbox.pending_keys():
        return "no pending alerts"
    result = outbox.flush(mail if mail.host else None, context.log)
    summary = (
        f"alert outbox {outbox.root}: sent {len(result.sent)}, {len(result.failed)} still "
        f"pending (relay failed), {len(result.deferred)} deferred to the next tick"
    )
    context.log.info(summary)
    return summary


@dg.run_failure_sensor(
    name="run_failure_alert",
    description="E-mails the operators when any run fails (also runs launched from the CLI).",
    # CLI runs (`dagster asset materialize`) have no remote origin; only this setting sees them.
    monitor_all_code_locations=True,
    minimum_interval_seconds=ALERT_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_failure_alert(context: dg.RunFailureSensorContext, mail: MailResource) -> None:
    """Queue the alert before any send: the cursor moves on even when this body raises."""
    run, outbox = context.dagster_run, Outbox()
    if run.tags.get(WILL_RETRY_TAG, "").lower() == "true":
        context.log.info(f"run {run.run_id} failed but will be retried: no alert")
    else:
        try:
            msg = build_failure_email(run, context.get_step_failure_events(), context.failure_event)
        except Exception as exc:  # never drop the alert over its details
            context.log.warning(f"could not read the details of run {run.run_id}: {exc!r}")
            msg = build_failure_email(run, problem=exc)
        try:
            queued = outbox.enqueue(run.run_id, mail.address(msg))
        except OSError as exc:  # unwritable: send now, without the once-only bookkeeping
            context.log.warning(f"alert outbox {outbox.root} unusable ({exc}); sending directly")
            context.log.info(f"alert for run {run.run_id} sent to {mail.send(msg)}")
            return
        state = "queued in" if queued else "already in (not doubled)"
        context.log.info(f"alert for run {run.run_id} {state} {outbox.root}")
    _deliver(context, mail, outbox)  # returns None: the sensor goes on to the next failed run


@dg.sensor(
    name="alert_outbox_flush",
    description="Retries failure e-mails the relay did not take earlier.",
    minimum_interval_seconds=ALERT_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def alert_outbox_flush(context: dg.SensorEvaluationContext, mail: MailResource) -> dg.SkipReason:
    return dg.SkipReason(_deliver(context, mail, Outbox()))
