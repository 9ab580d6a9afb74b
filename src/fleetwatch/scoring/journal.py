"""The columnar model store: run objects hold the versions, a journal says what is active.

A training run writes its devices' models as rows of one Parquet object per group of devices
(``models/runs/<run>.parquet``: ``device_id``, ``manifest``, ``params``, ``estimator``), then
publishes them with one journal record: each row becomes the device's next version, activated
or put in shadow as asked. Activation, shadow, promotion and rollback are journal records too,
so a training run of any number of devices writes O(1) objects, not a folder per device.

- **Integrity per device.** A record names each version's run object and the sha256 of its row's
  manifest, which holds the sha256 of the row's parameters and estimator: a changed row fails
  its own device when it is read, never the others of its run.
- **One writer per record.** Records are ``models/journal/<seq>.json``, made with the store's
  create-only write: of two writers of the same number, the second re-reads the journal and
  tries the next (its versions numbered again from what it now finds). A run object that no
  record names (its writer died before publishing) is not a version of anything.
- **Reading it back.** The state is the replay of the records, from the newest snapshot
  (``S<seq>.json``: the state after record ``seq``, written every ``SNAPSHOT_EVERY`` records;
  the records it covers are deleted one snapshot later, so a reader that listed them still
  finds them).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from fleetwatch.errors import FleetwatchError
from fleetwatch.storage.models import ESTIMATOR, PARAMS, ModelFiles
from fleetwatch.storage.parquet import open_file
from fleetwatch.storage.store import ConflictError
from fleetwatch.telemetry import is_valid_name

log = logging.getLogger(__name__)

FORMAT = 1
#: A snapshot of the state is written when this many records follow the newest one.
SNAPSHOT_EVERY = 32
#: Rows per row group of a run object: reading one device reads its group only, and damage
#: inside a group's compressed pages fails its devices only (with why), never the others.
ROWS_PER_GROUP = 64
Op = list[Any]  # ["save", device, version, run, digest] | ["activate", device, version, digest]
# | ["shadow", device, version, digest] | ["unshadow", device]


class JournalError(FleetwatchError):
    """The journal cannot be read (a damaged record or snapshot)."""


@dataclass(frozen=True)
class Row:
    """One device's model as a run object holds it: its manifest (without a version: the
    journal record that publishes it gives it one) and its files' bytes."""

    device_id: str
    manifest: bytes  # JSON
    files: dict[str, bytes]  # by the names its manifest's digests use (PARAMS, ESTIMATOR)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()


@dataclass(slots=True)
class DeviceState:
    """What the journal says of one device (beside any folder a fleetwatch before it wrote)."""

    versions: dict[str, tuple[str, str]] = field(default_factory=dict)  # version: (run, digest)
    activated: list[tuple[str, str]] = field(default_factory=list)  # (version, digest), in order
    shadow: tuple[str, str] | None = None
    shadow_set: bool = False  # the journal has said whether it has one (else its folder says)
    damaged: str | None = None  # why the journal's word on it cannot be used (until activated)

    def pinned(self) -> set[str]:
        """The versions that are never forgotten: the active one and the one in shadow."""
        pinned = {self.activated[-1][0]} if self.activated else set()
        if self.shadow is not None:
            pinned.add(self.shadow[0])
        return pinned

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"v": self.versions, "a": self.activated}
        if self.shadow_set:
            document["s"] = self.shadow
        if self.damaged:
            document["x"] = self.damaged
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> DeviceState:
        state = cls(
            {str(v): (str(r), str(d)) for v, (r, d) in document["v"].items()},
            [(str(v), str(d)) for v, d in document["a"]],
        )
        if "s" in document:
            state.shadow_set = True
            state.shadow = None if document["s"] is None else tuple(document["s"])
        state.damaged = document.get("x")
        return state


KINDS = {"save": 5, "activate": 4, "shadow": 4, "unshadow": 2, "publish": 6, "forget": 3}
MODES = {"activate": "a", "shadow": "s", "keep": "k"}


class _Names:
    """Names checked once each (a run's name and "v0001" recur 100,000 times in a record)."""

    def __init__(self) -> None:
        self.valid: set[str] = set()

    def __call__(self, *names: object) -> bool:
        for name in names:
            if name not in self.valid:
                if not (isinstance(name, str) and is_valid_name(name)):
                    return False
                self.valid.add(name)
        return True


