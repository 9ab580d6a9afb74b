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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
