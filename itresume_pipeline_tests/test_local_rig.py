"""The local rig as a newcomer uses it: `make demo`, then the shell of `make dev`, then `make stop`.

One Dagster instance serves all three, so what the demo loaded shows in the UI and in a shell;
`make stop` leaves no embedded PostgreSQL running.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

REPO = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT_S = 240


@pytest.fixture
def fresh_home() -> Iterator[Path]:
    """An ITRESUME_HOME outside pytest's 0700 temp root, which the embedded server can't reach."""
    root = Path(tempfile.mkdtemp(prefix="itresume-rig-"))
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S
    )


def _postmaster_pid(data_dir: Path) -> int | None:
    pid_file = data_dir / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.is_file() else None


def _alive(pid: int) -> bool:
    """Running, not a zombie (the reparented postmaster may wait for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.processes
@pytest.mark.slow
def test_demo_runs_show_in_the_dev_instance_and_make_stop_stops_the_server(
    fresh_home: Path, monkeypatch: pytest.MonkeyPatch
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITRESUME_", "DAGSTER_"))}
    env["ITRESUME_HOME"] = str(fresh_home)
    bin_dir = Path(sys.executable).parent

    demo = _run([str(bin_dir / "itresume-demo")], env)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "make stop" in demo.stdout

    # The exports a second shell evaluates: the same DAGSTER_HOME and storage as the demo's.
    exports = _run([str(bin_dir / "itresume-dev"), "env"], env)
    assert exports.returncode == 0, exports.stderr
    shell = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in exports.stdout.splitlines()
        if line.startswith("export ")
    )
    assert shell["DAGSTER_HOME"] == str(fresh_home / "dagster")
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    today = datetime.now(UTC).date()
    expected = {(today - timedelta(days=n)).isoformat() for n in range(1, 8)}
    with DagsterInstance.get() as instance:
        for asset in ("raw_attempts", "postgres_attempts", "daily_metrics", "sheets_report"):
            assert instance.get_materialized_partitions(AssetKey(asset)) >= expected, asset

    data_dir = fresh_home / "pg"
    pid = _postmaster_pid(data_dir)
    assert pid is not None and _alive(pid), "the demo leaves its server running for make dev"
    stopped = _run([str(bin_dir / "itresume-dev"), "stop"], env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the embedded PostgreSQL" in stopped.stdout
    assert not _alive(pid)
    again = _run([str(bin_dir / "itresume-dev"), "stop"], env)
    assert again.returncode == 0 and "stopped" not in again.stdout
