"""Process locks on the data directory, which a killed holder cannot keep.

An advisory ``flock`` on a file under ``<data>/state/``: the kernel releases it when the holding
process exits for any reason (``kill -9`` included), so there is nothing stale to clean up. The
file says who holds it, for the message of whoever finds it taken. Local file systems only: on a
network file system whose ``flock`` is not shared between machines, run the scheduler on one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from fleetwatch.errors import FleetwatchError
from fleetwatch.storage.store import storage_error


class LockedError(FleetwatchError):
    """Another process holds the lock."""


class ProcessLock:
    """``with ProcessLock(path, purpose):`` holds the lock, waiting up to ``wait`` seconds for
    it (0: not at all), or raises :class:`LockedError` naming the holder."""

    def __init__(self, path: Path, purpose: str, wait: float = 0.0, advice: str = "") -> None:
        self.path = path
        self.purpose = purpose
        self.wait = wait
        self.advice = advice
        self._descriptor: int | None = None

    def held(self) -> bool:
        """True while another process holds the lock. Only looks: it creates nothing (a
        read-only data folder stays untouched) and leaves the lock free."""
        try:
            descriptor = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return True
            raise
        finally:
            os.close(descriptor)  # closing the descriptor drops its shared lock, if taken
        return False

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only or full data directory: one line, not a traceback
            raise storage_error(str(self.path), exc) from None
        deadline = time.monotonic() + self.wait
        delay = 0.02
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(descriptor)
                    raise
                if time.monotonic() >= deadline:
                    os.close(descriptor)
                    advice = f"; {self.advice}" if self.advice else ""
                    raise LockedError(f"{self.holder()} is {self.purpose}{advice}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        with contextlib.suppress(OSError):  # who holds it is for messages only (a full disk)
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> ProcessLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class FolderInUseError(FleetwatchError):
    """Another process is using the data folder (a demo replaces only a folder nobody uses)."""


class FolderUse:
    """Who is using a local folder: every process that writes a data directory holds a shared
    ``flock`` on the folder itself for its lifetime (:meth:`share`); ``fleetwatch demo``, which
    empties the folder it is given, first takes it exclusively (:meth:`take`), which fails while
    anyone else holds it, then shares it. The kernel drops the lock when its holder exits.

    The lock is on the folder's own descriptor, so nothing is written into or beside it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._descriptor: int | None = None

    def _open(self) -> int:
        if self._descriptor is None:
            try:
                self._descriptor = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise FolderInUseError(
                    f"cannot open the data folder {self.folder}: {exc.strerror} (check --data-dir)"
                ) from None
        return self._descriptor

    def share(self) -> FolderUse:
        """Hold the folder shared (waits while a demo is preparing it; a few seconds at most)."""
        descriptor = self._open()
        deadline = time.monotonic() + 30.0
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise FolderInUseError(
                        f"{self.folder} is being prepared by `fleetwatch demo`; use another "
                        "--data-dir, or stop that demo"
                    ) from None
                time.sleep(0.1)

    def take(self, purpose: str) -> FolderUse:
        """Hold the folder exclusively, or fail at once naming the reason."""
        descriptor = self._open()
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise FolderInUseError(
                    f"{self.folder} is in use by another fleetwatch process (a demo, an "
                    f"aggregator or a scheduler); {purpose}"
                ) from None
            raise
        return self

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
