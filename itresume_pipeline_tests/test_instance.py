"""The shipped dagster.yaml on a real PostgreSQL: runs are stored there, and a real daemon fires
schedule and sensor ticks against it.

Each test gets a database of its own on the `pg_url` server (embedded or the CI machine's), as
`make dev` does with its `dagster` database.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import sqlalchemy
import yaml
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from psycopg import sql

from itresume_pipeline import defs
from itresume_pipeline.alerts import WILL_RETRY_TAG
from itresume_pipeline.jobs import API_CONCURRENCY_TAG, DAILY_JOB_NAME
from itresume_pipeline.local.dev import dagster_storage_url, install_instance_config
from itresume_pipeline.local.embedded_postgres import ensure_database
from itresume_pipeline.schedules import MAX_RETRIES_TAG

REPO = Path(__file__).resolve().parent.parent
DAEMON_TIMEOUT_S = 100
RUN_TIMEOUT_S = 90


@pytest.fixture
def dagster_db(pg_url: str) -> Iterator[tuple[str, str]]:
    """(libpq URI, psycopg2 URL) of a fresh database for Dagster's storage."""
    name = f"dagster_test_{uuid.uuid4().hex[:10]}"
    libpq = ensure_database(pg_url, name)
    yield libpq, dagster_storage_url(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def shipped_home(
    tmp_path: Path, dagster_db: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A DAGSTER_HOME holding the shipped dagster.yaml, as `make dev` installs it."""
    home = tmp_path / "dagster_home"
    install_instance_config(REPO, home)
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_db[1])
    monkeypatch.setenv("ITRESUME_LOG_DIR", str(tmp_path / "logs"))
    return home


def _logged(tmp_path: Path) -> str:
    """Every dated log file under the test's ITRESUME_LOG_DIR (a run may cross midnight)."""
    return "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.txt")))


# --- URLs for dagster-postgres -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        (
            "postgresql://postgres:@/postgres?host=/tmp/pg%20sock",
            "postgresql+psycopg2://postgres@/dagster?host=%2Ftmp%2Fpg+sock",
        ),
        (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            "postgresql+psycopg2://postgres@127.0.0.1:5432/dagster",
        ),
        (
            "postgresql://etl:p%40ss%3Aw%2Fd@db.example.com:6432/warehouse?sslmode=require",
            "postgresql+psycopg2://etl:p%40ss%3Aw%2Fd@db.example.com:6432/dagster?sslmode=require",
        ),
        (
            "host=/var/run/postgresql port=5433 user=etl dbname=warehouse",
            "postgresql+psycopg2://etl@/dagster?host=%2Fvar%2Frun%2Fpostgresql&port=5433",
        ),
    ],
)
def test_storage_url_from_a_server_uri(server: str, expected: str):
    assert dagster_storage_url(server) == expected


def test_storage_url_connects_with_psycopg2(dagster_db: tuple[str, str]):
    engine = sqlalchemy.create_engine(dagster_db[1])
    try:
        assert engine.dialect.driver == "psycopg2"
        with engine.connect() as conn:
            assert (
                conn.execute(sqlalchemy.text("select current_database()")).scalar()
                == (psycopg.conninfo.conninfo_to_dict(dagster_db[0])["dbname"])
            )
    finally:
        engine.dispose()


# --- the instance ------------------------------------------------------------------------------


@dg.asset(partitions_def=dg.DailyPartitionsDefinition(start_date="2024-01-01"))
def tiny_report(context: dg.AssetExecutionContext) -> None:
    context.log.info("sheet finished: 1 rows in 0.0 s")


