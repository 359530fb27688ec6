"""The one job: every asset of the pipeline, for one day or a range of days in a single run."""

from dagster import AssetSelection, define_asset_job

from itresume_pipeline.assets.common import GROUP

DAILY_JOB_NAME = "itresume_daily"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# Every run calls the statistics API; the shipped dagster.yaml caps such runs on this tag.
API_CONCURRENCY_TAG = "itresume/api"

daily_job = define_asset_job(
    DAILY_JOB_NAME,
    selection=AssetSelection.groups(GROUP),
    description="Fetch, load, aggregate and report attempts for the selected UTC day(s).",
    tags={API_CONCURRENCY_TAG: "statistics"},
)


def range_tags(first_day: str, last_day: str) -> dict[str, str]:
    """Run tags that make one run cover an inclusive range of daily partitions."""
    return {RANGE_START_TAG: first_day, RANGE_END_TAG: last_day}
