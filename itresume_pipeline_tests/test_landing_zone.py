"""The landing zone's temp files: locked while in use, swept after a kill -9, and file system
errors that name the path and the day (a real full disk: a tiny tmpfs in a private mount
namespace)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import date
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, materialize

from itresume_pipeline import landing
from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.landing import LandingError, LandingZone
from itresume_pipeline_tests.helpers import DAY

HOLDER = """
import contextlib, sys, time
from pathlib import Path
from itresume_pipeline import landing
final = Path(sys.argv[1])
if sys.argv[2] == "claim_temp":
    claim = landing.claim_temp(final)
else:
    claim = contextlib.nullcontext(landing.temp_path_for(final))
with claim as temp:
    temp.write_bytes(b"half a download")
    print(temp, flush=True)
    time.sleep(60)
"""


def hold_claim(final: Path, how: str) -> tuple[subprocess.Popen, Path]:
    """A real process that claimed a temp of `final` and is still writing it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(final), how], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline().strip()
    assert line, "the holder did not start"
    return proc, Path(line)


def stale_temp(final: Path) -> Path:
    """A temp as a killed run leaves it: the right name, written, and held by nobody."""
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{landing.TEMP_SUFFIX}")
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"left by a killed run")
    return temp


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f".*{landing.TEMP_SUFFIX}"))


@pytest.mark.processes
@pytest.mark.parametrize("how", ["claim_temp", "temp_path_for"])
def test_a_temp_of_a_process_killed_with_sigkill_is_swept_and_a_live_one_is_kept(
    landing_zone: LandingZone, how: str
) -> None:
    final = landing_zone.payload_path(DAY)
    proc, temp = hold_claim(final, how)
    try:
        assert temp.parent == final.parent and temp.name.startswith(f".{final.name}.")
        assert landing.sweep_stale_temps(final) == []  # alive: its lock is held
        assert temp.read_bytes() == b"half a download"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert temp.exists()  # a kill -9 runs no cleanup
        assert landing.sweep_stale_temps(final) == [temp]
        assert not temp.exists()
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_a_claim_removes_its_temp_unless_published(landing_zone: LandingZone) -> None:
    final = landing_zone.payload_path(DAY)
    with landing.claim_temp(final) as temp:
        temp.write_bytes(b"[]")
        assert landing.sweep_stale_temps(final) == []  # our own claim is held too
    assert not temp.exists()
    with landing.claim_temp(final) as temp:
        temp.write_bytes(b"[1]")
        landing.publish(temp, final)
    assert final.read_bytes() == b"[1]" and temps(final.parent) == []


def test_a_temp_without_a_block_is_held_until_published_or_discarded(
    landing_zone: LandingZone,
) -> None:
    final = landing_zone.payload_path(DAY)
    kept, dropped = landing.temp_path_for(final), landing.temp_path_for(final)
    assert landing.sweep_stale_temps(final) == []  # both in use by this live process
    kept.write_bytes(b"[2]")
    landing.publish(kept, final)
    landing.discard(dropped)
    assert final.read_bytes() == b"[2]" and temps(final.parent) == []


def test_a_sweep_takes_only_the_temps_of_its_own_file(landing_zone: LandingZone) -> None:
    final, loaded = landing_zone.payload_path(DAY), landing_zone.loaded_path(DAY)
    other = landing_zone.payload_path(date(2024, 10, 9))
    stale = [stale_temp(path) for path in (final, loaded, other)]
    unrelated = final.with_name(f".{final.name}.notes{landing.TEMP_SUFFIX}")
    unrelated.write_bytes(b"not ours")

    assert landing.sweep_stale_temps(final) == [stale[0]]
    assert landing.sweep_stale_temps(loaded) == [stale[1]]
    assert temps(final.parent) == sorted([stale[2].name, unrelated.name])


def test_a_snapshot_keeps_its_bytes_when_the_source_is_replaced(landing_zone: LandingZone) -> None:
    final = landing_zone.payload_path(DAY)
    final.parent.mkdir(parents=True)
    final.write_bytes(b"[1, 2, 3]")
    with landing.claim_temp(landing_zone.loaded_path(DAY), source=final) as snapshot:
        with landing.claim_temp(final) as newer:
            newer.write_bytes(b"[]")
            landing.publish(newer, final)
        assert snapshot.read_bytes() == b"[1, 2, 3]"
        landing.publish(snapshot, landing_zone.loaded_path(DAY))
    assert landing_zone.loaded_path(DAY).read_bytes() == b"[1, 2, 3]"
    assert final.read_bytes() == b"[]" and temps(final.parent) == []


