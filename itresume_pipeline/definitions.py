"""The pipeline code location: assets, checks, the daily job and schedule, and their resources.

The alert sensors are not here but in `itresume_pipeline.alerting`, a code location of its own,
so that a pipeline setting that stops this one from loading (a garbage ITRESUME_START_DATE, which
`itresume_pipeline.partitions` reads on import and reports as a SettingError naming it) does not
also silence the alerts. Settings read only later, at run time, are checked here when the
location loads, so `dagster definitions validate` reports them.
"""

from dagster import Definitions

from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics
from itresume_pipeline.assets.reporting import sheets_report
from itresume_pipeline.jobs import daily_job
from itresume_pipeline.logs import dated_file_executor, retention_days
from itresume_pipeline.redaction import install_log_redaction
from itresume_pipeline.resources import build_resources
from itresume_pipeline.schedules import daily_schedule

retention_days()  # the dated log handler reads it in every run; a bad value fails the load
install_log_redaction()  # the API client's request URLs carry the key; urllib3 logs them

defs = Definitions(
    assets=[raw_attempts, postgres_attempts, daily_metrics, sheets_report],
    jobs=[daily_job],
    schedules=[daily_schedule],
    resources=build_resources(),
    # One process per run: the multiprocess executor costs 5-7 s per step on a small machine,
    # and the heavy lifting happens in PostgreSQL and in a streaming parser anyway. It also
    # writes the dated log file when the instance does not (a shell run without DAGSTER_HOME).
    executor=dated_file_executor,
)
