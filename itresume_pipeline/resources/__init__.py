"""Resources of the pipeline code location, wired to the environment variables of the README.

Required secrets come through `EnvVar`, so Dagster resolves them at run time, names a missing
one, and never shows the values in the UI. Optional settings (URLs, schema) are left empty here
and read from the environment at run time by the resources themselves, which keeps a password
inside ITRESUME_DATABASE_URL out of the UI too. Mail belongs to the alerting code location
(`itresume_pipeline.alerting`), whose `build_alert_resources` checks every mail setting.
"""

from __future__ import annotations

from dagster import EnvVar

from itresume_pipeline.resources.api import ItResumeApiResource
from itresume_pipeline.resources.mail import MailResource
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline.resources.sheets import SheetsResource


def build_resources() -> dict[str, object]:
    return {
        "itresume_api": ItResumeApiResource(
            client=EnvVar("ITRESUME_CLIENT"),
            client_key=EnvVar("ITRESUME_CLIENT_KEY"),
        ),
        "warehouse": PostgresResource(),
        "sheets": SheetsResource(),
    }


def build_alert_resources() -> dict[str, object]:
    """Raises `settings.SettingError` naming the variable for a bad mail setting (on load)."""
    return {"mail": MailResource.from_settings()}
