"""The alerting code location: the failure e-mail, its retries and the dead-run detector.

A location of its own, importing nothing of the pipeline's assets or partitions, so that alerts
keep flowing while the pipeline location cannot load (a bad ITRESUME_START_DATE, a broken
asset module): a run-failure sensor that monitors all code locations sees every run's failure
from here. Every alert setting is checked when this module loads, so a bad one stops *this*
location with a SettingError naming the variable, which `dagster definitions validate -w
workspace.yaml` and the UI's code location page show, rather than failing every sensor tick.
"""

from dagster import Definitions

from itresume_pipeline.logs import retention_days
from itresume_pipeline.resources import build_alert_resources
from itresume_pipeline.sensors import alert_outbox_flush, dead_run_detector, run_failure_alert

LOCATION_NAME = "itresume_alerting"

retention_days()  # sensor ticks log through the same dated file handler

defs = Definitions(
    sensors=[run_failure_alert, alert_outbox_flush, dead_run_detector],
    resources=build_alert_resources(),
)