def test_the_shipped_instance_stores_runs_in_postgres(
    shipped_home: Path, dagster_db: tuple[str, str], tmp_path: Path
):
    with DagsterInstance.from_config(str(shipped_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        coordinator = instance.run_coordinator
        assert type(coordinator).__name__ == "QueuedRunCoordinator"
        # The queue's API limit reaches the daily job only if the job carries the limited tag.
        limited = {t["key"] for t in coordinator.get_run_queue_config().tag_concurrency_limits}
        assert limited == {API_CONCURRENCY_TAG}
        assert limited <= set(defs.resolve_job_def(DAILY_JOB_NAME).tags)
        assert not instance.telemetry_enabled
        assert instance.run_monitoring_enabled  # fails runs stuck in STARTING or CANCELING
        assert not instance.run_launcher.supports_check_run_worker_health

        result = dg.materialize([tiny_report], instance=instance, partition_key="2024-10-08")
        assert result.success
        assert instance.get_run_by_id(result.run_id).status == DagsterRunStatus.SUCCESS

    with psycopg.connect(dagster_db[0]) as conn:
        status, partition = conn.execute(
            "SELECT status, partition FROM runs WHERE run_id = %s", (result.run_id,)
        ).fetchone()
        events = conn.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s", (result.run_id,)
        ).fetchone()[0]
    assert (status, partition) == ("SUCCESS", "2024-10-08")
    assert events > 5
    assert f"run={result.run_id[:8]} step=tiny_report sheet finished" in _logged(tmp_path)


@dg.asset
def always_fails() -> None:
    raise RuntimeError("the API is down")


def test_scheduled_runs_are_retried_only_when_no_step_failed(shipped_home: Path):
    """`run_retries` is on in the shipped instance for runs that carry `dagster/max_retries` (as
    scheduled runs do), but only for runs that failed without a failed step, such as a run whose
    process died: a step failure was already retried by the one layer that owns it. The failure
    sensor stays quiet for a run Dagster will retry; the others are final."""
    with DagsterInstance.from_config(str(shipped_home)) as instance:
        step_failed = dg.materialize(
            [always_fails], instance=instance, tags={MAX_RETRIES_TAG: "2"}, raise_on_error=False
        )
        assert instance.get_run_by_id(step_failed.run_id).tags[WILL_RETRY_TAG] == "false"
        died = instance.add_run(
            dg.DagsterRun(
                job_name="itresume_daily",
                run_id=str(uuid.uuid4()),
                status=DagsterRunStatus.STARTED,
                tags={MAX_RETRIES_TAG: "2"},
            )
        )
        instance.report_run_failed(died, "the run's process is gone")
        assert instance.get_run_by_id(died.run_id).tags[WILL_RETRY_TAG] == "true"
        untagged = instance.add_run(
            dg.DagsterRun(
                job_name="itresume_daily", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED
            )
        )
        instance.report_run_failed(untagged, "the run's process is gone")
        assert instance.get_run_by_id(untagged.run_id).tags[WILL_RETRY_TAG] == "false"


def test_install_instance_config_follows_the_checkout(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("stale: true\n")
    install_instance_config(REPO, home)
    assert (home / "dagster.yaml").read_bytes() == (REPO / "deploy" / "dagster.yaml").read_bytes()
    assert sorted(p.name for p in home.iterdir()) == ["dagster.yaml"]
    shipped = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert shipped["storage"] == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}


# --- the daemon --------------------------------------------------------------------------------

DAEMON_DEFS = """
import dagster as dg


@dg.op
def ping(context):
    context.log.info("ping from the schedule")


@dg.job(tags={"itresume/api": "statistics"})
def ping_job():
    ping()


@dg.schedule(
    job=ping_job, cron_schedule="* * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
def every_minute(context):
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())


@dg.sensor(minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING)
def heartbeat(context):
    return dg.SkipReason("nothing to do")


defs = dg.Definitions(jobs=[ping_job], schedules=[every_minute], sensors=[heartbeat])
"""


def _ticks(instance: DagsterInstance) -> dict[str, tuple[InstigatorType, list]]:
    found = {}
    for state in instance.all_instigator_state():
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
        found[state.instigator_name] = (state.instigator_type, ticks)
    return found


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(daemon.pid, sig)
        except ProcessLookupError:
            return
        try:
            daemon.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.processes
@pytest.mark.slow
def test_the_daemon_fires_schedule_and_sensor_ticks(shipped_home: Path, tmp_path: Path):
    defs_file = tmp_path / "daemon_defs.py"
    defs_file.write_text(DAEMON_DEFS)
    output = tmp_path / "daemon.out"
    env = {**os.environ, "DAGSTER_HOME": str(shipped_home)}
    with output.open("wb") as sink:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "dagster._daemon", "run", "-f", str(defs_file)],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server and run workers go down with it
        )
    try:
        with DagsterInstance.from_config(str(shipped_home)) as instance:
            deadline = time.monotonic() + DAEMON_TIMEOUT_S
            schedule_ticks: list = []
            sensor_ticks: list = []
            while time.monotonic() < deadline and daemon.poll() is None:
                ticks = _ticks(instance)
                schedule_ticks = ticks.get("every_minute", (None, []))[1]
                # a tick the daemon is still evaluating is STARTED: only finished ones count
                sensor_ticks = [
                    t
                    for t in ticks.get("heartbeat", (None, []))[1]
                    if t.status != TickStatus.STARTED
                ]
                if sensor_ticks and any(t.status == TickStatus.SUCCESS for t in schedule_ticks):
                    break
                time.sleep(2)
            log = output.read_text(errors="replace")[-4000:]
            assert daemon.poll() is None, f"the daemon exited:\n{log}"
            assert sensor_ticks, f"no sensor tick within {DAEMON_TIMEOUT_S} s:\n{log}"
            assert sensor_ticks[0].status == TickStatus.SKIPPED
            assert sensor_ticks[0].skip_reason == "nothing to do"
            fired = [t for t in schedule_ticks if t.status == TickStatus.SUCCESS]
            assert fired, f"no schedule tick within {DAEMON_TIMEOUT_S} s:\n{log}"
            assert fired[0].run_ids, "the tick requested a run"

            # The run goes through the queue (QueuedRunCoordinator), a run worker, and the log
            # handler of the shipped dagster.yaml.
            run_id = fired[0].run_ids[0]
            run = instance.get_run_by_id(run_id)
            assert run is not None and run.tags.get("dagster/schedule_name") == "every_minute"
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while time.monotonic() < deadline and not run.is_finished:
                time.sleep(2)
                run = instance.get_run_by_id(run_id)
            assert run.status == DagsterRunStatus.SUCCESS, output.read_text()[-4000:]
    finally:
        _stop(daemon)

    assert f"run={run_id[:8]} step=ping ping from the schedule" in _logged(tmp_path)


