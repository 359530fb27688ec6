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

# Steps that use PostgreSQL: a dropped connection deserves two more tries (each write is one
# transaction). HTTP clients retry their own transients, then fail without retries.
DATABASE_RETRY_POLICY = RetryPolicy(
    max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


@contextmanager
def interruption_ends_the_run(step: str) -> Iterator[None]:
    """A terminated run stops: Dagster would retry an interrupted step under its RetryPolicy."""
    try:
        yield
    except DagsterExecutionInterruptedError:
        raise Failure(
            description=f"{step} was interrupted (the run was terminated); nothing it was "
            "writing was committed",
            allow_retries=False,
        ) from None
