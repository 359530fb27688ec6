"""The daily schedule: yesterday's UTC day through every asset, at most one run per day.

A hand-written `@schedule` rather than `build_schedule_from_partitioned_job`, because the fire
time comes from `ITRESUME_SCHEDULE_CRON` (any cron, not just an hour and minute of the day) and
the partition must still be "the day before the tick", whatever the cron says.

A schedule's `run_key` only dedupes the requests of one tick, so a cron firing every minute
would start a run per tick for the same day. Each tick therefore first asks the instance for a
run of the daily job for that day that is queued, running or succeeded, and skips, naming it;
only a failed or canceled run lets a later tick try the day again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterInstance,
    DagsterInvalidDefinitionError,
    DagsterRun,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from itresume_pipeline import settings
from itresume_pipeline.jobs import DAILY_JOB_NAME, daily_job

SCHEDULE_NAME = "itresume_daily_schedule"
CRON_ENV_VAR = "ITRESUME_SCHEDULE_CRON"
DEFAULT_CRON = "0 1 * * *"
# Run retries (instance `run_retries.enabled`) read this tag; the failure sensor stays quiet for
# runs Dagster marks `dagster/will_retry=true`, so operators hear only of the final failure.
MAX_RETRIES_TAG = "dagster/max_retries"
MAX_RETRIES = 2
PARTITION_TAG = "dagster/partition"
# Not finished, or finished well: another run of the day would only repeat it.
BLOCKING_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
    DagsterRunStatus.SUCCESS,
]


def schedule_cron() -> str:
    return settings.env(CRON_ENV_VAR, DEFAULT_CRON)


def partition_for_tick(scheduled_at: datetime) -> str:
    """The partition a tick materializes: the UTC day before the scheduled time (a whole day)."""
    if scheduled_at.tzinfo is None:
        scheduled_at = scheduled_at.replace(tzinfo=UTC)
    return (scheduled_at.astimezone(UTC) - timedelta(days=1)).date().isoformat()


def existing_run_for_day(instance: DagsterInstance, day: str) -> DagsterRun | None:
    """A queued, running or succeeded run of the daily job for `day`, whoever launched it."""
    runs = instance.get_runs(
        filters=RunsFilter(
            job_name=DAILY_JOB_NAME, tags={PARTITION_TAG: day}, statuses=BLOCKING_STATUSES
        ),
        limit=1,
    )
    return runs[0] if runs else None


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
        def itresume_daily_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
            # Without a scheduled time (a manual test evaluation in the UI), act as if due now.
            scheduled_at = context.scheduled_execution_time or datetime.now(UTC)
            day = partition_for_tick(scheduled_at)
            existing = existing_run_for_day(context.instance, day)
            if existing is not None:
                return SkipReason(
                    f"{day} already has run {existing.run_id} ({existing.status.value}) of "
                    f"{DAILY_JOB_NAME}: at most one run per day"
                )
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
