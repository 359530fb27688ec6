"""Resources as the code location wires them, from the environment variables of DESIGN §3.

Required secrets come through `EnvVar`, so Dagster resolves them at run time, names a missing
one, and never shows the values in the UI. Optional settings (URLs, schema) are left empty here
and read from the environment at run time by the resources themselves, which keeps a password
inside ITRESUME_DATABASE_URL out of the UI too.
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
        "mail": MailResource.from_env(),
    }
