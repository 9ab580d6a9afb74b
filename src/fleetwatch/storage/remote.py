"""Object storage: a data directory that is an ``s3://bucket/prefix`` URL.

The data plane (aggregates, the late sink, the aggregator's checkpoints and the model registry)
lives under the URL; what only one machine needs (the DuckDB file, locks, the model pack, the
Faust worker's state) lives in a local folder, ``local_dir``. Paths under the URL are
:class:`upath.UPath` objects (fsspec underneath): they offer the part of :class:`pathlib.Path`
the data plane uses (``/``, ``name``, ``glob``, ``iterdir``, ``stat``, ``open``, ``unlink``),
and this module supplies what differs on a store that has no rename:

- **An object appears whole or not at all**: a PUT is atomic, so a file is written into memory
  and sent in one request (:func:`write_object`); there is no temporary name and no rename.
- **Several objects that belong together** (a model version) are written data first and their
  manifest last; readers ignore a version without a manifest, and the ``ACTIVE`` pointer (one
  object, naming the manifest's digest) is what makes a version live.
- **Names are deterministic** (a live aggregate file is named after its Kafka offsets), so a
  replay after a crash overwrites the same objects instead of adding new ones, exactly as on a
  local disk.

Credentials and the endpoint come from the usual places of the fsspec backend (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``~/.aws``); none of them
is ever printed.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, cast

from fleetwatch.errors import FleetwatchError, StorageError

if TYPE_CHECKING:
    import pyarrow.fs

#: Schemes accepted for a data directory. S3 (and S3-compatible stores: MinIO, Ceph, R2) is
#: tested; the others go through the same fsspec code and need their package installed.
SCHEMES: Final = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs",
                  "az": "adlfs"}  # fmt: skip


def is_remote(path: object) -> bool:
    """True for a path inside an object store (a :class:`upath.UPath` that is not local)."""
    return not isinstance(path, Path) and hasattr(path, "fs")


def parse_location(raw: str) -> Path:
    """A local folder, or an object-store URL checked for its scheme and bucket.

    The URL's path object is typed as :class:`~pathlib.Path`: it offers the subset of its API
    the data plane uses, and this module handles the rest."""
    text = str(raw).strip()
    if "://" not in text:
        return Path(text).expanduser()
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        return Path(rest).expanduser()
    if scheme not in SCHEMES:
        raise ValueError(
            f"{text!r}: unsupported storage scheme {scheme!r} (use a folder or s3://bucket/prefix)"
        )
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise ValueError(f"{text!r} names no bucket (use s3://bucket/prefix)")
    try:
        from upath import UPath
    except ImportError:
        raise ValueError(
            f"{text!r}: object storage needs the s3 extra: pip install 'fleetwatch[s3]'"
        ) from None
    try:
        return cast(Path, UPath(f"{scheme}://{rest.rstrip('/')}"))
    except (ImportError, ValueError) as exc:
        raise ValueError(
            f"{scheme}:// needs the {SCHEMES[scheme]} package: pip install {SCHEMES[scheme]}"
        ) from exc


def location_text(path: Path) -> str:
    """A data directory as a string another process (a Dask worker) turns back into it."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


def default_local_dir(root: Path) -> Path:
    """Where a remote data directory's local files go unless ``local_dir`` says otherwise."""
    url = str(root)
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "fleetwatch" / f"{_bucket(root)}-{digest}"


def _bucket(root: Path) -> str:
    return str(root).split("://", 1)[-1].split("/", 1)[0]


def _fs(path: Path) -> Any:
    return path.fs  # type: ignore[attr-defined]


def _key(path: Path) -> str:
    return str(path.path)  # type: ignore[attr-defined]


def fail(path: Path, exc: BaseException, doing: str = "write") -> StorageError:
    """One line for a failed object-store request: the URL, the cause and what to check."""
    cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StorageError(
        f"cannot {doing} {path}: {cause}; check the bucket, the credentials and the endpoint"
    )