def apply(devices: dict[str, DeviceState], ops: Sequence[Op]) -> None:
    """Replay ``ops`` onto ``devices``. A change naming an invalid version or run (a hand-made
    record) damages its device alone: it fails, with why, until a version is activated.

    ``["publish", run, devices, versions, digests, modes]`` is a training group's ``save`` of
    each device's version in ``run``, activated (mode "a"), put in shadow ("s") or kept ("k"):
    one change, not three lists of 100,000. ``["forget", devices, versions]`` drops each
    device's listed versions (``models prune``): never its active one or the one in shadow."""
    valid = _Names()
    for op in ops:
        if isinstance(op, list) and op[:1] == ["forget"] and len(op) == KINDS["forget"]:
            _forget(devices, op[1], op[2])
        elif isinstance(op, list) and op[:1] == ["publish"] and len(op) == KINDS["publish"]:
            _, run, names, versions, digests, modes = op
            if not (len(names) == len(versions) == len(digests) == len(modes)):
                raise JournalError(f"a publish record of run {run!r} has lists of unequal length")
            if not valid(run):
                raise JournalError(f"a publish record names an invalid run {run!r}")
            for device, version, digest, mode in zip(names, versions, digests, modes, strict=True):
                state = devices.get(device)
                if state is None or not valid(version) or not isinstance(digest, str):
                    _apply_one(devices, ["save", device, version, run, digest], valid)
                    state = devices.get(device)  # None: an invalid device id, left out
                    if state is None or state.damaged:
                        continue
                state.versions[version] = (run, digest)
                if mode == "a":
                    state.activated.append((version, digest))
                    state.damaged = None
                    if state.shadow is not None and state.shadow[0] == version:
                        state.shadow = None
                elif mode == "s":
                    state.shadow, state.shadow_set = (version, digest), True
        else:
            _apply_one(devices, op, valid)


def _forget(devices: dict[str, DeviceState], names: Any, versions: Any) -> None:
    if not (isinstance(names, list) and isinstance(versions, list)) or len(names) != len(versions):
        raise JournalError("a forget record has lists of unequal length")
    for device, gone in zip(names, versions, strict=True):
        state = devices.get(device) if isinstance(device, str) else None
        if state is None or not isinstance(gone, list):
            continue
        dropped = set(gone) - state.pinned()
        for version in dropped:
            state.versions.pop(version, None)
        state.activated = [item for item in state.activated if item[0] not in dropped]


def _apply_one(devices: dict[str, DeviceState], op: Op, valid: _Names) -> None:
    device = op[1] if isinstance(op, list) and len(op) > 1 else None
    if not (isinstance(device, str) and (device in devices or valid(device))):
        log.warning("the model registry's journal names no valid device in %r: ignored", op)
        return
    state = devices.get(device)
    if state is None:
        state = devices[device] = DeviceState()
    kind = op[0]
    if KINDS.get(kind) != len(op) or not valid(*(op[2:4] if kind == "save" else op[2:3])):
        state.damaged = (
            f"the registry's journal holds {op!r} for it (a version or run that is not 1-64 "
            "of [A-Za-z0-9_.-], or an unknown change); activate a version to mend it"
        )
        return
    if kind == "save":
        state.versions[op[2]] = (op[3], str(op[4]))
    elif kind == "activate":
        saved = state.versions.get(op[2])
        digest = saved[1] if saved is not None and saved[1] == op[3] else str(op[3])
        state.activated.append((op[2], digest))  # the saved digest's object: not a copy
        state.damaged = None
        if state.shadow is not None and state.shadow[0] == op[2]:
            state.shadow = None
    elif kind == "shadow":
        state.shadow, state.shadow_set = (op[2], str(op[3])), True
    else:  # unshadow
        state.shadow, state.shadow_set = None, True


