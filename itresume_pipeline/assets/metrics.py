"""daily_metrics: one row per day, aggregated in SQL and upserted on `date`."""

import time
from datetime import date

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from itresume_pipeline.assets.common import (
    DAILY_ASSET,
    DATABASE_RETRY_POLICY,
    interruption_ends_the_run,
)
from itresume_pipeline.assets.ingestion import postgres_attempts
from itresume_pipeline.partitions import (
    days_in_window,
    describe_days,
)
from itresume_pipeline.resources.postgres import PostgresResource

METRIC_COLUMNS = ("attempts", "successful_attempts", "unique_users")


@asset(
    **DAILY_ASSET,
    kinds={"sql", "postgres"},
    deps=[postgres_attempts],
    check_specs=[
        AssetCheckSpec(
            "metrics_match_recount",
            asset="daily_metrics",
            description="Stored daily_metrics equal a fresh recount from attempts.",
        )
    ],
    retry_policy=DATABASE_RETRY_POLICY,
    description="Per day: attempts, successful attempts (is_correct) and unique users.",
)
def daily_metrics(context: AssetExecutionContext, warehouse: PostgresResource) -> MaterializeResult:
    with interruption_ends_the_run("daily_metrics"):
        days = days_in_window(context.partition_time_window)
        context.log.info(f"metrics started: {describe_days(days)}")
        began = time.perf_counter()
        rows = upsert_daily_metrics(warehouse, days[0], days[-1])
        seconds = time.perf_counter() - began
        mismatches = recount_mismatches(warehouse, days[0], days[-1])
        context.log.info(
            f"metrics finished: {describe_days(days)}, {len(rows)} rows in {seconds:.2f} s"
        )
        metadata: dict[str, object] = {
            "days": MetadataValue.int(len(rows)),
            "duration_s": MetadataValue.float(round(seconds, 3)),
            "preview": MetadataValue.md(metrics_markdown(rows[-31:])),
        }
        for column in METRIC_COLUMNS:
            # One day: the day's value, which the UI plots across partitions. A range: the total.
            metadata[column] = MetadataValue.int(sum(row[column] for row in rows))
        return MaterializeResult(
            metadata=metadata,
            check_results=[
                AssetCheckResult(
                    check_name="metrics_match_recount",
                    passed=not mismatches,
                    severity=AssetCheckSeverity.ERROR,
                    metadata={"mismatched_days": MetadataValue.json(mismatches[:20])},
                )
            ],
        )


# A big day's estimate crosses jit_above_cost, and compiling the aggregate costs about 0.4 s,
# more than the aggregate itself saves (docs/performance.md, "Metrics").
_NO_JIT = "SET LOCAL jit = off"


def upsert_daily_metrics(warehouse: PostgresResource, first: date, last: date) -> list[dict]:
    """Recompute and upsert [first, last]; empty days get a row of zeros, not a gap."""
    with warehouse.connect() as conn, conn.transaction():
        conn.execute(_NO_JIT)
        cursor = conn.execute(
            warehouse.query("daily_metrics_upsert.sql"),
            {"start": first, "end": date.fromordinal(last.toordinal() + 1)},
        )
        rows = [
            {
                "date": day.isoformat(),
                "attempts": attempts,
                "successful_attempts": successful,
                "unique_users": users,
            }
            for day, attempts, successful, users in cursor.fetchall()
        ]
    return sorted(rows, key=lambda row: row["date"])


def fetch_daily_metrics(warehouse: PostgresResource, first: date, last: date) -> list[dict]:
    """Stored metrics rows of [first, last], ascending."""
    with warehouse.connect() as conn:
        cursor = conn.execute(
            warehouse.query("daily_metrics_select.sql"), {"start": first, "end": last}
        )
        return [
            {
                "date": day.isoformat(),
                "attempts": attempts,
                "successful_attempts": successful,
                "unique_users": users,
            }
            for day, attempts, successful, users in cursor.fetchall()
        ]


def recount_mismatches(warehouse: PostgresResource, first: date, last: date) -> list[dict]:
    with warehouse.connect() as conn, conn.transaction():
        conn.execute(_NO_JIT)
        cursor = conn.execute(
            warehouse.query("daily_metrics_recount.sql"),
            {"start": first, "end": date.fromordinal(last.toordinal() + 1)},
        )
        return [
            {"date": row[0], "recount": list(row[1:4]), "stored": list(row[4:7])}
            for row in cursor.fetchall()
        ]


def metrics_markdown(rows: list[dict]) -> str:
    lines = ["| date | attempts | successful_attempts | unique_users |", "|---|---:|---:|---:|"]
    lines += [
        f"| {r['date']} | {r['attempts']} | {r['successful_attempts']} | {r['unique_users']} |"
        for r in rows
    ]
    return "\n".join(lines)
