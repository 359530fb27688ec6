"""One partition per UTC day; backfills of a range run as one run over its time window."""

from __future__ import annotations

import warnings
from datetime import date, datetime, timedelta

from dagster import BackfillPolicy, BetaWarning, DailyPartitionsDefinition, TimeWindow

from itresume_pipeline import settings

daily_partitions = DailyPartitionsDefinition(settings.partitions_start_date(), timezone="UTC")

# `backfill_policy` is flagged beta but is the documented way to backfill a range in one run
# (per-run start-up costs seconds); its warning would greet every CLI call and UI reload.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=BetaWarning)
single_run_backfill = BackfillPolicy.single_run()


def days_in_window(window: TimeWindow) -> list[date]:
    """The UTC days covered by a half-open partition time window."""
    first = window.start.date()
    return [first + timedelta(days=n) for n in range((window.end.date() - first).days)]


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """Naive-UTC [start, end) of one day, as the API and the `attempts` table use them."""
    start = datetime(day.year, day.month, day.day)
    return start, start + timedelta(days=1)


def describe_days(days: list[date]) -> str:
    if len(days) < 2:
        return days[0].isoformat() if days else "no days"
    return f"{days[0].isoformat()}..{days[-1].isoformat()} ({len(days)} days)"