# --- make dev ----------------------------------------------------------------------------------

DEV_READY_TIMEOUT_S = 180
STATUS_QUERY = """
{
  schedulesOrError(repositorySelector: {repositoryName: "__repository__",
                                        repositoryLocationName: "itresume_pipeline"}) {
    ... on Schedules { results { name scheduleState { status } } }
  }
  sensorsOrError(repositorySelector: {repositoryName: "__repository__",
                                      repositoryLocationName: "itresume_alerting"}) {
    ... on Sensors { results { name sensorState { status } } }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    members.append(int(entry))
            except OSError:  # gone meanwhile
                continue
    return members


def _get(url: str, body: bytes | None = None) -> bytes:
    headers = {"Content-Type": "application/json"} if body else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


@pytest.mark.processes
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process sessions from /proc")
def test_make_dev_serves_the_ui_and_stops_everything(
    pg_url: str, dagster_db: tuple[str, str], tmp_path: Path
):
    """`itresume-dev` the way a script runs it: setsid, wait for /server_info, SIGTERM the group."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITRESUME_", "DAGSTER_"))}
    env.update(
        ITRESUME_HOME=str(tmp_path / "home"),
        ITRESUME_DATABASE_URL=pg_url,
        DAGSTER_PG_URL=dagster_db[1],
        DAGSTER_PORT=str(port),
    )
    output = tmp_path / "dev.out"
    with output.open("wb") as sink:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "itresume_pipeline.local.dev"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEV_READY_TIMEOUT_S
        while time.monotonic() < deadline and launcher.poll() is None:
            try:
                info = json.loads(_get(f"{url}/server_info"))
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"no UI within {DEV_READY_TIMEOUT_S} s:\n{output.read_text()[-4000:]}")
        assert info["dagster_version"] == dg.__version__

        # "The schedule and the failure sensor show as running in the UI": what the UI asks.
        status = json.loads(_get(f"{url}/graphql", json.dumps({"query": STATUS_QUERY}).encode()))
        schedules = status["data"]["schedulesOrError"]["results"]
        sensors = status["data"]["sensorsOrError"]["results"]
        assert {s["name"]: s["scheduleState"]["status"] for s in schedules} == {
            "itresume_daily_schedule": "RUNNING"
        }
        assert {s["name"]: s["sensorState"]["status"] for s in sensors} == {
            "alert_outbox_flush": "RUNNING",
            "dead_run_detector": "RUNNING",
            "run_failure_alert": "RUNNING",
        }
        home = tmp_path / "home" / "dagster"
        assert (home / "dagster.yaml").read_bytes() == (
            REPO / "deploy" / "dagster.yaml"
        ).read_bytes()
        deadline = time.monotonic() + 10  # the launcher polls /server_info once a second
        while (
            f"Dagster UI ready at {url}" not in output.read_text() and time.monotonic() < deadline
        ):
            time.sleep(0.5)
    finally:
        os.killpg(launcher.pid, signal.SIGTERM)
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        leftovers = _session_members(launcher.pid)
        deadline = time.monotonic() + 15
        while leftovers and time.monotonic() < deadline:  # let the kernel reap what was killed
            time.sleep(1)
            leftovers = _session_members(launcher.pid)
        for pid in leftovers:  # do not leak into the rest of the suite, whatever happened
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    text = output.read_text(errors="replace")
    assert launcher.returncode == 0, text[-4000:]
    assert not leftovers, f"still running after the launcher exited: {leftovers}"
    assert f"Dagster UI ready at {url}" in text
    assert "SIGTERM received: stopping Dagster" in text
