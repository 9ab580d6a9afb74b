"""The data plane's one door: a :class:`DataStore` reads, writes, lists and deletes every file of
a data directory, local or in an object store, and nothing else in fleetwatch does.

A store speaks in *keys*: ``/``-separated names relative to the data directory
(``aggregates/date=2026-11-22/hour=10/p0003-000000012000-000000015999.parquet``); which key
holds what is :mod:`fleetwatch.storage.layout`'s. Two implementations keep one contract
(``tests/unit/storage/test_store_contract.py`` runs the same suite on both):

- :class:`LocalStore`, a folder: a write goes to a temporary name, is fsync'ed and renamed over
  its key (atomic on POSIX), and the folder is fsync'ed;
- :class:`ObjectStore`, an ``s3://bucket/prefix`` URL through fsspec: a write is one PUT (S3
  has no rename, and a PUT appears whole or not at all).

The contract, for both:

- **whole or nothing**: a reader sees an object's old bytes or its new ones, never a part; a
  failed write leaves the old object (and no stray temporary) and raises
  :class:`~fleetwatch.errors.StorageError` naming the key and the cause;
- **read your writes, fresh listings**: :meth:`DataStore.listing` asks the file system or the
  store every time (fsspec's listing cache is off: a decision taken on a cached listing lost
  data once, see docs/guarantees.md), so an object written before the call is listed;
- **versions**: every listed object carries a ``version`` that changes whenever the object is
  replaced; :meth:`DataStore.write_if` replaces an object only if it still has the version the
  writer expects (a conditional PUT in S3, a lock around compare-and-rename locally), which
  is how a worker that lost a partition is fenced off (see :mod:`.checkpoints`);
- **keys are checked**: a key is relative, has no empty, ``.`` or ``..`` part, so no caller can
  reach outside the data directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Protocol, cast

from fleetwatch.errors import FleetwatchError, StorageError

if TYPE_CHECKING:
    import pyarrow.fs

Writer = Callable[[BinaryIO], object]
Content = bytes | Writer

#: Object-store URL schemes accepted for a data directory. S3 (and S3-compatible stores: MinIO,
#: Ceph, R2) is tested; the others go through the same fsspec code and need their package.
SCHEMES: Final = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs",
                  "az": "adlfs"}  # fmt: skip
#: Temporary files are ``.<name>.<random>.tmp`` beside their target: hidden from listings of
#: data files, unique per writer, recognisable for clean-up after a crash.
TEMPORARY_SUFFIX: Final = ".tmp"


@dataclass(frozen=True, order=True)
class StoredObject:
    """One object as a listing found it."""

    key: str
    size: int
    version: str  # changes whenever the object is replaced
    modified_ns: int = 0  # the file's or object's modification time (0: unknown)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def folder(self) -> str:
        return self.key.rsplit("/", 1)[0] if "/" in self.key else ""


class ConflictError(StorageError):
    """A conditional write found another version than the one its writer expected."""


class DataStore(Protocol):
    """Every file of one data directory. Methods block on I/O and may be called from any
    thread; they raise :class:`~fleetwatch.errors.StorageError` (one line: the key, the cause,
    what to check) for a store that refuses, and ``FileNotFoundError`` where a key must exist."""

    #: The data directory as text: :func:`open_store` of it gives an equal store (a Dask
    #: worker opens the client's store so).
    location: str
    #: True for an object store (no rename, no folders, a request per call).
    remote: bool

    def describe(self, key: str) -> str:
        """The key's full path or URL, for messages."""

    def read(self, key: str) -> bytes:
        """The whole object in one read (``FileNotFoundError`` when there is none). A read
        racing a replacement gets the old bytes or the new ones."""

    def write(self, key: str, content: Content) -> str:
        """Create or replace the object, whole or not at all; its new version.
        ``content`` is the bytes, or a function that writes them to a binary handle."""

    def write_if(self, key: str, content: Content, expected: str | None) -> str:
        """:meth:`write`, only if the object's version is still ``expected`` (None: only if
        there is no object); raises :class:`ConflictError` otherwise, having written nothing."""

    def version(self, key: str) -> str | None:
        """The object's current version, None when there is none."""

    def listing(self, prefix: str) -> list[StoredObject]:
        """Every object under the folder ``prefix`` (at any depth), sorted by key, asked of the
        store now (never a cached answer). Hidden names (a part starting with ``.``) are
        included: callers decide what they mean."""

    def folders(self, prefix: str) -> list[str]:
        """The names of the folders directly under ``prefix`` (one listing)."""

    def delete(self, keys: Iterable[str]) -> int:
        """Delete these objects (those already gone are skipped); how many were deleted."""

    def move(self, source: str, target: str) -> bool:
        """Publish ``source`` under ``target`` (replacing it) and remove ``source``; False when
        ``source`` is gone (moved already). Locally a rename; in an object store a copy, then
        a delete: ``target`` appears whole either way."""

    def remove_empty_folder(self, prefix: str) -> None:
        """Remove the folder ``prefix`` if it is empty (object stores have no folders)."""

    def temporaries(self, prefix: str) -> list[StoredObject]:
        """The store's own left-overs under ``prefix``, at any depth: temporaries of writes a
        crash cut short, which :meth:`listing` leaves out (an object store leaves none: a PUT
        is whole or absent). Hidden names; delete one only where no write to it can be under
        way (a partition's, by its owner)."""

    def arrow(self, key: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
        """``(source, filesystem)`` for pyarrow's readers (which read byte ranges)."""

    def local_path(self, key: str) -> Path | None:
        """The key's path on this machine's file system (None in an object store)."""


# ---------------------------------------------------------------------------------- keys


def check_key(key: str) -> str:
    """A key as given, once it is a relative name without an empty, ``.`` or ``..`` part.

    >>> check_key("aggregates/date=2026-11-22/hour=10/b-00.parquet")
    'aggregates/date=2026-11-22/hour=10/b-00.parquet'
    >>> check_key("models/../../etc/passwd")
    Traceback (most recent call last):
    ...
    fleetwatch.errors.StorageError: invalid storage key 'models/../../etc/passwd'
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"invalid storage key {key!r}")
    return key


def join(*parts: str) -> str:
    """Key parts joined with ``/`` (empty parts left out)."""
    return "/".join(part.strip("/") for part in parts if part)


def _content_bytes(content: Content) -> bytes:
    if isinstance(content, bytes | bytearray | memoryview):
        return bytes(content)
    buffer = io.BytesIO()
    content(buffer)
    return buffer.getvalue()


def storage_error(target: str, exc: OSError) -> StorageError:
    """A one-line error for a failed write: the path, the cause, and what to do about it."""
    cause = os.strerror(exc.errno) if exc.errno else str(exc)
    advice = {
        errno.ENOSPC: "free some space and run the command again",
        errno.EDQUOT: "free some space and run the command again",
        errno.EROFS: "the file system is read-only: use a writable --data-dir",
        errno.EACCES: "check the permissions of the data directory",
        errno.EPERM: "check the permissions of the data directory",
        errno.ENOTDIR: "a file stands where a folder should: check --data-dir",
    }.get(exc.errno or 0, "check the data directory")
    return StorageError(f"cannot write {target}: {cause}; {advice}")


# ---------------------------------------------------------------------------------- local


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}")


def write_file(path: Path, content: Content) -> None:
    """Create or replace the local file ``path`` whole or not at all (temporary name, fsync,
    rename, fsync of the folder); a failure removes the temporary and raises a one-line
    :class:`StorageError`. Also what this machine's own state files (the model pack, the
    scheduler's state) are written with."""
    temporary = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise storage_error(str(path), exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _stat_version(info: os.stat_result) -> str:
    # A rename gives the key a new inode; size and nanosecond time guard against inode reuse.
    return f"{info.st_ino:x}-{info.st_mtime_ns:x}-{info.st_size:x}"


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created when missing), released on exit or when
    the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


class LocalStore:
    """A :class:`DataStore` in a local (or network-mounted) folder."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root.resolve()) if self.root.exists() else str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def describe(self, key: str) -> str:
        return str(self.root / key) if key else str(self.root)

    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except IsADirectoryError:
            raise FileNotFoundError(str(path)) from None
        try:
            size = os.fstat(descriptor).st_size
            data = os.read(descriptor, size)
            while len(data) < size and (more := os.read(descriptor, size - len(data))):
                data += more
            return data
        finally:
            os.close(descriptor)

    def write(self, key: str, content: Content) -> str:
        path = self._path(key)
        write_file(path, content)
        try:
            return _stat_version(path.stat())
        except OSError:  # replaced again right now: a version that matches nothing
            return "?"

    def write_if(self, key: str, content: Content, expected: str | None) -> str:
        path = self._path(key)
        if expected is None:  # create only: a hard link fails when the name exists
            return self._create(path, content)
        # Every conditional writer of this key takes the lock around compare-and-rename, so the
        # two happen as one step for them (a writer dying inside releases it).
        with _flocked(path.with_name(f".{path.name}.lock")):
            current = self.version(key)
            if current != expected:
                raise ConflictError(
                    f"{path} changed (version {current}, expected {expected}): another "
                    "writer has it now"
                )
            return self.write(key, content)

    def _create(self, path: Path, content: Content) -> str:
        temporary = temporary_name(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as handle:
                handle.write(_content_bytes(content))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise ConflictError(f"{path} exists: another writer made it first") from None
            fsync_directory(path.parent)
            return _stat_version(path.stat())
        except OSError as exc:
            raise storage_error(str(path), exc) from exc
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()

    def version(self, key: str) -> str | None:
        try:
            info = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return None if not _is_file(info) else _stat_version(info)

    def listing(self, prefix: str) -> list[StoredObject]:
        # not the store's own files: writes under way, compare-and-swap locks
        return self._walked(prefix, lambda name: not _is_own(name))

    def temporaries(self, prefix: str) -> list[StoredObject]:
        return self._walked(prefix, lambda name: _is_own(name) and name.endswith(TEMPORARY_SUFFIX))

    def _walked(self, prefix: str, keep: Callable[[str], bool]) -> list[StoredObject]:
        found = []
        for path, info in _walk(self._path(prefix) if prefix else self.root):
            if keep(path.name):
                key = path.relative_to(self.root).as_posix()
                found.append(StoredObject(key, info.st_size, _stat_version(info), info.st_mtime_ns))
        return sorted(found)

    def folders(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            with os.scandir(base) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, keys: Iterable[str]) -> int:
        removed = 0
        for key in keys:
            try:
                self._path(key).unlink()
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise storage_error(self.describe(key), exc) from exc
        return removed

    def remove_empty_folder(self, prefix: str) -> None:
        with contextlib.suppress(OSError):
            self._path(prefix).rmdir()

    def move(self, source: str, target: str) -> bool:
        source_path, target_path = self._path(source), self._path(target)
        try:
            target_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source_path, target_path)
            fsync_directory(target_path.parent)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise storage_error(str(target_path), exc) from exc
        return True

    def arrow(self, key: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
        return str(self._path(key)), None

    def local_path(self, key: str) -> Path | None:
        return self._path(key) if key else self.root


def _is_own(name: str) -> bool:
    """The local store's own files: temporaries of writes under way and locks."""
    return name.startswith(".") and name.endswith((TEMPORARY_SUFFIX, ".lock"))


def _is_file(info: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(info.st_mode)


def _walk(base: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every regular file under ``base`` with its stat (a file vanishing meanwhile is left
    out: it was replaced or deleted, which the next listing shows)."""
    try:
        entries = list(os.scandir(base))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path), entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue


# ---------------------------------------------------------------------------------- objects


class ObjectStore:
    """A :class:`DataStore` under an object-store URL (``s3://bucket/prefix``), over fsspec.

    Its file system is its own instance with fsspec's listing cache off: every listing is a
    request. Credentials and the endpoint come from the backend's usual places (for S3:
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``~/.aws``); none of
    them is ever printed."""

    remote = True

    def __init__(self, url: str) -> None:
        self.location = url.rstrip("/")
        scheme, _, rest = self.location.partition("://")
        self.scheme = scheme
        self.bucket = rest.split("/", 1)[0]
        self._base = rest  # bucket/prefix: fsspec's name for the root
        self._fs: Any = None
        self._pid = 0

    def __repr__(self) -> str:
        return f"ObjectStore({self.location!r})"

    def __getstate__(self) -> dict[str, Any]:  # a Dask task carries the URL, not a client
        return {"location": self.location}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"])  # type: ignore[misc]

    @property
    def fs(self) -> Any:
        """The fsspec file system (made on first use in each process: an async client is not
        fork-safe; the listing cache off)."""
        if self._fs is None or self._pid != os.getpid():
            import fsspec

            try:
                cls = fsspec.get_filesystem_class(self.scheme)
            except (ImportError, ValueError) as exc:
                package = SCHEMES.get(self.scheme, "fsspec")
                extra = "'fleetwatch[s3]'" if package == "s3fs" else package
                raise FleetwatchError(
                    f"{self.scheme}:// needs the {package} package: pip install {extra}"
                ) from exc
            self._fs = cls(skip_instance_cache=True, use_listings_cache=False)
            self._pid = os.getpid()
        return self._fs

    def _full(self, key: str) -> str:
        return f"{self._base}/{check_key(key)}"

    def describe(self, key: str) -> str:
        return f"{self.location}/{key}" if key else self.location

    def _fail(self, key: str, exc: BaseException, doing: str = "write") -> StorageError:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StorageError(
            f"cannot {doing} {self.describe(key)}: {cause}; check the bucket, the credentials "
            "and the endpoint"
        )

    def read(self, key: str) -> bytes:
        # cat_file is one unconditional GET: open() asks for the ETag and then reads on
        # condition of it, failing when a writer replaces the object in between
        try:
            return cast(bytes, self.fs.cat_file(self._full(key)))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._fail(key, exc, "read") from exc

    def write(self, key: str, content: Content) -> str:
        data = _content_bytes(content)
        try:
            response = self.fs.pipe_file(self._full(key), data)
        except Exception as exc:
            raise self._fail(key, exc) from exc
        return _etag(response) or self.version(key) or "?"

    def write_if(self, key: str, content: Content, expected: str | None) -> str:
        data = _content_bytes(content)
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": f'"{expected}"'}
        try:
            response = self.fs.pipe_file(self._full(key), data, **condition)
        except Exception as exc:
            if _precondition_failed(exc):
                raise ConflictError(
                    f"{self.describe(key)} changed (expected version {expected}): another "
                    "writer has it now"
                ) from None
            raise self._fail(key, exc) from exc
        return _etag(response) or self.version(key) or "?"

    def version(self, key: str) -> str | None:
        try:
            info = self.fs.info(self._full(key))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail(key, exc, "read") from exc
        if info.get("type") == "directory":
            return None
        return _version_of(info)

    def listing(self, prefix: str) -> list[StoredObject]:
        base = self._full(prefix) if prefix else self._base
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._fail(prefix, exc, "list") from exc
        listed = []
        start = self._base + "/"
        for name, info in found.items():
            if info.get("type") == "directory" or not name.startswith(start):
                continue
            listed.append(
                StoredObject(
                    name[len(start) :],
                    int(info.get("size") or 0),
                    _version_of(info),
                    _modified_ns(info),
                )
            )
        return sorted(listed)

    def folders(self, prefix: str) -> list[str]:
        base = self._full(prefix) if prefix else self._base
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._fail(prefix, exc, "list") from exc
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
        )

    def delete(self, keys: Iterable[str]) -> int:
        chosen = [self._full(key) for key in keys]
        if not chosen:
            return 0
        removed = 0
        for start in range(0, len(chosen), 1000):  # S3 deletes up to 1,000 keys a request
            batch = chosen[start : start + 1000]
            try:
                existing = [path for path in batch if self.fs.exists(path)]
                if existing:
                    self.fs.rm(existing)
            except FileNotFoundError:
                continue
            except Exception as exc:
                raise self._fail(batch[0], exc, "delete") from exc
            removed += len(existing)
        return removed

    def remove_empty_folder(self, prefix: str) -> None:
        return None

    def temporaries(self, prefix: str) -> list[StoredObject]:
        return []  # a PUT leaves nothing behind

    def move(self, source: str, target: str) -> bool:
        try:
            self.fs.copy(self._full(source), self._full(target))
        except FileNotFoundError:
            return False
        except Exception as exc:
            if "NoSuchKey" in type(exc).__name__ or "Not Found" in str(exc):
                return False
            raise self._fail(target, exc) from exc
        try:  # no HEAD first, as delete() asks: the copy just read it (a move: 40 ms, not 53)
            self.fs.rm([self._full(source)])
        except FileNotFoundError:
            pass  # another mover removed it meanwhile: the target is whole either way
        except Exception as exc:
            raise self._fail(source, exc, "delete") from exc
        return True

    def arrow(self, key: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
        import pyarrow.fs

        return self._full(key), pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(self.fs))

    def local_path(self, key: str) -> Path | None:
        return None

    def check_bucket(self) -> None:
        """Fail with one line when the bucket is missing or not reachable."""
        try:
            exists = self.fs.exists(self.bucket)
        except FleetwatchError:
            raise
        except Exception as exc:
            raise self._fail("", exc, "reach") from exc
        if not exists:
            raise FleetwatchError(
                f"bucket {self.bucket!r} of data directory {self.location} does not exist or is "
                "not readable with these credentials (create it, or check --data-dir)"
            )

    def read_only_filesystem(self) -> Any:
        """An fsspec file system over this store that can open for reading only and has no
        way to delete or create anything (for DuckDB, which writes through a registered file
        system in place)."""
        from fsspec.spec import AbstractFileSystem

        inner = self.fs

        class ReadOnlyFileSystem(AbstractFileSystem):  # type: ignore[misc]
            protocol = inner.protocol

            def __init__(self) -> None:
                super().__init__(skip_instance_cache=True)

            def _open(self, path: str, mode: str = "rb", **_: Any) -> Any:
                if mode != "rb":
                    raise PermissionError(f"{path}: this connection only reads")
                return inner.open(path, "rb")

            def info(self, path: str, **_: Any) -> Any:
                return inner.info(path)

            def ls(self, path: str, detail: bool = True, **_: Any) -> Any:
                return inner.ls(path, detail=detail)

            def modified(self, path: str) -> Any:
                return inner.modified(path)

        return ReadOnlyFileSystem()


def _etag(response: Any) -> str | None:
    if isinstance(response, dict) and response.get("ETag"):
        return str(response["ETag"]).strip('"')
    return None


def _version_of(info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    modified: Any = info.get("LastModified") or info.get("mtime")
    stamp = modified.timestamp() if hasattr(modified, "timestamp") else modified
    return hashlib.sha256(f"{info.get('size')}:{stamp}".encode()).hexdigest()[:16]


def _modified_ns(info: dict[str, Any]) -> int:
    modified: Any = info.get("LastModified") or info.get("mtime")
    return int(modified.timestamp() * 1e9) if hasattr(modified, "timestamp") else 0


def _precondition_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        text = f"{type(seen).__name__} {seen}"
        if "PreconditionFailed" in text or "412" in text or "Precondition" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# ---------------------------------------------------------------------------------- opening


def is_url(text: str) -> bool:
    return "://" in text


def check_location(raw: str) -> str:
    """A data directory's text, its URL scheme and bucket checked (no package imported).

    >>> check_location("s3://fleet/prod/")
    's3://fleet/prod'
    >>> check_location("ftp://x/y")
    Traceback (most recent call last):
    ...
    ValueError: 'ftp://x/y': unsupported storage scheme 'ftp' (use a folder or s3://bucket/prefix)
    """
    text = str(raw).strip()
    if not text:
        raise ValueError("empty: give a folder (fleetwatch-data) or s3://bucket/prefix")
    if not is_url(text):
        return text
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        return rest
    if scheme not in SCHEMES:
        raise ValueError(
            f"{text!r}: unsupported storage scheme {scheme!r} (use a folder or s3://bucket/prefix)"
        )
    if not rest.split("/", 1)[0]:
        raise ValueError(f"{text!r} names no bucket (use s3://bucket/prefix)")
    return f"{scheme}://{rest.rstrip('/')}"


def open_store(location: str | Path) -> DataStore:
    """The store of a data directory: a folder, or an object-store URL."""
    text = str(location)
    if not is_url(text):
        return LocalStore(Path(text).expanduser())
    return ObjectStore(check_location(text))
