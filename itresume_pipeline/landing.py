"""The landing zone: verbatim gzip payloads per UTC day, written atomically, kept for replay.

`LandingZone`, the resource that raw_attempts writes and postgres_attempts reads, says where a
day's files are; the functions below it work on paths. For a day D, `$ITRESUME_HOME/raw/attempts/`
holds:

- `D.json.gz`: the latest complete download of D, what `raw_attempts` published last.
- `D.loaded.json.gz`: the payload last loaded into PostgreSQL, byte for byte. It is replaced only
  once a newer payload's load has committed, so no later download (empty, smaller, broken) can
  destroy the copy the warehouse was built from: to replay it, copy it over `D.json.gz` and
  materialize `postgres_attempts`. It is a hard link to the loaded file, so it takes no space
  while both names hold the same payload.
- `.D.json.gz.<uuid>.partial` and `.D.loaded.json.gz.<uuid>.partial`: the temp file of a download
  in flight and the snapshot of a load in flight. Their process holds a shared `flock` on each for
  as long as it uses it; a kill -9 releases it, and the next run of the day deletes every temp
  nobody holds (`sweep_stale_temps`).

A payload is streamed to its temp file, checked to be a complete JSON array, and only then renamed
into place, so a half-written or broken download never counts. Every error of the file system
names the path and the day, so a full disk says which write it stopped.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import resource
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import date
from pathlib import Path

from dagster import ConfigurableResource
from isal import igzip
from pydantic import Field

TEMP_SUFFIX = ".partial"
PAYLOAD_SUFFIX = ".json.gz"
LOADED_SUFFIX = ".loaded.json.gz"
_CLAIM_TRIES = 5  # a sweep may take a temp between its creation and its lock; then a new name
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK}  # file systems without hard links
_held: dict[Path, int] = {}  # temps of temp_path_for -> the descriptor that holds their lock
_held_lock = threading.Lock()


class LandingError(OSError):
    """A file system error of the landing zone; the message names the path and the day."""


class LandingZone(ConfigurableResource):
    """Where each day's payload and loaded copy are: one resource for both ingestion assets, so
    the writer and the reader cannot disagree about a path."""

    root: str = Field(description="$ITRESUME_HOME; the files are in raw/attempts/ under it.")

    @property
    def directory(self) -> Path:
        return Path(self.root).expanduser().absolute() / "raw" / "attempts"

    def payload_path(self, day: date) -> Path:
        """The latest complete download of `day`."""
        return self.directory / f"{day.isoformat()}{PAYLOAD_SUFFIX}"

    def loaded_path(self, day: date) -> Path:
        """The payload last loaded into PostgreSQL for `day`."""
        return self.directory / f"{day.isoformat()}{LOADED_SUFFIX}"

    def sweep(self, days: list[date], *, loaded: bool = False) -> list[Path]:
        """Delete the temps of killed runs beside these days' payloads (or loaded copies)."""
        name = self.loaded_path if loaded else self.payload_path
        return [temp for day in days for temp in sweep_stale_temps(name(day))]

    def download_temp(self, day: date) -> Path:
        """A locked temp for a download of `day`; `publish_download` or `discard` ends it."""
        return temp_path_for(self.payload_path(day))

    def publish_download(self, day: date, temp: Path) -> None:
        publish(temp, self.payload_path(day))

    def snapshot(self, day: date) -> AbstractContextManager[Path]:
        """A locked hard link to the day's payload: a load reads it while a newer download may
        replace the payload, and `keep_loaded` makes it the loaded copy once the load commits."""
        return claim_temp(self.loaded_path(day), source=self.payload_path(day))

    def keep_loaded(self, day: date, snapshot: Path) -> None:
        publish(snapshot, self.loaded_path(day))


def temp_path_for(final: Path) -> Path:
    """A new temp file beside `final` (same directory: the final rename is atomic), locked until
    `publish` or `discard` releases it or the process ends; `claim_temp` also cleans up."""
    with landing_errors("create a temp file for", final):
        final.parent.mkdir(parents=True, exist_ok=True)
        temp, fd = _create_locked(final, None)
    with _held_lock:
        _held[temp] = fd
    return temp


