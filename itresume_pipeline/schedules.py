"""The daily schedule: the last ITRESUME_LOOKBACK_DAYS UTC days, ending yesterday, as one run,
so late records are picked up. Hand-written: the cron is any `ITRESUME_SCHEDULE_CRON` and the
range must still end the day before the tick."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from dagster import (
    DagsterInvalidDefinitionError,
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
from itresume_pipeline.jobs import DAILY_JOB_NAME, RANGE_END_TAG, daily_job, range_tags

SCHEDULE_NAME = "itresume_daily_schedule"
CRON_ENV_VAR = "ITRESUME_SCHEDULE_CRON"
DEFAULT_CRON = "0 1 * * *"
LOOKBACK_VAR = "ITRESUME_LOOKBACK_DAYS"
DEFAULT_LOOKBACK_DAYS = 3
# Run retries (instance `run_retries.enabled`) read this tag; the failure sensor stays quiet for
# runs Dagster marks `dagster/will_retry=true`, so operators hear only of the final failure.
MAX_RETRIES_TAG = "dagster/max_retries"
MAX_RETRIES = 2
# Not finished, or finished well: another run of the day would only repeat it.
BLOCKING_STATUSES = [
    s for s in DagsterRunStatus if s not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
]


def partition_for_tick(scheduled_at: datetime) -> str:
    """The last day a tick materializes: the UTC day before the scheduled time."""
    if scheduled_at.tzinfo is None:
        scheduled_at = scheduled_at.replace(tzinfo=UTC)
    return (scheduled_at.astimezone(UTC) - timedelta(days=1)).date().isoformat()


def build_daily_schedule(cron: str | None = None) -> ScheduleDefinition:
    """The schedule for `cron` (default: `ITRESUME_SCHEDULE_CRON`, else 01:00 UTC daily)."""
    cron = cron or settings.env(CRON_ENV_VAR, DEFAULT_CRON)

    try:

        @schedule(
            name=SCHEDULE_NAME,
            job=daily_job,
            cron_schedule=cron,
            execution_timezone="UTC",
            default_status=DefaultScheduleStatus.RUNNING,
            description=(
                f"Materializes the last {LOOKBACK_VAR} (default {DEFAULT_LOOKBACK_DAYS}) UTC "
                f"days ending yesterday, as one run ({cron}, UTC; cron from {CRON_ENV_VAR})."
            ),
        )
        def itresume_daily_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
            # Without a scheduled time (a manual test evaluation in the UI), act as if due now.
            last = partition_for_tick(context.scheduled_execution_time or datetime.now(UTC))
            lookback = settings.integer(LOOKBACK_VAR, DEFAULT_LOOKBACK_DAYS, minimum=1, maximum=366)
            first = (date.fromisoformat(last) - timedelta(days=lookback - 1)).isoformat()
            first = max(first, settings.partitions_start_date())
            # A run_key only dedupes one tick's requests: skip if a run already covers the day.
            runs = context.instance.get_runs(
                filters=RunsFilter(
                    job_name=DAILY_JOB_NAME, tags={RANGE_END_TAG: last}, statuses=BLOCKING_STATUSES
                ),
                limit=1,
            )
            if runs:
                existing = runs[0]
                return SkipReason(
                    f"{last} already has run {existing.run_id} ({existing.status.value}) of "
                    f"{DAILY_JOB_NAME}: at most one run per day"
                )
            return RunRequest(
                run_key=last, tags={**range_tags(first, last), MAX_RETRIES_TAG: str(MAX_RETRIES)}
            )

    except DagsterInvalidDefinitionError as exc:
        message = f"{CRON_ENV_VAR}={cron!r} is not usable: {exc}"
        raise DagsterInvalidDefinitionError(message) from exc
    return itresume_daily_schedule


daily_schedule = build_daily_schedule()