class Journal:
    """The registry's journal of one data directory. ``live``: every read first lists the
    journal and applies records written since (one listing); otherwise it is read once, then
    kept up to date with this process's own records only (a scoring run's fixed view of
    100,000 devices: no listing per device)."""

    def __init__(self, files: ModelFiles, live: bool = True) -> None:
        self.files = files
        self.live = live
        self._devices: dict[str, DeviceState] | None = None
        self._sequence = 0
        self._snapshot = 0  # the sequence of the newest snapshot read
        self._records: list[int] = []  # records after it

    def devices(self) -> dict[str, DeviceState]:
        if self._devices is None:
            self.reload()
        elif self.live:
            self._catch_up()
        assert self._devices is not None
        return self._devices

    def _catch_up(self) -> None:
        """Apply the records written since the last read (a newer snapshot: read again)."""
        names = self.files.journal_names()
        snapshots = [int(n[1:]) for n in names if n[:1] == "S" and n[1:].isdigit()]
        if snapshots and max(snapshots) > self._sequence:  # records it covers may be gone
            self.reload()
            return
        newer = sorted(int(n) for n in names if n.isdigit() and int(n) > self._sequence)
        try:
            for seq in newer:
                apply(self._devices or {}, self._read(f"{seq:012d}")["ops"])
                self._sequence = seq
                self._records.append(seq)
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            self.reload()

    def reload(self) -> None:
        for _ in range(10):  # a compaction deleting what was just listed: list again
            names = self.files.journal_names()
            snapshots = sorted(int(n[1:]) for n in names if n[:1] == "S" and n[1:].isdigit())
            records = sorted(int(n) for n in names if n.isdigit())
            base = snapshots[-1] if snapshots else 0
            try:
                devices: dict[str, DeviceState] = {}
                if base:
                    document = self._read(f"S{base:012d}")
                    devices = {d: DeviceState.from_json(s) for d, s in document["devices"].items()}
                later = [seq for seq in records if seq > base]
                for seq in later:
                    apply(devices, self._read(f"{seq:012d}")["ops"])
            except FileNotFoundError:
                continue
            except (KeyError, TypeError, ValueError) as exc:
                raise JournalError(
                    f"the model registry's journal in {self.files.describe('journal')} is "
                    f"damaged ({type(exc).__name__}: {exc}); restore it from a backup"
                ) from exc
            self._devices, self._snapshot, self._records = devices, base, later
            self._sequence = max([base, *records])
            return
        raise JournalError("the model registry's journal kept changing while it was read")

    def _read(self, name: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.files.read_journal(name))
        if document.get("format") != FORMAT:
            raise ValueError(f"{name}: format {document.get('format')!r}, not {FORMAT}")
        return document

    def append(self, build: Callable[[dict[str, DeviceState]], list[Op]]) -> list[Op]:
        """Record the changes ``build`` makes of the state as it is now; with another writer
        first, read its records and build again. Returns what was recorded."""
        for _ in range(100):
            devices = self.devices()
            ops = build(devices)
            if not ops:
                return ops
            document = {"format": FORMAT, "ops": ops, "at": datetime.now(UTC).isoformat()}
            sequence = self._sequence + 1
            try:
                self.files.append_journal(sequence, json.dumps(document).encode())
            except ConflictError:
                self.reload()
                continue
            apply(devices, ops)
            self._sequence = sequence
            self._records.append(sequence)
            if len(self._records) >= SNAPSHOT_EVERY:
                self._write_snapshot()
            return ops
        raise FleetwatchError("the model registry's journal: too many writers at once")

    def _write_snapshot(self) -> None:
        """The state after the newest record; the records the previous snapshot covered (and
        older snapshots) go: readers of this one no longer need them."""
        devices = self.devices()
        document = {
            "format": FORMAT,
            "devices": {d: s.as_json() for d, s in devices.items()},
        }
        try:
            self.files.write_snapshot(self._sequence, json.dumps(document).encode())
            old = [
                n
                for n in self.files.journal_names()
                if (n.isdigit() and int(n) <= self._snapshot)
                or (n[:1] == "S" and n[1:].isdigit() and int(n[1:]) < self._snapshot)
            ]
            self.files.delete_journal(old)
        except Exception as exc:  # only makes later reads longer
            log.warning("model registry journal: snapshot not written (%s)", exc)
            return
        self._snapshot, self._records = self._sequence, []


RUN_TIME = "%Y%m%dT%H%M%S"  # a run object's name: when it was written (UTC), then 8 hex


