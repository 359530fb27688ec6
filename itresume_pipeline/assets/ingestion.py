"""raw_attempts (the verbatim payload) and postgres_attempts (validated rows in PostgreSQL)."""

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, suppress
from datetime import date
from pathlib import Path

import psycopg
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from itresume_pipeline.assets.common import (
    DAILY_ASSET,
    DATABASE_RETRY_POLICY,
    interruption_ends_the_run,
)
from itresume_pipeline.landing import (
    LOADED_SUFFIX,
    LandingError,
    LandingZone,
    discard,
    landing_errors,
    publish,
)
from itresume_pipeline.loading import DayLoad, ShrinkRefused, replace_days
from itresume_pipeline.partitions import day_bounds, days_in_window, describe_days
from itresume_pipeline.payload import count_records
from itresume_pipeline.resources.api import ApiError, Download, ItResumeApiResource
from itresume_pipeline.resources.postgres import PostgresResource, WarehouseError

REJECT_RATE_THRESHOLD = 0.05
ALLOW_SHRINK_TAG = "itresume/allow_shrink"
COUNTED = ("received", "loaded", "rejected", "duplicates", "out_of_window", "replaced")
_TAG_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@asset(
    **DAILY_ASSET,
    kinds={"python", "file"},
    description="The API's payload for each UTC day, verbatim (gzip), kept for replay.",
)
def raw_attempts(
    context: AssetExecutionContext, itresume_api: ItResumeApiResource, landing: LandingZone
) -> MaterializeResult:
    days = days_in_window(context.partition_time_window)
    _log_swept(context, landing.sweep(days))
    context.log.info(f"download started: {describe_days(days)}")
    downloads = download_days(itresume_api, landing, days)
    try:
        for day, download in downloads.items():
            landing.publish_download(day, download.path)
    except LandingError as error:  # a full disk: it names the path and the day
        raise Failure(description=f"raw_attempts: {error}", allow_retries=False) from None
    finally:  # a publish that failed leaves no temp behind (published ones are gone already)
        for download in downloads.values():
            discard(download.path)
    total_records = sum(d.records for d in downloads.values())
    total_bytes = sum(d.bytes for d in downloads.values())
    seconds = max(d.seconds for d in downloads.values()) if downloads else 0.0
    context.log.info(
        f"download finished: {describe_days(days)}, {total_records} records, "
        f"{total_bytes} bytes in {seconds:.1f} s"
    )
    metadata: dict[str, object] = {
        "records": MetadataValue.int(total_records),
        "bytes": MetadataValue.int(total_bytes),
        "duration_s": MetadataValue.float(round(seconds, 3)),
        "days": MetadataValue.int(len(days)),
        "path": MetadataValue.path(str(landing.directory)),
        "sha256": MetadataValue.json({str(day): d.sha256 for day, d in downloads.items()}),
    }
    if len(days) == 1:
        metadata["request_url"] = MetadataValue.text(downloads[days[0]].url)
        metadata["attempts"] = MetadataValue.int(downloads[days[0]].attempts)
    return MaterializeResult(metadata=metadata)


def download_days(
    api: ItResumeApiResource, landing: LandingZone, days: list[date]
) -> dict[date, Download]:
    """Fetch every day into temp files, concurrently; publish nothing unless all succeeded.
    A failed day or SIGTERM sets one cancel event that stops every request within a second."""
    cancel = threading.Event()
    temps: dict[date, Path] = {}
    futures: dict[date, Future[Download]] = {}

    def fetch(day: date) -> Download:
        start, end = day_bounds(day)
        with landing_errors("write", temps[day]):  # the body is counted as it streams in
            return api.download(
                start, end, temps[day], validate_stream=count_records, cancel=cancel
            )

    workers = max(1, min(api.max_concurrent_requests, len(days)))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="itresume-fetch")
    try:
        try:
            for day in days:
                temps[day] = landing.download_temp(day)
            futures.update((day, pool.submit(fetch, day)) for day in days)
            results = {}
            for day, future in futures.items():
                results[day] = future.result()
            return results
        except (ApiError, LandingError) as error:  # the API client retried what it could
            raise Failure(description=f"raw_attempts {day}: {error}", allow_retries=False) from None
    except BaseException:
        cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        wait(futures.values(), timeout=2)  # cancelled reads end in well under that: temps close
        for temp in temps.values():
            with suppress(OSError):  # the error being raised matters more than a leftover temp
                discard(temp)
        raise
    finally:
        pool.shutdown(wait=False)