def test_raw_attempts_and_postgres_attempts_sweep_what_killed_runs_left(
    api, warehouse, simulator, landing_zone: LandingZone
) -> None:
    for path in (landing_zone.payload_path(DAY), landing_zone.loaded_path(DAY)):
        stale_temp(path)
    result = materialize(
        [raw_attempts, postgres_attempts],
        resources={"itresume_api": api, "warehouse": warehouse, "landing": landing_zone},
        partition_key=DAY.isoformat(),
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    assert temps(landing_zone.payload_path(DAY).parent) == []
    assert landing_zone.loaded_path(DAY).read_bytes() == landing_zone.payload_path(DAY).read_bytes()


def test_both_ingestion_assets_write_and_read_the_landing_zone_they_are_given(
    api, warehouse, itresume_home: Path, tmp_path: Path
) -> None:
    elsewhere = LandingZone(root=str(tmp_path / "elsewhere"))
    result = materialize(
        [raw_attempts, postgres_attempts],
        resources={"itresume_api": api, "warehouse": warehouse, "landing": elsewhere},
        partition_key=DAY.isoformat(),
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    assert elsewhere.loaded_path(DAY).read_bytes() == elsewhere.payload_path(DAY).read_bytes()
    assert not (itresume_home / "raw").exists()


def test_a_failed_publish_names_the_path_and_the_day(landing_zone: LandingZone) -> None:
    final = landing_zone.payload_path(DAY)
    (final / "in the way").mkdir(parents=True)  # a directory where the file should go
    with landing.claim_temp(final) as temp:
        temp.write_bytes(b"[]")
        with pytest.raises(LandingError) as info:
            landing.publish(temp, final)
    message = str(info.value)
    assert f"cannot publish {final}" in message and f"day {DAY}" in message
    assert info.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert temps(final.parent) == []


FULL_DISK = """
import json, os, sys
from datetime import date
from pathlib import Path
from itresume_pipeline import landing
zone = landing.LandingZone(root=os.environ["ITRESUME_HOME"])
day = date(2024, 10, 8)
final = zone.payload_path(day)
final.parent.mkdir(parents=True)
final.write_bytes(b"[]")
n = 0
while True:  # use up every inode left
    try:
        (final.parent / f"filler{n}").touch()
    except OSError:
        break
    n += 1
seen = {}
claims = {
    "temp": lambda: landing.claim_temp(zone.loaded_path(day)),
    "snapshot": lambda: zone.snapshot(day),
}
for label, claim in claims.items():
    try:
        with claim():
            seen[label] = "claimed"
    except landing.LandingError as error:
        seen[label] = [error.errno, str(error)]
print(json.dumps(seen))
"""


@pytest.mark.processes
def test_a_full_disk_names_the_path_and_the_day(tmp_path: Path) -> None:
    """A tmpfs with 16 inodes, mounted in a mount namespace of the child alone."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    as_root = [] if os.geteuid() == 0 else ["--map-root-user"]
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=1m,nr_inodes=16 tmpfs {mount_point} &&
        ITRESUME_HOME={mount_point} exec {sys.executable} -c "$0"
    """)
    done = subprocess.run(
        ["unshare", "--mount", *as_root, "sh", "-c", script, FULL_DISK],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    loaded = mount_point / "raw" / "attempts" / f"{DAY}{landing.LOADED_SUFFIX}"
    for label in ("temp", "snapshot"):
        code, message = seen[label]
        assert code == errno.ENOSPC, seen
        assert f"for {loaded}" in message and f"day {DAY}" in message, message
        assert "No space left on device" in message


def test_raw_attempts_fails_at_once_naming_the_file_it_could_not_publish(
    api, landing_zone: LandingZone
) -> None:
    final = landing_zone.payload_path(DAY)
    (final / "in the way").mkdir(parents=True)
    result = materialize(
        [raw_attempts],
        resources={"itresume_api": api, "landing": landing_zone},
        partition_key=DAY.isoformat(),
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.user_failure_data.description
    assert f"cannot publish {final} (landing zone, day {DAY})" in message, message
    assert temps(final.parent) == []


MANY_DAYS = """
import os, resource, sys
from contextlib import ExitStack
from datetime import date, timedelta
from itresume_pipeline import landing
zone = landing.LandingZone(root=os.environ["ITRESUME_HOME"])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))  # a small soft limit, as on many hosts
days = [date(2021, 1, 1) + timedelta(days=n) for n in range(400)]
with ExitStack() as claims:
    for day in days:
        claims.enter_context(landing.claim_temp(zone.loaded_path(day)))
    temps = [zone.download_temp(day) for day in days]
    print(len(zone.sweep(days[:1])), flush=True)
    for temp in temps:
        landing.discard(temp)
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 64)
"""


@pytest.mark.processes
def test_a_run_over_years_of_days_is_not_stopped_by_the_descriptor_limit(
    itresume_home: Path, landing_zone: LandingZone
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", MANY_DAYS],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ITRESUME_HOME": str(itresume_home)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True"]  # every temp held, none swept
    assert temps(landing_zone.payload_path(DAY).parent) == []