def new_run_name() -> str:
    return f"{datetime.now(UTC):{RUN_TIME}}-{uuid.uuid4().hex[:8]}"


def run_written_at(name: str) -> datetime | None:
    """When a run object was written, from its name (None: not a run object's name)."""
    try:
        return datetime.strptime(name[: len("YYYYmmddTHHMMSS")], RUN_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


RUN_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("manifest", pa.binary()),
        ("params", pa.binary()),
        ("estimator", pa.binary()),
    ]
)
COLUMN_OF = {PARAMS: "params", ESTIMATOR: "estimator"}


def run_writer(rows: Sequence[Row]) -> Callable[[BinaryIO], None]:
    """What writes ``rows`` as a run object into a file: sorted by device, zstd-compressed
    (manifests shrink to a sixth, parameters by a fifth), in row groups of ``ROWS_PER_GROUP``
    (each made from its rows only: no second copy of the run in memory). A changed row fails
    its device alone (its digests); damage to the bytes of a group fails that group's devices,
    which cannot be read, and no other."""
    ordered = sorted(rows, key=lambda row: row.device_id)

    def write(handle: BinaryIO) -> None:
        with pq.ParquetWriter(
            handle,
            RUN_SCHEMA,
            compression="zstd",
            use_dictionary=["device_id"],
            write_statistics=["device_id"],  # not a manifest's min and max in a page header
        ) as writer:
            for start in range(0, len(ordered), ROWS_PER_GROUP):
                group = ordered[start : start + ROWS_PER_GROUP]
                columns = {
                    "device_id": [row.device_id for row in group],
                    "manifest": [row.manifest for row in group],
                    "params": [row.files[PARAMS] for row in group],
                    "estimator": [row.files.get(ESTIMATOR) for row in group],  # None: not kept
                }
                writer.write_table(pa.table(columns, schema=RUN_SCHEMA))

    return write


def run_bytes(rows: Sequence[Row]) -> bytes:
    """``rows`` as a run object's bytes (:func:`run_writer`)."""
    buffer = io.BytesIO()
    run_writer(rows)(buffer)
    return buffer.getvalue()


class RunObjects:
    """Rows of run objects, read one row group at a time (the last one kept)."""

    def __init__(self, files: ModelFiles) -> None:
        self.files = files
        self._opened: dict[str, tuple[pq.ParquetFile, dict[str, tuple[int, int]]]] = {}
        self._group: tuple[str, int, pa.Table] | None = None
        self._versions: dict[str, str | None] = {}

    def store_version(self, run: str) -> str | None:
        """The store's version of a run object (changes if it is replaced), once per run."""
        if run not in self._versions:
            self._versions[run] = self.files.store.version(self.files.run_key(run))
        return self._versions[run]

    def row(self, run: str, device_id: str) -> dict[str, bytes]:
        """A device's row of a run object (``FileNotFoundError`` when it has none)."""
        if run not in self._opened:
            try:
                handle = open_file(self.files.store, self.files.run_key(run))
            except (OSError, pa.ArrowInvalid) as exc:
                raise FileNotFoundError(f"run object {run}: {exc}") from exc
            where: dict[str, tuple[int, int]] = {}
            for group in range(handle.num_row_groups):
                try:
                    ids = handle.read_row_group(group, columns=["device_id"]).column(0)
                except (OSError, pa.ArrowException) as exc:  # damaged: its devices fail
                    log.warning("run object %s: row group %d unreadable (%s)", run, group, exc)
                    continue
                for index, name in enumerate(ids.to_pylist()):
                    where[name] = (group, index)
            self._opened[run] = (handle, where)
        handle, where = self._opened[run]
        if device_id not in where:
            raise FileNotFoundError(f"run object {run} has no (readable) row of {device_id}")
        group, index = where[device_id]
        if self._group is None or self._group[:2] != (run, group):
            try:
                self._group = (run, group, handle.read_row_group(group))
            except (OSError, pa.ArrowException) as exc:
                raise FileNotFoundError(f"run object {run}, row group {group}: {exc}") from exc
        table = self._group[2]
        return {
            name: table.column(name)[index].as_py() for name in ("manifest", "params", "estimator")
        }
