"""The landing zone: per UTC day D, `D.json.gz` (the latest complete download) and
`D.loaded.json.gz` (the payload last loaded), renamed into place once complete. Temps are held
under a shared `flock` while in use, so the next run deletes those of killed runs."""

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

    def __str__(self) -> str:
        return self.strerror


class LandingZone(ConfigurableResource):
    """Where each day's files are: one resource for both ingestion assets, so they agree."""

    root: str = Field(description="$ITRESUME_HOME; the files are in raw/attempts/ under it.")

    @property
    def directory(self) -> Path:
        return Path(self.root).expanduser().absolute() / "raw" / "attempts"

    def payload_path(self, day: date) -> Path:
        return self.directory / f"{day.isoformat()}{PAYLOAD_SUFFIX}"

    def loaded_path(self, day: date) -> Path:
        return self.directory / f"{day.isoformat()}{LOADED_SUFFIX}"

    def sweep(self, days: list[date], *, loaded: bool = False) -> list[Path]:
        name = self.loaded_path if loaded else self.payload_path
        return [temp for day in days for temp in sweep_stale_temps(name(day))]

    def download_temp(self, day: date) -> Path:
        return temp_path_for(self.payload_path(day))

    def publish_download(self, day: date, temp: Path) -> None:
        publish(temp, self.payload_path(day))

    def snapshot(self, day: date) -> AbstractContextManager[Path]:
        """A locked hard link to the day's payload, which a newer download cannot change."""
        return claim_temp(self.loaded_path(day), source=self.payload_path(day))


def temp_path_for(final: Path) -> Path:
    """A new temp file beside `final`, locked until `publish` or `discard` or the process ends."""
    temp, fd = _create_locked(final, None)
    with _held_lock:
        _held[temp] = fd
    return temp


@contextmanager
def claim_temp(final: Path, *, source: Path | None = None) -> Iterator[Path]:
    """A temp beside `final`, locked for the block and removed after it unless published; with
    `source`, a hard link to it."""
    temp, fd = _create_locked(final, source)
    try:
        yield temp
    finally:
        try:
            discard(temp)  # still under our lock, so no sweep can race us
        finally:
            os.close(fd)


def sweep_stale_temps(final: Path) -> list[Path]:
    """Delete the temps of `final` that no live process holds (those of killed runs)."""
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(final.name)}\.[0-9a-f]{{32}}{re.escape(TEMP_SUFFIX)}")
    removed = []
    for temp in sorted(final.parent.glob(f".{final.name}.*{TEMP_SUFFIX}")):
        if pattern.fullmatch(temp.name) and _remove_if_unlocked(temp):
            removed.append(temp)
    return removed


def publish(temp: Path, final: Path) -> None:
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
    """Decompressing reader of a landing file: ISA-L's gzip inflates about 3x faster than zlib."""
    return igzip.open(path, "rb")


def day_of(path: Path) -> str:
    head = path.name.lstrip(".")[:10]
    try:
        return date.fromisoformat(head).isoformat()
    except ValueError:
        return "unknown day"


@contextmanager
def landing_errors(action: str, path: Path) -> Iterator[None]:
    """Turn a bare OSError into one naming the action, the path and the day."""
    try:
        yield
    except LandingError:
        raise
    except OSError as error:
        reason = error.strerror or str(error)
        raise LandingError(
            error.errno, f"cannot {action} {path} (landing zone, day {day_of(path)}): {reason}"
        ) from error


def _create_locked(final: Path, source: Path | None) -> tuple[Path, int]:
    with landing_errors("create a temp file for", final):
        final.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(_CLAIM_TRIES):
            temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
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
    """A run over years of days holds a descriptor per day: raise the soft limit to the hard."""
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
    if source is None:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        return
    try:
        os.link(source, temp)
    except OSError as error:
        if error.errno not in _NO_LINKS:
            raise
        shutil.copyfile(source, temp)


def _remove_if_unlocked(temp: Path) -> bool:
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _is_same_file(fd, temp):
            discard(temp)
            return True
        return False
    except BlockingIOError:
        return False  # a live process uses it
    finally:
        os.close(fd)


def _is_same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False