def _log_swept(context: AssetExecutionContext, removed: list[Path]) -> None:
    if removed:
        context.log.info(f"removed {len(removed)} stale temp files: {[p.name for p in removed]}")


ATTEMPTS_CHECKS = [
    AssetCheckSpec(name, asset="postgres_attempts", description=description)
    for name, description in (
        ("created_at_inside_partition", "Every row loaded by this run lies inside its day."),
        ("user_id_not_null", "No row of the partition has a null or empty user_id."),
        (
            "reject_rate_below_threshold",
            f"At most {REJECT_RATE_THRESHOLD:.0%} of received records were rejected.",
        ),
    )
]


class LoadConfig(Config):
    """Run config of postgres_attempts (`ops: {postgres_attempts: {config: ...}}`)."""

    allow_shrink: bool = Field(
        default=False,
        description="Load a payload even if it removes more than half of a day's rows (an "
        f"empty one too). The run tag {ALLOW_SHRINK_TAG}=true does the same.",
    )
    reload_unchanged: bool = Field(
        default=False,
        description="Reload a day even if its payload has the sha256 it was last loaded from.",
    )


@asset(
    **DAILY_ASSET,
    kinds={"python", "postgres"},
    deps=[raw_attempts],
    check_specs=ATTEMPTS_CHECKS,
    retry_policy=DATABASE_RETRY_POLICY,
    description="Parsed, validated attempts in PostgreSQL, one partition per day; bad records "
    "quarantined with a reason. A day whose payload is unchanged is not reloaded. A payload that "
    "would remove more than half of a day's rows is refused unless forced (config allow_shrink, "
    f"or the run tag {ALLOW_SHRINK_TAG}=true).",
)
def postgres_attempts(
    context: AssetExecutionContext,
    config: LoadConfig,
    warehouse: PostgresResource,
    landing: LandingZone,
) -> MaterializeResult:
    with interruption_ends_the_run("postgres_attempts"):
        days = days_in_window(context.partition_time_window)
        missing = [str(p) for p in map(landing.payload_path, days) if not p.exists()]
        if missing:
            message = f"landing files missing, materialize raw_attempts first: {missing[:5]}"
            raise Failure(description=message, allow_retries=False)
        tag = context.run.tags.get(ALLOW_SHRINK_TAG, "").strip().lower()
        if tag and tag not in _TAG_VALUES:
            message = f"run tag {ALLOW_SHRINK_TAG}={tag!r} is neither true nor false"
            raise Failure(description=message, allow_retries=False)
        allow_shrink = config.allow_shrink or _TAG_VALUES.get(tag, False)
        _log_swept(context, landing.sweep(days, loaded=True))
        context.log.info(f"parse and load started: {describe_days(days)}")
        loads, seconds = _load_and_keep(context, warehouse, landing, days, config, allow_shrink)
        totals = DayLoad.total(loads)
        unchanged = [load.day.isoformat() for load in loads if load.unchanged]
        if unchanged:
            context.log.info(f"not reloaded, payload unchanged since its last load: {unchanged}")
        rate = totals.loaded / seconds if seconds > 0 else 0.0
        context.log.info(
            f"parse and load finished: {describe_days(days)}: received {totals.received}, "
            f"loaded {totals.loaded}, rejected {totals.rejected}, duplicates {totals.duplicates}, "
            f"out of window {totals.out_of_window} in {seconds:.2f} s ({rate:,.0f} rows/s)"
        )
        if totals.rejected:
            context.log.warning(
                f"{totals.rejected} records quarantined in attempts_rejected: "
                f"{dict(totals.reject_reasons)}"
            )
        checks = attempt_checks(warehouse, days, context.run_id, totals)
        return MaterializeResult(
            metadata={
                **{name: MetadataValue.int(getattr(totals, name)) for name in COUNTED},
                "reloaded_days": MetadataValue.int(len(loads) - len(unchanged)),
                "unchanged_days": MetadataValue.json(unchanged),
                "duration_s": MetadataValue.float(round(seconds, 3)),
                "rows_per_second": MetadataValue.float(round(rate, 1)),
                "reject_reasons": MetadataValue.json(totals.reject_reasons),
                "table": MetadataValue.text(f"{warehouse.location}.attempts"),
            },
            check_results=checks,
        )


