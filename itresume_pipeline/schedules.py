"""The daily schedule: yesterday's UTC day through every asset, once a day (DESIGN §1).

A hand-written `@schedule` rather than `build_schedule_from_partitioned_job`, because the fire
time comes from `ITRESUME_SCHEDULE_CRON` (any cron, not just an hour and minute of the day) and
the partition must still be "the day before the tick", whatever the cron says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterInvalidDefinitionError,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    schedule,
)

from itresume_pipeline import settings
from itresume_pipeline.jobs import daily_job

SCHEDULE_NAME = "itresume_daily_schedule"
CRON_ENV_VAR = "ITRESUME_SCHEDULE_CRON"
DEFAULT_CRON = "0 1 * * *"
# Run retries (instance `run_retries.enabled`) read this tag; the failure sensor stays quiet for
# runs Dagster marks `dagster/will_retry=true`, so operators hear only of the final failure.
MAX_RETRIES_TAG = "dagster/max_retries"
MAX_RETRIES = 2


def schedule_cron() -> str:
    return settings.env(CRON_ENV_VAR, DEFAULT_CRON)


def partition_for_tick(scheduled_at: datetime) -> str:
    """The partition a tick materializes: the UTC day before the scheduled time (a whole day)."""
    if scheduled_at.tzinfo is None:
        scheduled_at = scheduled_at.replace(tzinfo=UTC)
    return (scheduled_at.astimezone(UTC) - timedelta(days=1)).date().isoformat()


def build_daily_schedule(cron: str | None = None) -> ScheduleDefinition:
    """The schedule for `cron` (default: `ITRESUME_SCHEDULE_CRON`, else 01:00 UTC daily)."""
    cron = cron or schedule_cron()

    try:

        @schedule(
            name=SCHEDULE_NAME,
            job=daily_job,
            cron_schedule=cron,
            execution_timezone="UTC",
            default_status=DefaultScheduleStatus.RUNNING,
            description=(
                f"Materializes yesterday's UTC partition of every asset ({cron}, UTC). "
                f"Cron from {CRON_ENV_VAR}."
            ),
        )
        def itresume_daily_schedule(context: ScheduleEvaluationContext) -> RunRequest:
            # Without a scheduled time (a manual test evaluation in the UI), act as if due now.
            scheduled_at = context.scheduled_execution_time or datetime.now(UTC)
            day = partition_for_tick(scheduled_at)
            # run_key = the day: a second tick for the same day (a cron firing more than once a
            # day, a daemon catching up) does not load the day twice.
            return RunRequest(
                run_key=day,
                partition_key=day,
                tags={MAX_RETRIES_TAG: str(MAX_RETRIES)},
            )

    except DagsterInvalidDefinitionError as exc:
        raise DagsterInvalidDefinitionError(
            f"{CRON_ENV_VAR}={cron!r} is not usable: {exc}"
        ) from exc
    return itresume_daily_schedule


daily_schedule = build_daily_schedule()
