"""Files that appear whole or not at all: the one way fleetwatch writes a file it may read back.

A file is written to a temporary name beside its target, flushed and fsync'ed, renamed over the
target (atomic on POSIX), and its directory fsync'ed so that the rename itself survives a power
cut. When the write fails (a full disk: ``ENOSPC``), the temporary file is removed and the error
is raised as a :class:`~fleetwatch.errors.StorageError` that names the path and the cause, so no
half-written file and no stray temporary is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fleetwatch.errors import StorageError
from fleetwatch.storage import remote
from fleetwatch.storage.remote import is_remote

#: Temporary files are ``.<name>.<random>.tmp`` beside their target: hidden from the globs that
#: list data files, unique per writer, and recognisable for clean-up after a crash.
TEMPORARY_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}")


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def storage_error(path: Path, exc: OSError) -> StorageError:
    """A one-line error for a failed write: the path, the cause, and what to do about it."""
    cause = os.strerror(exc.errno) if exc.errno else str(exc)
    advice = {
        errno.ENOSPC: "free some space and run the command again",
        errno.EDQUOT: "free some space and run the command again",
        errno.EROFS: "the file system is read-only: use a writable --data-dir",
        errno.EACCES: "check the permissions of the data directory",
        errno.EPERM: "check the permissions of the data directory",
    }.get(exc.errno or 0, "check the data directory")
    return StorageError(f"cannot write {path}: {cause}; {advice}")


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace ``path`` with what ``write(handle)`` writes, all or nothing."""
    if is_remote(path):
        remote.write_object(path, write)
        return
    temporary = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise storage_error(path, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def read_whole(path: Path) -> bytes:
    """A whole file that :func:`write_atomically` replaces, as one of its versions: locally
    a rename replaced it; in an object store, one unconditional GET
    (:func:`fleetwatch.storage.remote.read_object`). ``FileNotFoundError`` when there is none."""
    return remote.read_object(path) if is_remote(path) else path.read_bytes()


def write_bytes_atomically(path: Path, data: bytes) -> None:
    write_atomically(path, lambda handle: handle.write(data))


def write_text_atomically(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode())


def publish_directory(staging: Path, target: Path) -> None:
    """Rename a fully written ``staging`` folder to ``target`` (which must not exist yet).

    The folder's files are fsync'ed first; on failure the staging folder is removed. In an
    object store there is no folder to rename: the files were written in place and the one
    written last (a manifest) is what makes them count."""
    if is_remote(target):
        return
    try:
        for child in staging.iterdir():
            if child.is_file():
                descriptor = os.open(child, os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
        os.rename(staging, target)
        fsync_directory(target.parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise storage_error(target, exc) from exc


def remove_stale_temporaries(directory: Path, pattern: str = f".*{TEMPORARY_SUFFIX}") -> int:
    """Delete temporary files a crashed writer left in ``directory``; how many."""
    removed = 0
    if not is_remote(directory) and directory.is_dir():
        for stale in directory.glob(pattern):
            with contextlib.suppress(OSError):
                stale.unlink()
                removed += 1
    return removed