@contextmanager
def claim_temp(final: Path, *, source: Path | None = None) -> Iterator[Path]:
    """A new temp file beside `final`, locked while the block runs and removed after it unless
    it was published. With `source`, the temp starts as a hard link to it (a snapshot that a
    later replacement of `source` does not touch)."""
    with landing_errors("create a temp file for", final):
        final.parent.mkdir(parents=True, exist_ok=True)
        temp, fd = _create_locked(final, source)
    try:
        yield temp
    finally:
        try:
            discard(temp)  # still under our lock, so no sweep can race us
        finally:
            os.close(fd)


def sweep_stale_temps(final: Path) -> list[Path]:
    """Delete the temps of `final` that no live process holds, i.e. those of killed runs."""
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(final.name)}\.[0-9a-f]{{32}}{re.escape(TEMP_SUFFIX)}")
    removed = []
    for temp in sorted(final.parent.glob(f".{final.name}.*{TEMP_SUFFIX}")):
        if pattern.fullmatch(temp.name) and _remove_if_unlocked(temp):
            removed.append(temp)
    return removed


def publish(temp: Path, final: Path) -> None:
    """Atomically replace `final` with the fully written `temp`, durably."""
    with landing_errors("publish", final):
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, final)
        _release(temp)
        directory = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)


def discard(temp: Path) -> None:
    with landing_errors("remove", temp):
        temp.unlink(missing_ok=True)
    _release(temp)


def open_payload(path: Path):
    """Decompressing reader of a landing file (binary).

    ISA-L's gzip (python-isal) reads and writes the standard format about 3x faster than zlib,
    which matters on a 1M-record day: inflating is on the load's critical path.
    """
    if not path.exists():
        raise FileNotFoundError(
            f"landing file {path} is missing: materialize raw_attempts for {day_of(path)} first"
        )
    return igzip.open(path, "rb")


def day_of(path: Path) -> str:
    """The day a landing file or temp belongs to, from its name; `unknown day` otherwise."""
    head = path.name.lstrip(".")[:10]
    try:
        return date.fromisoformat(head).isoformat()
    except ValueError:
        return "unknown day"


@contextmanager
def landing_errors(action: str, path: Path) -> Iterator[None]:
    """Turn a bare OSError (`[Errno 28] No space left on device`) into one naming what failed."""
    try:
        yield
    except LandingError:
        raise
    except OSError as error:
        reason = error.strerror or str(error)
        raise LandingError(
            error.errno, f"cannot {action} {path} (landing zone, day {day_of(path)}): {reason}"
        ) from error


# -- internals --------------------------------------------------------------------------------


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")


def _create_locked(final: Path, source: Path | None) -> tuple[Path, int]:
    """Create a temp, take its shared lock, and make sure no sweep removed it before that."""
    for _ in range(_CLAIM_TRIES):
        temp = _temp_name(final)
        try:
            _create(temp, source)
            fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # swept between its creation and its opening
        except OSError as error:
            if error.errno != errno.EMFILE or not _raise_descriptor_limit():
                raise
            temp.unlink(missing_ok=True)
            continue
        fcntl.flock(fd, fcntl.LOCK_SH)  # a sweep holds its exclusive lock only to unlink
        if _is_same_file(fd, temp):
            return temp, fd
        os.close(fd)
    raise OSError(errno.EAGAIN, f"no temp file survived {_CLAIM_TRIES} tries")


def _raise_descriptor_limit() -> bool:
    """A run over years of days holds a descriptor per day, more than the usual soft limit of
    1024: raise it to the hard limit. False if it is there already."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft >= target:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return False
    return True


def _release(temp: Path) -> None:
    with _held_lock:
        fd = _held.pop(temp, None)
    if fd is not None:
        os.close(fd)


def _create(temp: Path, source: Path | None) -> None:
    if source is not None:
        try:
            os.link(source, temp)
            return
        except OSError as error:
            if error.errno not in _NO_LINKS:
                raise
        shutil.copyfile(source, temp)
        return
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))


def _remove_if_unlocked(temp: Path) -> bool:
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live process uses it
        if not _is_same_file(fd, temp):
            return False
        discard(temp)
        return True
    finally:
        os.close(fd)


def _is_same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
