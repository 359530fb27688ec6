"""sheets_report: the day's metrics row in the Google Sheet (or the flagged local CSV sheet)."""

import time
from collections.abc import Iterator

import dagster as dg

from itresume_pipeline.assets import common
from itresume_pipeline.assets.metrics import METRIC_COLUMNS, daily_metrics, fetch_daily_metrics
from itresume_pipeline.partitions import days_in_window, describe_days
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline.resources.sheets import SheetsLayoutError, SheetsResource

CHECK_NAME = "sheet_matches_daily_metrics"


@dg.asset(
    **common.DAILY_ASSET,
    kinds={"googlesheets"},
    deps=[daily_metrics],
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset="sheets_report",
            description="The sheet's rows for these days equal daily_metrics in PostgreSQL.",
        )
    ],
    retry_policy=common.DATABASE_RETRY_POLICY,
    description="One row per day in the report sheet, upserted in date order, batched writes.",
)
def sheets_report(
    context: dg.AssetExecutionContext, warehouse: PostgresResource, sheets: SheetsResource
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    with common.interruption_ends_the_run("sheets_report"):
        days = days_in_window(context.partition_time_window)
        context.log.info(f"sheet started: {describe_days(days)} -> {sheets.describe()}")
        began = time.perf_counter()
        rows = fetch_daily_metrics(warehouse, days[0], days[-1])
        missing = sorted({d.isoformat() for d in days} - {row["date"] for row in rows})
        if missing:
            raise dg.Failure(
                f"daily_metrics has no row for {missing[:5]}: materialize daily_metrics first",
                allow_retries=False,
            )
        try:
            result = sheets.upsert_rows(rows)
            seconds = time.perf_counter() - began
            in_sheet = sheets.read_rows()  # also refuses a header a person broke since the write
        except SheetsLayoutError as exc:
            # A table that cannot be found cannot match: fail the check, not skip it with the step.
            yield dg.AssetCheckResult(
                check_name=CHECK_NAME, passed=False, metadata={"error": str(exc)}
            )
            raise
        context.log.info(
            f"sheet finished: {len(rows)} rows, {result.write_calls} write calls in {seconds:.2f} s"
        )
        mismatches = [
            {"date": row["date"], "sheet": in_sheet.get(row["date"]), "daily_metrics": row}
            for row in rows
            if any(in_sheet.get(row["date"], {}).get(c) != row[c] for c in METRIC_COLUMNS)
        ]
        local = result.mode == "local-csv"
        link = dg.MetadataValue.path if local else dg.MetadataValue.url
        yield dg.MaterializeResult(
            metadata={
                "sheet_url": link(result.url.removeprefix("file://")),
                "sheet_mode": result.mode,
                "local_csv_not_google": local,
                "worksheet": sheets.worksheet,
                "write_calls": result.write_calls,
                "rows": result.row_numbers,
                "values": dict(list(result.values.items())[-31:]),
                "duration_s": round(seconds, 3),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=CHECK_NAME,
                    passed=not mismatches,
                    metadata={"mismatches": mismatches[:20]},
                )
            ],
        )
