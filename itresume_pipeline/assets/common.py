"""What every asset of the pipeline shares: daily UTC partitions, one-run backfills, a group."""

from dagster import Backoff, Jitter, RetryPolicy

from itresume_pipeline.partitions import daily_partitions, single_run_backfill

GROUP = "itresume"

# Keyword arguments for `@asset`: one UTC day per partition, a range of days as one run.
DAILY_ASSET = {
    "partitions_def": daily_partitions,
    "backfill_policy": single_run_backfill,
    "group_name": GROUP,
}

# PostgreSQL steps: a dropped connection or a restarted server deserves two more tries. Every
# write is one transaction per run, so a retry starts from the state before the failed attempt.
DATABASE_RETRY_POLICY = RetryPolicy(
    max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