def write_object(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace one object with what ``write(handle)`` writes, in one PUT: readers see
    the old object or the new one, never a part."""
    buffer = io.BytesIO()
    write(buffer)
    try:
        _fs(path).pipe_file(_key(path), buffer.getvalue())
    except Exception as exc:
        raise fail(path, exc) from exc


def read_object(path: Path) -> bytes:
    """A whole object in one GET, unconditional: a read racing a replacement gets the old
    object or the new one (``open()`` asks for the ETag, then reads on condition of it, and
    fails when a new object lands in between). ``FileNotFoundError`` when there is none."""
    return cast(bytes, _fs(path).cat_file(_key(path)))


def check_bucket(root: Path) -> None:
    """Fail with one line when the bucket is missing or not reachable."""
    try:
        exists = _fs(root).exists(_bucket(root))
    except Exception as exc:
        raise fail(root, exc, "reach") from exc
    if not exists:
        raise FleetwatchError(
            f"bucket {_bucket(root)!r} of data directory {root} does not exist or is not "
            "readable with these credentials (create it, or check --data-dir)"
        )


def arrow_filesystem(path: Path) -> pyarrow.fs.FileSystem:
    """A pyarrow file system over the path's fsspec one (pyarrow reads ranges of the object)."""
    import pyarrow.fs

    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(_fs(path)))


def arrow_source(path: Path) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """``(source, filesystem)`` for pyarrow's readers: the local path as it is, or the key
    and a file system for an object."""
    if is_remote(path):
        return _key(path), arrow_filesystem(path)
    return str(path), None


def register_read_only(connection: Any, path: Path) -> None:
    """Let a DuckDB connection read the objects of ``path``'s store, and only read them.

    DuckDB writes through a registered fsspec file system in place (``COPY ... TO`` an
    allowed object would overwrite it), so it is given a wrapper that opens for reading only
    and has no way to delete or create anything."""
    connection.register_filesystem(_read_only(_fs(path)))


def _read_only(inner: Any) -> Any:
    from fsspec.spec import AbstractFileSystem

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


def is_url(path: str) -> bool:
    return "://" in path


def read_url(url: str) -> bytes:
    """A whole object; ``FileNotFoundError`` when there is none (as for a local file)."""
    import fsspec.core

    fs, key = fsspec.core.url_to_fs(url)
    return cast(bytes, fs.cat_file(key))


def url_signature(url: str) -> tuple[int, int, int]:
    """What stands for ``(st_ino, st_size, st_mtime_ns)`` of an object: its size, its ETag's
    first 8 bytes and its modification time (an overwrite changes the ETag)."""
    import fsspec.core

    fs, key = fsspec.core.url_to_fs(url)
    info = fs.info(key)
    etag = str(info.get("ETag", "")).strip('"')[:16] or "0"
    return (int(etag, 16) if all(c in "0123456789abcdef" for c in etag) else 0,
            int(info["size"]), _modified_ns(info))  # fmt: skip


def _modified_ns(info: dict[str, Any]) -> int:
    """An fsspec listing entry's modification time in ns (0 when the store gives none)."""
    modified: Any = info.get("LastModified") or info.get("mtime")
    return int(modified.timestamp() * 1e9) if hasattr(modified, "timestamp") else 0


def subfolders(folder: Path) -> list[str]:
    """Names of the "folders" (common prefixes) directly under ``folder``, in one listing."""
    try:
        entries = _fs(folder).ls(_key(folder), detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"]


def list_tree(folder: Path) -> list[tuple[Path, int, int]]:
    """Every object under ``folder`` with its size and modification time (ns), in one
    paginated listing (a stat per object would be a request each)."""
    base = _key(folder).rstrip("/")
    try:
        found = _fs(folder).find(base, detail=True)
    except FileNotFoundError:
        return []
    listed = []
    for key, info in sorted(found.items()):
        if info.get("type") == "directory" or not key.startswith(base + "/"):
            continue
        listed.append(
            (folder / key[len(base) + 1 :], int(info.get("size") or 0), _modified_ns(info))
        )
    return listed
