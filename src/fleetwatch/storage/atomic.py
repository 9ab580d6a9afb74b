"""Files of this machine's own state that appear whole or not at all: the model pack, the
scheduler's state, the alert journal's compaction. (The data plane's files go through
:mod:`fleetwatch.storage.store`, which writes a local file the same way.)

A file is written to a temporary name beside its target, flushed and fsync'ed, renamed over the
target (atomic on POSIX), and its directory fsync'ed so that the rename itself survives a power
cut. When the write fails (a full disk: ``ENOSPC``), the temporary file is removed and the error
is raised as a :class:`~fleetwatch.errors.StorageError` that names the path and the cause.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fleetwatch.storage.store import (
    TEMPORARY_SUFFIX,
    fsync_directory,
    storage_error,
    temporary_name,
    write_file,
)

__all__ = [
    "fsync_directory",
    "remove_stale_temporaries",
    "storage_error",
    "temporary_name",
    "write_atomically",
    "write_bytes_atomically",
    "write_text_atomically",
]


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace the local file ``path`` with what ``write(handle)`` writes."""
    write_file(path, write)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    write_file(path, data)


def write_text_atomically(path: Path, text: str) -> None:
    write_file(path, text.encode())


def remove_stale_temporaries(directory: Path, older_than: float = 0.0) -> int:
    """Delete temporary files a crashed writer left in the local ``directory`` (those older
    than ``older_than`` seconds); how many."""
    removed = 0
    if directory.is_dir():
        for stale in directory.glob(f".*{TEMPORARY_SUFFIX}"):
            with contextlib.suppress(OSError):
                if older_than and stale.stat().st_mtime > time.time() - older_than:
                    continue
                stale.unlink()
                removed += 1
    return removed


def check_appendable(path: Path, flag: str) -> None:
    """A file a command will append to later (its folder made if need be), or one line now
    that names ``flag`` and the fix: a folder, or a path under a file, never can be."""
    from fleetwatch.errors import InvalidInputError

    if path.is_dir():
        raise InvalidInputError(f"{flag} {path} is a folder: give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError | NotADirectoryError):
            reason = "a part of its path is a file"
        raise InvalidInputError(
            f"{flag} {path}: cannot be written ({reason}); give a writable file path"
        ) from None
