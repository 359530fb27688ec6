"""`make demo`: the whole pipeline on embedded defaults, with nothing installed or configured.

It starts the API simulator in this process and an embedded PostgreSQL under `$ITRESUME_HOME`,
materializes the last 7 complete UTC days through Dagster as one run, then prints the metrics
and where every output went. Settings already in the environment win, so the same command can
point at a real server. The run goes into the Dagster instance of `make dev` (same
`DAGSTER_HOME`, storage in PostgreSQL), so the UI shows it; `make stop` stops the embedded server.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta

DEMO_CLIENT = "demo"
DEMO_CLIENT_KEY = "demo-key"
DEMO_DAYS = 7


def main() -> int:
    # Known, harmless notices that would bury the report: the yaml log handler is "beta", and
    # pgserver's platformdirs falls back to /tmp when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message=".*yaml-defined logging configuration.*")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # Imported after ITRESUME_HOME is fixed: settings are read from the environment.
    from dagster import DagsterInstance

    from itresume_pipeline import settings
    from itresume_pipeline.local.dev import DevError, prepare_environment
    from itresume_pipeline.local.simulator import ApiSimulator

    try:
        env = prepare_environment()  # the local profile, ITRESUME_HOME, DAGSTER_HOME of make dev
    except DevError as exc:
        print(f"itresume-demo: {exc}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    with ApiSimulator(client=DEMO_CLIENT, client_key=DEMO_CLIENT_KEY) as simulator:
        os.environ.setdefault("ITRESUME_API_URL", simulator.url)
        os.environ.setdefault("ITRESUME_CLIENT", DEMO_CLIENT)
        os.environ.setdefault("ITRESUME_CLIENT_KEY", DEMO_CLIENT_KEY)
        print(f"profile {settings.LOCAL_PROFILE}: {settings.LOCAL_PROFILE_MEANS}")
        print(f"API simulator: {simulator.url}")
        print("PostgreSQL: " + _database_description())

        from itresume_pipeline.definitions import defs
        from itresume_pipeline.jobs import DAILY_JOB_NAME, range_tags

        today = datetime.now(UTC).date()
        first, last = today - timedelta(days=DEMO_DAYS), today - timedelta(days=1)
        print(f"materializing {first} .. {last} through Dagster (one run) ...")
        dagster_home = env.dagster_home
        instance = DagsterInstance.get()
        result = defs.resolve_job_def(DAILY_JOB_NAME).execute_in_process(
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
            tags=range_tags(first.isoformat(), last.isoformat()),
            raise_on_error=False,
        )
        if not result.success:
            print(f"the run failed; see run {result.run_id} in {dagster_home}", file=sys.stderr)
            for event in result.all_events:
                if event.is_step_failure and event.step_failure_data:
                    print(f"  {event.step_key}: {event.step_failure_data.error.message}")
            return 1
        _print_report(first, last, dagster_home, result.run_id)
    print(f"done in {time.perf_counter() - began:.1f} s")
    return 0


def _database_description() -> str:
    from itresume_pipeline import settings

    if settings.env("ITRESUME_DATABASE_URL"):
        return "ITRESUME_DATABASE_URL"
    return f"embedded, data in {settings.embedded_pg_dir()}"


def _print_report(first, last, dagster_home, run_id: str) -> None:
    from itresume_pipeline import settings
    from itresume_pipeline.assets.metrics import fetch_daily_metrics
    from itresume_pipeline.definitions import defs

    # Initialized as a run would: the EnvVar fields resolve only then.
    warehouse = defs.resources["warehouse"].process_config_and_initialize()
    landing = defs.resources["landing"]
    rows = fetch_daily_metrics(warehouse, first, last)
    header = ("date", "attempts", "successful_attempts", "unique_users")
    widths = [max(len(h), 10) for h in header]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[h]).rjust(w) for h, w in zip(header, widths, strict=True)))
    print()
    print("outputs:")
    print(f"  landing files   {landing.directory}/<day>.json.gz")
    print(f"  PostgreSQL      {warehouse.location}: attempts, attempts_rejected, daily_metrics")
    print(f"  report sheet    {defs.resources['sheets'].describe()}")
    print(f"  Dagster run     {run_id} (instance {dagster_home})")
    print(f"  log files       {settings.log_dir()}/<today>.txt")
    print(f"  ITRESUME_HOME   {settings.home()}")
    print("the run shows in `make dev`; `make stop` stops the embedded PostgreSQL")


if __name__ == "__main__":
    sys.exit(main())
