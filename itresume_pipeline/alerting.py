"""The alerting code location. It imports nothing of the pipeline's assets, so a broken pipeline
setting cannot silence alerts; a bad alert setting stops this location's load, naming it."""

from dagster import Definitions

from itresume_pipeline.dead_runs import dead_run_detector
from itresume_pipeline.logs import retention_days
from itresume_pipeline.resources import build_alert_resources
from itresume_pipeline.sensors import alert_outbox_flush, run_failure_alert

retention_days()  # sensor ticks log through the same dated file handler

defs = Definitions(
    sensors=[run_failure_alert, alert_outbox_flush, dead_run_detector],
    resources=build_alert_resources(),
)
