"""The daily schedule: which partition a tick asks for, its tags, the cron setting, and at most
one run per day on a real (temporary, local) Dagster instance."""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from dagster import (
    DagsterInstance,
    DagsterInvalidDefinitionError,
    DagsterRun,
    DagsterRunStatus,
    DefaultScheduleStatus,
    SkipReason,
    build_schedule_context,
    instance_for_test,
)

from itresume_pipeline import defs
from itresume_pipeline.jobs import DAILY_JOB_NAME, RANGE_END_TAG, RANGE_START_TAG, range_tags
from itresume_pipeline.schedules import (
    DEFAULT_CRON,
    MAX_RETRIES_TAG,
    SCHEDULE_NAME,
    build_daily_schedule,
    partition_for_tick,
)

MOSCOW = timezone(timedelta(hours=3))


@pytest.fixture(scope="module")
def shared_instance() -> Iterator[DagsterInstance]:
    """For ticks that find no run: one instance, since a temp instance takes a while to make."""
    with instance_for_test() as instance:
        yield instance


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as fresh:
        yield fresh


def tick(scheduled: datetime, instance: DagsterInstance):
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    context = build_schedule_context(
        instance=instance,
        scheduled_execution_time=scheduled,
        repository_def=defs.get_repository_def(),
    )
    return schedule.evaluate_tick(context)


def add_run(instance: DagsterInstance, day: str, status: DagsterRunStatus, job: str = "") -> str:
    """A run of the lookback range ending on `day` as the instance stores it, in `status`."""
    run_id = str(uuid.uuid4())
    instance.add_run(
        DagsterRun(
            job_name=job or DAILY_JOB_NAME,
            run_id=run_id,
            status=status,
            tags=range_tags("2000-01-01", day),
        )
    )
    return run_id


def last_day(request) -> str:
    return request.tags[RANGE_END_TAG]


def test_a_tick_requests_the_lookback_days_ending_yesterday_with_retries(
    shared_instance: DagsterInstance,
):
    result = tick(datetime(2024, 10, 9, 1, 0, tzinfo=UTC), shared_instance)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.partition_key is None  # one run over a range of partitions
    assert (request.tags[RANGE_START_TAG], last_day(request)) == ("2024-10-06", "2024-10-08")
    assert request.run_key == "2024-10-08"
    assert request.tags[MAX_RETRIES_TAG] == "2"


@pytest.mark.parametrize(
    ("lookback", "start", "first"),
    [
        ("1", "2023-04-01", "2024-10-08"),
        ("10", "2023-04-01", "2024-09-29"),
        ("30", "2024-10-01", "2024-10-01"),
    ],
)
def test_the_lookback_comes_from_the_environment_and_stops_at_the_first_partition(
    shared_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch, lookback, start, first
):
    monkeypatch.setenv("ITRESUME_LOOKBACK_DAYS", lookback)
    monkeypatch.setenv("ITRESUME_START_DATE", start)
    (request,) = tick(datetime(2024, 10, 9, 1, 0, tzinfo=UTC), shared_instance).run_requests
    assert (request.tags[RANGE_START_TAG], last_day(request)) == (first, "2024-10-08")


@pytest.mark.parametrize("lookback", ["0", "three", "400"])
def test_a_bad_lookback_names_the_variable(
    shared_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch, lookback: str
):
    monkeypatch.setenv("ITRESUME_LOOKBACK_DAYS", lookback)
    with pytest.raises(Exception, match="evaluation of schedule") as raised:
        tick(datetime(2024, 10, 9, 1, 0, tzinfo=UTC), shared_instance)
    assert "ITRESUME_LOOKBACK_DAYS" in str(raised.value.__cause__)


@pytest.mark.parametrize(
    ("scheduled", "partition"),
    [
        (datetime(2024, 10, 9, 0, 0, tzinfo=UTC), "2024-10-08"),
        (datetime(2024, 10, 9, 23, 59, tzinfo=UTC), "2024-10-08"),
        (datetime(2024, 3, 1, 1, 0, tzinfo=UTC), "2024-02-29"),  # leap day
        (datetime(2025, 1, 1, 1, 0, tzinfo=UTC), "2024-12-31"),
        # the day is the UTC day, whatever zone the time comes in
        (datetime(2024, 10, 9, 2, 30, tzinfo=MOSCOW), "2024-10-07"),
        (datetime(2024, 10, 9, 3, 0, tzinfo=MOSCOW), "2024-10-08"),
    ],
)
def test_partition_is_the_utc_day_before_the_tick(
    shared_instance: DagsterInstance, scheduled: datetime, partition: str
):
    assert partition_for_tick(scheduled) == partition
    assert last_day(tick(scheduled, shared_instance).run_requests[0]) == partition


