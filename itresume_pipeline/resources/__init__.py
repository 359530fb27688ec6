"""The resources of both code locations, bound to the environment variables of the README here.

This is the one place a resource field meets the environment (through `settings`): the modules
of the resources only check the values they are given. Secrets (the API key, the SMTP password,
the database URL, which may carry a password) are `EnvVar`s, so the Dagster UI shows their
names, never their values; an unset one fails the run that needs it with a `SettingError`
naming it (see `settings.secret`). Mail belongs to the alerting code location
(`itresume_pipeline.alerting`), whose `build_alert_resources` checks every mail setting on load.
"""

from __future__ import annotations

from itresume_pipeline import settings
from itresume_pipeline.landing import LandingZone
from itresume_pipeline.resources import api, mail, postgres
from itresume_pipeline.resources.api import ItResumeApiResource
from itresume_pipeline.resources.mail import MailResource
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline.resources.sheets import SheetsResource


def build_resources() -> dict[str, object]:
    return {
        "itresume_api": ItResumeApiResource(
            url=settings.env(api.URL_VAR, settings.DEFAULT_API_URL),
            client=settings.secret(api.CLIENT_VAR),
            client_key=settings.secret(api.CLIENT_KEY_VAR),
        ),
        "landing": LandingZone(root=str(settings.home())),
        "warehouse": PostgresResource(
            database_url=settings.secret(postgres.DATABASE_URL_VAR),
            schema_name=settings.env(postgres.SCHEMA_VAR, settings.DEFAULT_SCHEMA),
        ),
        "sheets": SheetsResource(),
    }


def build_alert_resources() -> dict[str, object]:
    """The mail relay, every setting checked now, when the alerting location loads.

    A bad value (SMTP_SECURITY=tls, a port of 0, a recipient without @) then stops the load with
    a `settings.SettingError` naming the variable, which `dagster definitions validate` and the
    UI show, instead of failing every sensor tick while runs carry on unwatched. A missing host
    or recipient is no error here: alerts wait in the outbox and every tick says so.
    """
    user = settings.env(mail.USER_VAR)
    if user:
        settings.required(mail.PASSWORD_VAR, needed_for=f"SMTP login as {mail.USER_VAR}")
    relay = MailResource(
        host=settings.env(mail.HOST_VAR),
        port=settings.integer(mail.PORT_VAR, 0, minimum=1, maximum=65535),
        security=settings.choice(mail.SECURITY_VAR, mail.SECURITY_MODES),
        user=user,
        password=settings.secret(mail.PASSWORD_VAR),
        ca_file=settings.readable_file(mail.CA_FILE_VAR),
        from_addr=settings.addresses(mail.FROM_VAR, single=True) or mail.DEFAULT_FROM,
        to_addrs=settings.addresses(mail.TO_VAR),
    )
    return {"mail": relay}
