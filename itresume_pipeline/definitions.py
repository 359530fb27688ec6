"""The pipeline code location. The alert sensors live in `itresume_pipeline.alerting`, so a
setting that stops this location from loading (a bad ITRESUME_START_DATE) leaves alerting up."""

from dagster import Definitions

from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics
from itresume_pipeline.assets.reporting import sheets_report
from itresume_pipeline.jobs import daily_job
from itresume_pipeline.logs import dated_file_executor, retention_days
from itresume_pipeline.redaction import install_log_redaction
from itresume_pipeline.resources import build_resources
from itresume_pipeline.schedules import daily_schedule

retention_days()  # read by the log handler in every run: a bad value fails the load instead
install_log_redaction()  # urllib3 logs the API's request URLs, key included

defs = Definitions(
    assets=[raw_attempts, postgres_attempts, daily_metrics, sheets_report],
    jobs=[daily_job],
    schedules=[daily_schedule],
    resources=build_resources(),
    executor=dated_file_executor,  # the multiprocess executor costs seconds per step
)
