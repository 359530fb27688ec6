"""A run whose process is killed with -9 is marked failed, and e-mailed, exactly once.

For real: `dagster asset materialize` of the pipeline in a subprocess, on a persistent instance
(a temporary DAGSTER_HOME), stuck on a slow API simulator; SIGKILL; then the dead-run sensor and
the failure sensor, evaluated against that same instance, with a real SMTP server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from itresume_pipeline.dead_runs import dead_run_detector, process_alive, recorded_pid
from itresume_pipeline.local.simulator import ApiSimulator
from itresume_pipeline.sensors import run_failure_alert
from itresume_pipeline_tests.helpers import TEST_CLIENT, TEST_CLIENT_KEY, mail_for, smtp_server

pytestmark = pytest.mark.processes  # each test starts a Dagster CLI run or a child process

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 90
DAY = "2024-10-08"


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


@pytest.fixture
def slow_api() -> Iterator[ApiSimulator]:
    """Answers after a minute: the run is surely still inside raw_attempts when it is killed."""
    with ApiSimulator(
        client=TEST_CLIENT, client_key=TEST_CLIENT_KEY, attempts_per_day=10, latency=60
    ) as sim:
        yield sim


def _materialize(dagster_home: Path, api: ApiSimulator, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITRESUME_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(dagster_home),
        ITRESUME_PROFILE="local",
        ITRESUME_HOME=str(tmp_path / "home"),
        ITRESUME_API_URL=api.url,
        ITRESUME_CLIENT=TEST_CLIENT,
        ITRESUME_CLIENT_KEY=TEST_CLIENT_KEY,
        PYTHONPATH=str(REPO),
    )
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "itresume_pipeline"]
    command += ["--select", "raw_attempts", "--partition", DAY]
    with (tmp_path / "cli.out").open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _started_run(instance: DagsterInstance, cli: subprocess.Popen[bytes], log: Path) -> DagsterRun:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and cli.poll() is None:
        for run in instance.get_runs():
            if run.status == DagsterRunStatus.STARTED and recorded_pid(instance, run.run_id):
                return run
        time.sleep(0.5)
    pytest.fail(f"no STARTED run within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _detect(instance: DagsterInstance) -> str:
    result = dead_run_detector(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason)
    return result.skip_message or ""


def test_a_killed_cli_run_is_failed_and_alerted_once(
    dagster_home: Path, slow_api: ApiSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ITRESUME_OUTBOX_DIR", str(tmp_path / "outbox"))
    with (
        DagsterInstance.from_config(str(dagster_home)) as instance,
        smtp_server("none") as (sink, port),
    ):
        mail = mail_for(port, "none", None)
        defs = dg.Definitions(sensors=[run_failure_alert], resources={"mail": mail})
        failure_sensor = defs.resolve_sensor_def("run_failure_alert")

        def failure_tick(cursor: str | None) -> Any:
            context = dg.build_sensor_context(
                instance=instance,
                repository_def=defs.get_repository_def(),
                resources={"mail": mail},
                cursor=cursor,
            )
            return failure_sensor.evaluate_tick(context)

        cursor = failure_tick(None).cursor  # the daemon's first tick only sets the cursor
        cli = _materialize(dagster_home, slow_api, tmp_path)
        try:
            run = _started_run(instance, cli, tmp_path / "cli.out")
            pid, _ = recorded_pid(instance, run.run_id) or (0, 0.0)
            assert pid == cli.pid  # the CLI process executes the run itself
            assert _detect(instance) == "no dead runs"  # alive: left alone
            os.killpg(cli.pid, signal.SIGKILL)
            time.sleep(0.5)
            # Not reaped yet: a zombie still has its pid, and it is dead all the same.
            assert _detect(instance) == f"marked failed: {run.run_id}"
        finally:
            if cli.poll() is None:
                os.killpg(cli.pid, signal.SIGKILL)
            cli.wait(timeout=30)

        failed = instance.get_run_by_id(run.run_id)
        assert failed is not None and failed.status == DagsterRunStatus.FAILURE
        assert _detect(instance) == "no dead runs"  # once: it is no longer STARTED

        second = failure_tick(cursor)
        assert [r.dagster_run.run_id for r in second.dagster_run_reactions or []] == [run.run_id]
        failure_tick(second.cursor)
        failure_tick(cursor)  # a replay from the old cursor: the outbox does not double it
        assert len(sink.envelopes) == 1
    (msg,) = sink.messages()
    assert DAY in msg["Subject"] and "FAILED" in msg["Subject"]
    body = msg.get_content()
    assert run.run_id in body
    assert f"pid {pid}" in body and "killed or crashed" in body


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="start times and zombies come from /proc")
def test_a_pid_is_alive_only_while_it_is_the_recorded_process() -> None:
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        assert process_alive(child.pid, time.time())
        # Recorded a minute before this process existed: the pid now belongs to another one.
        assert not process_alive(child.pid, before - 60)
        child.kill()
        time.sleep(0.2)
        assert not process_alive(child.pid, time.time())  # a zombie, not reaped yet
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid, time.time())
