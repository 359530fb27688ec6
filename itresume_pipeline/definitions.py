"""The code location: assembles assets, checks, jobs, schedules, sensors and resources."""

from dagster import Definitions, in_process_executor

from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics
from itresume_pipeline.assets.reporting import sheets_report
from itresume_pipeline.jobs import daily_job
from itresume_pipeline.resources import build_resources
from itresume_pipeline.schedules import daily_schedule
from itresume_pipeline.sensors import alert_outbox_flush, run_failure_alert

defs = Definitions(
    assets=[raw_attempts, postgres_attempts, daily_metrics, sheets_report],
    jobs=[daily_job],
    schedules=[daily_schedule],
    sensors=[run_failure_alert, alert_outbox_flush],
    resources=build_resources(),
    # One process per run: the multiprocess executor costs 5-7 s per step on a small machine,
    # and the heavy lifting happens in PostgreSQL and in a streaming parser anyway.
    executor=in_process_executor,
)
