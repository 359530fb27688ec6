"""sheets_report: the day's metrics row in the Google Sheet (or the flagged local CSV sheet)."""

import time
from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from itresume_pipeline.assets.common import (
    DAILY_ASSET,
    DATABASE_RETRY_POLICY,
    interruption_ends_the_run,
)
from itresume_pipeline.assets.metrics import METRIC_COLUMNS, daily_metrics, fetch_daily_metrics
from itresume_pipeline.partitions import (
    days_in_window,
    describe_days,
)
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline.resources.sheets import SheetsLayoutError, SheetsResource

CHECK_NAME = "sheet_matches_daily_metrics"


@asset(
    **DAILY_ASSET,
    kinds={"googlesheets"},
    deps=[daily_metrics],
    check_specs=[
        AssetCheckSpec(
            CHECK_NAME,
            asset="sheets_report",
            description="The sheet's rows for these days equal daily_metrics in PostgreSQL.",
        )
    ],
    retry_policy=DATABASE_RETRY_POLICY,
    description="One row per day in the report sheet, upserted in date order, batched writes.",
)
def sheets_report(
    context: AssetExecutionContext, warehouse: PostgresResource, sheets: SheetsResource
) -> Iterator[AssetCheckResult | MaterializeResult]:
    with interruption_ends_the_run("sheets_report"):
        days = days_in_window(context.partition_time_window)
        context.log.info(f"sheet started: {describe_days(days)} -> {sheets.describe()}")
        began = time.perf_counter()
        rows = fetch_daily_metrics(warehouse, days[0], days[-1])
        missing = sorted({d.isoformat() for d in days} - {row["date"] for row in rows})
        if missing:
            raise Failure(
                description=f"daily_metrics has no row for {missing[:5]}: "
                "materialize daily_metrics first",
                allow_retries=False,
            )
        try:
            result = sheets.upsert_rows(rows)
        except SheetsLayoutError as exc:
            yield _unreadable_sheet(exc)
            raise Failure(description=str(exc), allow_retries=False) from exc
        seconds = time.perf_counter() - began
        if result.mode == "local-csv":
            context.log.warning(
                f"the report is a LOCAL CSV file, not a Google Sheet: {result.url}. Set "
                "ITRESUME_SHEETS_SPREADSHEET_ID and ITRESUME_SHEETS_CREDENTIALS (and "
                "ITRESUME_SHEETS_BACKEND=google, or leave it unset) to publish it."
            )
        context.log.info(
            f"sheet finished: {len(rows)} rows, {result.write_calls} write calls in {seconds:.2f} s"
        )
        try:
            in_sheet = sheets.read_rows()
        except SheetsLayoutError as exc:  # a person broke the header between our write and read
            yield _unreadable_sheet(exc)
            raise Failure(description=str(exc), allow_retries=False) from exc
        mismatches = [
            {"date": row["date"], "sheet": in_sheet.get(row["date"]), "daily_metrics": row}
            for row in rows
            if not in_sheet.get(row["date"])
            or any(in_sheet[row["date"]].get(c) != row[c] for c in METRIC_COLUMNS)
        ]
        metadata: dict[str, object] = {
            "sheet_url": MetadataValue.url(result.url)
            if result.url.startswith("http")
            else MetadataValue.path(result.url.removeprefix("file://")),
            "sheet_mode": MetadataValue.text(result.mode),
            "local_csv_not_google": MetadataValue.bool(result.mode == "local-csv"),
            "worksheet": MetadataValue.text(result.worksheet),
            "write_calls": MetadataValue.int(result.write_calls),
            "rows": MetadataValue.json(dict(sorted(result.row_numbers.items()))),
            "values": MetadataValue.json(
                {d: result.values[d] for d in sorted(result.values)[-31:]}
            ),
            "duration_s": MetadataValue.float(round(seconds, 3)),
        }
        yield MaterializeResult(
            metadata=metadata,
            check_results=[
                AssetCheckResult(
                    check_name=CHECK_NAME,
                    passed=not mismatches,
                    severity=AssetCheckSeverity.ERROR,
                    metadata={"mismatches": MetadataValue.json(mismatches[:20])},
                )
            ],
        )


def _unreadable_sheet(exc: SheetsLayoutError) -> AssetCheckResult:
    """A sheet whose table cannot be found cannot match daily_metrics: the check fails with the
    reason, instead of being skipped with the failed step. No retry fixes a person's edit."""
    return AssetCheckResult(
        check_name=CHECK_NAME,
        passed=False,
        severity=AssetCheckSeverity.ERROR,
        metadata={"error": MetadataValue.text(str(exc))},
    )
