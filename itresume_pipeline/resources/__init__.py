"""The resources of both code locations, bound here (and only here) from `settings`.
Secrets are `EnvVar`s, so the Dagster UI shows their names, never their values."""

from __future__ import annotations

from itresume_pipeline import settings
from itresume_pipeline.landing import LandingZone
from itresume_pipeline.resources import api, mail, postgres, sheets


def build_resources() -> dict[str, object]:
    return {
        "itresume_api": api.ItResumeApiResource(
            url=settings.env(api.URL_VAR, settings.DEFAULT_API_URL),
            client=settings.secret(api.CLIENT_VAR),
            client_key=settings.secret(api.CLIENT_KEY_VAR),
        ),
        "landing": LandingZone(root=str(settings.home())),
        "warehouse": postgres.PostgresResource(
            database_url=settings.secret(postgres.DATABASE_URL_VAR),
            schema_name=settings.env(postgres.SCHEMA_VAR, settings.DEFAULT_SCHEMA),
        ),
        "sheets": sheets_resource(),
    }


def sheets_resource() -> sheets.SheetsResource:
    """The local profile writes the CSV sheet unless a Sheets setting is given; production never."""
    given = {
        "spreadsheet_id": settings.env(sheets.SPREADSHEET_ID_VAR),
        "credentials_path": settings.env(sheets.CREDENTIALS_VAR),
        "emulator_host": settings.env(sheets.EMULATOR_HOST_VAR),
    }
    fallback = "csv" if not any(given.values()) and settings.is_local() else "google"
    return sheets.SheetsResource(
        **given,
        backend=settings.env(sheets.BACKEND_VAR, fallback).lower(),
        worksheet=settings.env(sheets.WORKSHEET_VAR, sheets.DEFAULT_WORKSHEET),
        local_dir=str(settings.sheets_local_dir()),
    )


def build_alert_resources() -> dict[str, object]:
    """The mail relay; a bad setting stops the load naming it, no host or recipient only delays."""
    user = settings.env("ITRESUME_SMTP_USER")
    if user:
        settings.required("ITRESUME_SMTP_PASSWORD", needed_for="SMTP login as ITRESUME_SMTP_USER")
    relay = mail.MailResource(
        host=settings.env(mail.HOST_VAR),
        port=settings.integer("ITRESUME_SMTP_PORT", 0, minimum=1, maximum=65535),
        security=settings.choice("ITRESUME_SMTP_SECURITY", mail.SECURITY_MODES),
        user=user,
        password=settings.secret("ITRESUME_SMTP_PASSWORD"),
        ca_file=settings.readable_file("ITRESUME_SMTP_CA_FILE"),
        from_addr=settings.addresses("ITRESUME_ALERT_FROM", single=True),
        to_addrs=settings.addresses(mail.TO_VAR),
    )
    return {"mail": relay}