def _load_and_keep(
    context: AssetExecutionContext,
    warehouse: PostgresResource,
    landing: LandingZone,
    days: list[date],
    config: LoadConfig,
    allow_shrink: bool,
) -> tuple[list[DayLoad], float]:
    """Load snapshots of the landing files (a download meanwhile changes neither) and, once
    committed, keep each as the day's loaded copy."""
    try:
        with ExitStack() as claims:
            snapshots = {day: claims.enter_context(landing.snapshot(day)) for day in days}
            loaded = replace_days(
                warehouse,
                snapshots,
                run_id=context.run_id,
                refuse_shrink=not allow_shrink,
                skip_unchanged=not config.reload_unchanged,
            )
            for day, snapshot in snapshots.items():
                publish(snapshot, landing.loaded_path(day))
    except LandingError as error:
        raise Failure(f"postgres_attempts: {error}", allow_retries=False) from None
    except ShrinkRefused as refused:
        days = "; ".join(
            f"{d.day}: {d.replaced} rows loaded now, the new payload would load {d.loaded}"
            for d in refused.args[0]
        )
        message = (
            "postgres_attempts refused payloads that would remove more than half of a day's rows "
            f"({days}); nothing was changed, and the payload each day was loaded from is kept as "
            f"<day>{LOADED_SUFFIX} in {landing.directory}. "
            "If the smaller payload is right, force it with the run config "
            '{"ops": {"postgres_attempts": {"config": {"allow_shrink": true}}}} '
            f"or the run tag {ALLOW_SHRINK_TAG}=true."
        )
        raise Failure(description=message, allow_retries=False) from None
    except psycopg.OperationalError as error:
        raise WarehouseError(f"PostgreSQL connection failed during the load: {error}") from None
    return loaded


def attempt_checks(
    warehouse: PostgresResource, days: list[date], run_id: str, totals: DayLoad
) -> list[AssetCheckResult]:
    """Recheck what landed in the table, a day's partition at a time: rows outside the days are
    the rows the server says COPY wrote, less this run's rows found inside them."""
    inside = null_users = 0
    with warehouse.connect() as conn:
        for day in days:
            day_inside, day_null_users = conn.execute(
                warehouse.query("attempts_day_check.sql"), {"day": day, "run_id": run_id}
            ).fetchone()
            inside, null_users = inside + day_inside, null_users + day_null_users
    outside = totals.copied - inside
    reject_rate = totals.rejected / totals.received if totals.received else 0.0
    error, warn = AssetCheckSeverity.ERROR, AssetCheckSeverity.WARN
    rate_metadata = {
        "reject_rate": MetadataValue.float(round(reject_rate, 6)),
        "threshold": MetadataValue.float(REJECT_RATE_THRESHOLD),
        "rejected": totals.rejected,
        "received": totals.received,
    }
    return [
        AssetCheckResult(check_name=name, passed=passed, severity=severity, metadata=metadata)
        for name, passed, severity, metadata in (
            ("created_at_inside_partition", outside == 0, error, {"rows_outside": outside}),
            ("user_id_not_null", null_users == 0, error, {"null_user_ids": null_users}),
            (
                "reject_rate_below_threshold",
                reject_rate <= REJECT_RATE_THRESHOLD,
                warn,
                rate_metadata,
            ),
        )
    ]