def test_the_one_schedule_is_on_from_the_start_and_runs_the_daily_job():
    """A fresh deployment loads yesterday without anyone switching the schedule on."""
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    assert schedule.job_name == DAILY_JOB_NAME
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert [s.name for s in defs.get_repository_def().schedule_defs] == [SCHEDULE_NAME]


def test_cron_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ITRESUME_SCHEDULE_CRON", "30 4 * * 1-5")
    assert build_daily_schedule().cron_schedule == "30 4 * * 1-5"
    monkeypatch.setenv("ITRESUME_SCHEDULE_CRON", "  ")
    assert build_daily_schedule().cron_schedule == DEFAULT_CRON
    assert build_daily_schedule("15 2 * * *").cron_schedule == "15 2 * * *"


def test_an_hourly_cron_still_asks_for_yesterday(shared_instance: DagsterInstance):
    schedule = build_daily_schedule("0 * * * *")
    context = build_schedule_context(
        instance=shared_instance,
        scheduled_execution_time=datetime(2024, 10, 9, 17, 0, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    request = schedule.evaluate_tick(context).run_requests[0]
    assert (last_day(request), request.run_key) == ("2024-10-08", "2024-10-08")


@pytest.mark.parametrize(
    "status",
    [
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.SUCCESS,
    ],
)
def test_a_day_with_a_live_or_successful_run_is_skipped(
    instance: DagsterInstance, status: DagsterRunStatus
):
    existing = add_run(instance, "2024-10-08", status)
    for minute in range(3):  # a cron firing every minute: three ticks, no new run
        result = tick(datetime(2024, 10, 9, 1, minute, tzinfo=UTC), instance)
        assert result.run_requests == []
        assert existing in (result.skip_message or "")
        assert status.value in (result.skip_message or "")


def test_a_failed_day_is_tried_again_once_and_other_runs_do_not_block_it(
    instance: DagsterInstance,
):
    add_run(instance, "2024-10-08", DagsterRunStatus.FAILURE)
    add_run(instance, "2024-10-08", DagsterRunStatus.CANCELED)
    add_run(instance, "2024-10-07", DagsterRunStatus.SUCCESS)  # another day
    add_run(instance, "2024-10-08", DagsterRunStatus.STARTED, job="some_other_job")
    (request,) = tick(datetime(2024, 10, 9, 1, 0, tzinfo=UTC), instance).run_requests
    assert last_day(request) == "2024-10-08"
    retry = add_run(instance, "2024-10-08", DagsterRunStatus.STARTED)  # the daemon launched it
    again = tick(datetime(2024, 10, 9, 1, 1, tzinfo=UTC), instance)
    assert again.run_requests == [] and retry in (again.skip_message or "")


def test_the_skip_reason_comes_from_the_schedule_function(instance: DagsterInstance):
    existing = add_run(instance, "2024-10-08", DagsterRunStatus.STARTED)
    schedule = build_daily_schedule("* * * * *")
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2024, 10, 9, 1, 5, tzinfo=UTC)
    )
    reason = schedule(context)
    assert isinstance(reason, SkipReason) and existing in (reason.skip_message or "")


def test_a_bad_cron_names_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ITRESUME_SCHEDULE_CRON", "every day at one")
    with pytest.raises(DagsterInvalidDefinitionError, match="ITRESUME_SCHEDULE_CRON"):
        build_daily_schedule()


@pytest.mark.processes
def test_the_code_location_reads_the_cron_when_it_loads():
    """What the daemon sees: a fresh interpreter that imports the definitions."""
    env = {**os.environ, "ITRESUME_SCHEDULE_CRON": "45 3 * * *"}
    code = (
        "from itresume_pipeline.definitions import defs\n"
        "print(defs.resolve_schedule_def('itresume_daily_schedule').cron_schedule)\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "45 3 * * *"
