"""Runs whose process died (kill -9, OOM killer, a reboot) without recording an end.

Dagster's run monitoring (`run_monitoring` in the shipped dagster.yaml) fails runs stuck in
STARTING or CANCELING, but it can only check a *started* run's worker through the run launcher,
and the DefaultRunLauncher of this deployment has no such health check; a run started by
`dagster asset materialize` has no launcher at all. Such a run would stay STARTED for ever and
nobody would be told.

So we look ourselves: every Dagster event records the pid of the process that emitted it, and a
run's RUN_START comes from its worker. A STARTED run whose worker process no longer exists on
this host, is a zombie, or is a newer process that reused the pid, is dead: `find_dead_runs`
reports it, the caller marks it failed with `instance.report_run_failed`, and the failure
sensor e-mails it like any other failure.

This assumes the run workers run on the host of the code server that evaluates the sensor, as
with the DefaultRunLauncher and the CLI. Launchers that place runs elsewhere (Kubernetes, Docker,
ECS) implement Dagster's health check, and with one of those `find_dead_runs` stands aside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

# A process that started this much later than its run recorded the pid is another process.
_START_SLACK_S = 2.0
_PROC = Path("/proc")


@dataclass(frozen=True)
class DeadRun:
    run: DagsterRun
    pid: int

    def message(self) -> str:
        return (
            f"The process of this run (pid {self.pid}) is gone: it was killed or crashed "
            "without recording an end. Marked failed by the dead_run_detector sensor."
        )


def recorded_pid(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid of the process that started the run, and when it said so.

    Every Dagster event carries the pid of the process that emitted it; RUN_START comes from the
    run worker itself (not from a step subprocess of the multiprocess executor, whose pids come
    and go while the run is healthy).
    """
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.RUN_START, limit=1
    ).records
    for record in records:
        entry = record.event_log_entry
        pid = getattr(entry.dagster_event, "pid", None)
        if isinstance(pid, int) and pid > 0:
            return pid, entry.timestamp
    return None


def _boot_time() -> float | None:
    try:
        for line in (_PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def process_alive(pid: int, recorded_at: float) -> bool:
    """Is `pid` still the process that recorded itself at `recorded_at`?

    With /proc: it exists, is not a zombie (a killed child nobody reaped yet), and did not start
    after `recorded_at` (pid reuse). Without /proc, only whether the pid exists.
    """
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return _pid_exists(pid)
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and ")"
    if fields[0] in ("Z", "X"):
        return False
    boot = _boot_time()
    if boot is None:
        return True
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started <= recorded_at + _START_SLACK_S


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def find_dead_runs(instance: DagsterInstance) -> list[DeadRun]:
    """STARTED runs whose recorded process is gone, re-checked to still be STARTED.

    The re-check after the process check closes the race with a run that just finished: a
    worker records its end before it exits, so a run still STARTED once its process is gone
    will never end by itself.
    """
    if instance.run_launcher.supports_check_run_worker_health:
        return []  # Dagster's run monitoring watches these workers
    dead: list[DeadRun] = []
    for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])):
        recorded = recorded_pid(instance, run.run_id)
        if recorded is None or process_alive(*recorded):
            continue
        fresh = instance.get_run_by_id(run.run_id)
        if fresh is not None and fresh.status == DagsterRunStatus.STARTED:
            dead.append(DeadRun(fresh, recorded[0]))
    return dead
