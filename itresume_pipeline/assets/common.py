"""What every asset of the pipeline shares: daily UTC partitions, one-run backfills, a group."""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Backoff, DagsterExecutionInterruptedError, Failure, Jitter, RetryPolicy

from itresume_pipeline.partitions import daily_partitions, single_run_backfill

GROUP = "itresume"

# Keyword arguments for `@asset`: one UTC day per partition, a range of days as one run.
DAILY_ASSET = {
    "partitions_def": daily_partitions,
    "backfill_policy": single_run_backfill,
    "group_name": GROUP,
}

# Steps that use PostgreSQL: a dropped connection or a restarted server deserves two more tries.
# Every write is one transaction per run, so a retry starts from the state before the failed
# attempt. The HTTP clients retry their own transients; once they give up, the step fails with
# `Failure(allow_retries=False)` (as on a bad setting), so this policy never multiplies them.
DATABASE_RETRY_POLICY = RetryPolicy(
    max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


@contextmanager
def interruption_ends_the_run(step: str) -> Iterator[None]:
    """A terminated run (the UI's Terminate, `dagster run terminate`, systemd's SIGTERM) stops.

    Dagster re-executes an interrupted step under its RetryPolicy, so one SIGTERM would only
    restart a step that has one. Turned into a Failure without retries, the interruption ends
    the run instead; the step's open transaction is rolled back with its connection.
    """
    try:
        yield
    except DagsterExecutionInterruptedError:
        raise Failure(
            description=f"{step} was interrupted (the run was terminated); nothing it was "
            "writing was committed",
            allow_retries=False,
        ) from None
