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
from itresume_pipeline.partitions import days_in_window, describe_days
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
        table = [("date", *METRIC_COLUMNS), ("---", "---:", "---:", "---:")]
        table += [row.values() for row in rows[-31:]]
        preview = "\n".join(f"| {' | '.join(map(str, r))} |" for r in table)
        return MaterializeResult(
            metadata={
                "days": MetadataValue.int(len(rows)),
                "duration_s": MetadataValue.float(round(seconds, 3)),
                "preview": MetadataValue.md(preview),
                # One day: the day's value, which the UI plots across partitions. A range: the sum.
                **{c: MetadataValue.int(sum(row[c] for row in rows)) for c in METRIC_COLUMNS},
            },
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


def _metric_row(day: date, *values: int) -> dict:
    return {"date": day.isoformat(), **dict(zip(METRIC_COLUMNS, values, strict=True))}


def upsert_daily_metrics(warehouse: PostgresResource, first: date, last: date) -> list[dict]:
    """Recompute and upsert [first, last], a day's partition at a time; an empty day gets zeros."""
    with warehouse.connect() as conn, conn.transaction():
        conn.execute(_NO_JIT)
        return [
            _metric_row(
                *conn.execute(warehouse.query("daily_metrics_upsert.sql"), {"day": day}).fetchone()
            )
            for day in _days(first, last)
        ]


def fetch_daily_metrics(warehouse: PostgresResource, first: date, last: date) -> list[dict]:
    """Stored metrics rows of [first, last], ascending."""
    with warehouse.connect() as conn:
        cursor = conn.execute(
            warehouse.query("daily_metrics_select.sql"), {"start": first, "end": last}
        )
        return [_metric_row(*row) for row in cursor.fetchall()]


def recount_mismatches(warehouse: PostgresResource, first: date, last: date) -> list[dict]:
    """Days of [first, last] whose stored metrics differ from a recount, one day at a time."""
    mismatches = []
    with warehouse.connect() as conn, conn.transaction():
        conn.execute(_NO_JIT)
        for day in _days(first, last):
            query = warehouse.query("daily_metrics_recount.sql")
            for row in conn.execute(query, {"day": day}):
                mismatches.append({"date": str(day), "recount": row[:3], "stored": row[3:]})
    return mismatches


def _days(first: date, last: date) -> list[date]:
    return [date.fromordinal(n) for n in range(first.toordinal(), last.toordinal() + 1)]
