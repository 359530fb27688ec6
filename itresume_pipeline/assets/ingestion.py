"""raw_attempts (the verbatim payload) and postgres_attempts (validated rows in PostgreSQL)."""

import logging
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
from itresume_pipeline.landing import LOADED_SUFFIX, LandingError, LandingZone, discard
from itresume_pipeline.loading import DayLoad, ShrinkRefused, replace_days
from itresume_pipeline.partitions import (
    day_bounds,
    days_in_window,
    describe_days,
)
from itresume_pipeline.payload import count_records
from itresume_pipeline.resources.api import ApiError, Download, ItResumeApiResource
from itresume_pipeline.resources.postgres import PostgresResource, WarehouseError

logger = logging.getLogger(__name__)

REJECT_RATE_THRESHOLD = 0.05
ALLOW_SHRINK_TAG = "itresume/allow_shrink"
_TAG_TRUE, _TAG_FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


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
        raise Failure(description=f"raw_attempts: {error.strerror}", allow_retries=False) from None
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
    }
    if len(days) == 1:
        only = downloads[days[0]]
        metadata["sha256"] = MetadataValue.text(only.sha256)
        metadata["request_url"] = MetadataValue.text(only.url)
        metadata["attempts"] = MetadataValue.int(only.attempts)
    else:
        metadata["files"] = MetadataValue.md(_downloads_table(downloads))
    return MaterializeResult(metadata=metadata)


def download_days(
    api: ItResumeApiResource, landing: LandingZone, days: list[date]
) -> dict[date, Download]:
    """Fetch every day into temp files, concurrently; publish nothing unless all succeeded.

    One cancel event is shared by every download. It is set when this thread stops waiting for
    any reason: a day that failed, or an interruption (Dagster turns SIGTERM into an exception
    here). The requests in flight then stop within a second, and the pool is left without
    waiting for reads that may hang: one SIGTERM stops the run, and no temp is published.
    """
    cancel = threading.Event()
    temps: dict[date, Path] = {}
    futures: dict[date, Future[Download]] = {}

    def write_failure(day: date, path: Path, error: OSError) -> Failure:
        """A full disk or a broken folder: no retry fixes it, and the operator needs the path."""
        if isinstance(error, LandingError):  # already names the path and the day
            return Failure(description=f"raw_attempts {day}: {error.strerror}", allow_retries=False)
        reason = error.strerror or str(error)
        return Failure(
            description=f"raw_attempts {day}: cannot write {path}: {reason}", allow_retries=False
        )

    def fetch(day: date) -> Download:
        start, end = day_bounds(day)
        # The body is checked (a complete JSON array) and counted as it streams in, while
        # another thread compresses it: no second pass over the landing file.
        try:
            return api.download(
                start, end, temps[day], validate_stream=count_records, cancel=cancel
            )
        except OSError as error:
            raise write_failure(day, temps[day], error) from None

    workers = max(1, min(api.max_concurrent_requests, len(days)))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="itresume-fetch")
    try:
        for day in days:
            try:
                temps[day] = landing.download_temp(day)
            except OSError as error:
                raise write_failure(day, landing.payload_path(day), error) from None
        futures.update((day, pool.submit(fetch, day)) for day in days)
        results = {}
        for day, future in futures.items():
            try:
                results[day] = future.result()
            except ApiError as error:
                raise Failure(
                    description=f"raw_attempts {day.isoformat()}: {error}",
                    allow_retries=False,
                ) from None
        return results
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
    """Say which temps of killed runs were removed (none are held by a live one)."""
    if removed:
        context.log.info(f"removed {len(removed)} stale temp files: {[p.name for p in removed]}")


def _downloads_table(downloads: dict[date, Download]) -> str:
    lines = ["| day | records | bytes | attempts | sha256 |", "|---|---:|---:|---:|---|"]
    for day, d in sorted(downloads.items()):
        lines.append(f"| {day} | {d.records} | {d.bytes} | {d.attempts} | `{d.sha256[:16]}…` |")
    return "\n".join(lines)


ATTEMPTS_CHECKS = [
    AssetCheckSpec(
        "created_at_inside_partition",
        asset="postgres_attempts",
        description="Every row loaded by this run lies inside its partition's day.",
    ),
    AssetCheckSpec(
        "user_id_not_null",
        asset="postgres_attempts",
        description="No row of the partition has a null or empty user_id.",
    ),
    AssetCheckSpec(
        "reject_rate_below_threshold",
        asset="postgres_attempts",
        description=f"At most {REJECT_RATE_THRESHOLD:.0%} of received records were rejected.",
    ),
]


class LoadConfig(Config):
    """Run config of postgres_attempts (`ops: {postgres_attempts: {config: ...}}`)."""

    allow_shrink: bool = Field(
        default=False,
        description="Load a payload even if it removes more than half of a day's rows (an "
        f"empty one too). The run tag {ALLOW_SHRINK_TAG}=true does the same.",
    )


