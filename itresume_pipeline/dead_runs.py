"""Fails STARTED runs whose process (on this host) died, found by their recorded pid: Dagster's run
monitoring cannot health-check the default launcher's workers, nor `dagster asset materialize`."""

import os
import time
from pathlib import Path

import dagster as dg


def recorded_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid of the run worker (RUN_START comes from it, not a step subprocess), and when."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1)
    entry = records.records[0].event_log_entry if records.records else None
    pid = getattr(getattr(entry, "dagster_event", None), "pid", None)
    return (pid, entry.timestamp) if entry and isinstance(pid, int) and pid > 0 else None


def process_alive(pid: int, recorded_at: float) -> bool:
    """Is ``pid`` still the recorder: not gone, not a zombie, not started later (a reused pid)?"""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except FileNotFoundError:
        return False
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)  # start times count from boot
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return fields[0] not in ("Z", "X") and started <= recorded_at + 2.0  # 2 s of slack


@dg.sensor(
    name="dead_run_detector",
    description="Fails STARTED runs whose process is gone, so that run_failure_alert mails them.",
    minimum_interval_seconds=60,  # with the daemon's own delays, failed within about 2 minutes
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def dead_run_detector(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Fails each dead run once: on the next tick it is no longer STARTED."""
    instance = context.instance
    if instance.run_launcher.supports_check_run_worker_health:
        return dg.SkipReason("the run launcher's health check watches these workers")
    if not Path("/proc").is_dir():
        return dg.SkipReason("no /proc on this host: process start times cannot be checked")
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        recorded = recorded_pid(instance, run.run_id)
        alive = recorded is None or process_alive(*recorded)
        # Re-read: a worker records its end before it exits, so a run still STARTED now never ends.
        fresh = None if alive else instance.get_run_by_id(run.run_id)
        if fresh is None or fresh.status != dg.DagsterRunStatus.STARTED:
            continue
        message = f"dead_run_detector: pid {recorded[0]} is gone, killed or crashed without an end"
        context.log.warning(f"run {run.run_id}: {message}")
        instance.report_run_failed(fresh, message)
        failed.append(run.run_id)
    return dg.SkipReason(f"marked failed: {', '.join(failed)}" if failed else "no dead runs")