@asset(
    **DAILY_ASSET,
    kinds={"python", "postgres"},
    deps=[raw_attempts],
    check_specs=ATTEMPTS_CHECKS,
    retry_policy=DATABASE_RETRY_POLICY,
    description="Parsed, validated attempts in PostgreSQL; bad records quarantined with a reason. "
    "A payload that would remove more than half of a day's rows is refused unless forced "
    f"(config allow_shrink, or the run tag {ALLOW_SHRINK_TAG}=true).",
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
            raise Failure(
                description=f"landing files missing, materialize raw_attempts first: {missing[:5]}",
                allow_retries=False,
            )
        allow_shrink = config.allow_shrink or _tag_allows_shrink(context)
        _log_swept(context, landing.sweep(days, loaded=True))
        context.log.info(f"parse and load started: {describe_days(days)}")
        loads, seconds = _load_and_keep(
            context, warehouse, landing, days, allow_shrink=allow_shrink
        )
        totals = DayLoad.total(loads)
        rate = totals.loaded / seconds if seconds > 0 else 0.0
        context.log.info(
            f"parse and load finished: {describe_days(days)}: received {totals.received}, "
            f"loaded {totals.loaded}, rejected {totals.rejected}, duplicates {totals.duplicates}, "
            f"out of window {totals.out_of_window} in {seconds:.2f} s ({rate:,.0f} rows/s)"
        )
        if totals.rejected:
            context.log.warning(
                f"{totals.rejected} records quarantined in attempts_rejected: "
                f"{totals.reject_reasons}"
            )
        checks = attempt_checks(warehouse, days, context.run_id, totals)
        return MaterializeResult(
            metadata={
                "received": MetadataValue.int(totals.received),
                "loaded": MetadataValue.int(totals.loaded),
                "rejected": MetadataValue.int(totals.rejected),
                "duplicates": MetadataValue.int(totals.duplicates),
                "out_of_window": MetadataValue.int(totals.out_of_window),
                "replaced": MetadataValue.int(totals.replaced),
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
    *,
    allow_shrink: bool,
) -> tuple[list[DayLoad], float]:
    """Load snapshots of the landing files, and once committed keep each as the day's loaded
    copy: a download that replaces a landing file meanwhile changes neither. A file system error
    (a full disk) names the path and the day and is not retried."""
    try:
        with ExitStack() as claims:
            snapshots = {day: claims.enter_context(landing.snapshot(day)) for day in days}
            loaded = _replace(
                context, warehouse, snapshots, allow_shrink=allow_shrink, kept_in=landing.directory
            )
            for day, snapshot in snapshots.items():
                landing.keep_loaded(day, snapshot)
    except LandingError as error:
        raise Failure(
            description=f"postgres_attempts: {error.strerror}", allow_retries=False
        ) from None
    return loaded


def _replace(
    context: AssetExecutionContext,
    warehouse: PostgresResource,
    payloads: dict[date, Path],
    *,
    allow_shrink: bool,
    kept_in: Path,
) -> tuple[list[DayLoad], float]:
    try:
        return replace_days(
            warehouse, payloads, run_id=context.run_id, refuse_shrink=not allow_shrink
        )
    except ShrinkRefused as refused:
        raise Failure(description=_shrink_message(refused, kept_in), allow_retries=False) from None
    except psycopg.OperationalError as error:
        raise WarehouseError(f"PostgreSQL connection failed during the load: {error}") from None


def _shrink_message(refused: ShrinkRefused, kept_in: Path) -> str:
    days = "; ".join(
        f"{load.day}: {load.replaced} rows loaded now, the new payload would load {load.loaded}"
        for load in refused.loads
    )
    return (
        "postgres_attempts refused payloads that would remove more than half of a day's rows "
        f"({days}); nothing was changed, and the payload each day was loaded from is kept as "
        f"<day>{LOADED_SUFFIX} in {kept_in}. "
        "If the smaller payload is right, force it with the run config "
        '{"ops": {"postgres_attempts": {"config": {"allow_shrink": true}}}} '
        f"or the run tag {ALLOW_SHRINK_TAG}=true."
    )


def _tag_allows_shrink(context: AssetExecutionContext) -> bool:
    """The run tag, so a backfill or a launch from the UI can force a shrink without config."""
    value = context.run.tags.get(ALLOW_SHRINK_TAG, "").strip().lower()
    if value in _TAG_TRUE + _TAG_FALSE:
        return value in _TAG_TRUE
    raise Failure(
        description=f"run tag {ALLOW_SHRINK_TAG}={value!r} is neither true nor false",
        allow_retries=False,
    )


def attempt_checks(
    warehouse: PostgresResource, days: list[date], run_id: str, totals: DayLoad
) -> list[AssetCheckResult]:
    """Recheck what landed in the table, not what the loader believes it wrote.

    One scan of the partitions' rows (by the created_at index), never of the whole table: the
    rows this run wrote outside its window are the rows the server says COPY wrote, less the
    rows of this run found inside the window.
    """
    window_start, window_end = day_bounds(days[0])[0], day_bounds(days[-1])[1]
    with warehouse.connect() as conn:
        inside, null_users = conn.execute(
            psycopg.sql.SQL(
                "SELECT count(*) FILTER (WHERE run_id = %s), "
                "count(*) FILTER (WHERE user_id IS NULL OR user_id = '') "
                "FROM {} WHERE created_at >= %s AND created_at < %s"
            ).format(warehouse.table("attempts")),
            (run_id, window_start, window_end),
        ).fetchone()
    outside = totals.copied - inside
    reject_rate = totals.rejected / totals.received if totals.received else 0.0
    return [
        AssetCheckResult(
            check_name="created_at_inside_partition",
            passed=outside == 0,
            severity=AssetCheckSeverity.ERROR,
            metadata={"rows_outside": outside},
        ),
        AssetCheckResult(
            check_name="user_id_not_null",
            passed=null_users == 0,
            severity=AssetCheckSeverity.ERROR,
            metadata={"null_user_ids": null_users},
        ),
        AssetCheckResult(
            check_name="reject_rate_below_threshold",
            passed=reject_rate <= REJECT_RATE_THRESHOLD,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "reject_rate": MetadataValue.float(round(reject_rate, 6)),
                "threshold": MetadataValue.float(REJECT_RATE_THRESHOLD),
                "rejected": totals.rejected,
                "received": totals.received,
            },
        ),
    ]
