"""The data directory's layout: the one module that knows which key holds what.

::

    aggregates/date=2026-11-22/hour=10/p0003-000000012000-000000015999.parquet
    aggregates/date=2026-11-22/hour=10/b-3f2a9c0d51e7b864.parquet     (a backfill)
    aggregates/date=2026-11-22/hour=10/c-7e01d2aa93b0c4f5.parquet     (a compacted hour)
    late/date=2026-11-22/hour=10/p0003-000000015000-000000015998.parquet
    models/...                        (see :mod:`fleetwatch.storage.models`)
    state/aggregate/<topic>/{topic.json, p0003.json, status-<host>-<pid>.json}

and, in this machine's own folder (the data directory itself unless it is in an object
store): ``fleetwatch.duckdb``, ``state/*.lock``, ``state/model-pack/``, ``state/faust/``.

Aggregate and late files are hive-partitioned by the event-time hour of their rows. A live
file is named ``p<partition>-<first offset>-<last offset>`` after the Kafka records it was made
from, so a replay writes the same name (an overwrite, never a duplicate); after a topic reset
(see :mod:`fleetwatch.aggregate.coordinator`) offsets start again, so the partition's *epoch*
joins the name: ``p<partition>-r<epoch>-<first>-<last>``. A backfill file is
``b-<import id>``, the id being a digest of the imported file and the window settings, so
importing the same file again rewrites the same names. A compacted file ``c-<digest>`` holds a
closed hour's live files merged (see :mod:`fleetwatch.storage.compaction`).

Every decision about an hour is taken on one :class:`HourFiles`, made from one listing: the
files it names are the files read, merged or deleted, never those of a second listing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from fleetwatch.errors import FleetwatchError
from fleetwatch.storage.locks import FolderUse
from fleetwatch.storage.store import (
    DataStore,
    LocalStore,
    ObjectStore,
    StoredObject,
    join,
    open_store,
    storage_error,
)

HOUR: Final = timedelta(hours=1)
Dataset = Literal["aggregates", "late"]
_LIVE = re.compile(r"^p(\d{4})-(?:r(\d{3,})-)?(\d{12})-(\d{12})\.parquet$")
_BACKFILL = re.compile(r"^b-([0-9a-f]{16})\.parquet$")
_COMPACTED = re.compile(r"^c-([0-9a-f]{16})\.parquet$")
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_HOUR_DIR = re.compile(r"^hour=(\d{2})$")
#: The compacted file's Parquet metadata key listing the live files it merged.
MERGED_KEY: Final = b"fleetwatch.merged"


@dataclass(frozen=True)
class LiveFile:
    """What a live file's name says: the partition, its epoch and the records' offsets."""

    partition: int
    epoch: int
    first_offset: int
    last_offset: int


def live_file_name(partition: int, first_offset: int, last_offset: int, epoch: int = 0) -> str:
    """The deterministic name of a file made from records first..last of a partition.

    >>> live_file_name(3, 12000, 15999)
    'p0003-000000012000-000000015999.parquet'
    >>> live_file_name(3, 0, 99, epoch=1)
    'p0003-r001-000000000000-000000000099.parquet'
    """
    epoch_part = f"r{epoch:03d}-" if epoch else ""
    return f"p{partition:04d}-{epoch_part}{first_offset:012d}-{last_offset:012d}.parquet"


def parse_live_file_name(name: str) -> LiveFile | None:
    """
    >>> parse_live_file_name('p0003-r001-000000000000-000000000099.parquet')
    LiveFile(partition=3, epoch=1, first_offset=0, last_offset=99)
    """
    match = _LIVE.match(name)
    if not match:
        return None
    partition, epoch, first, last = match.groups()
    return LiveFile(int(partition), int(epoch or 0), int(first), int(last))


def partition_of(name: str) -> int | None:
    """The partition of a live file's name, of its staged name or of a temporary of either
    (None: another file).

    >>> partition_of('p0003-000000012000-000000015999.parquet')
    3
    >>> partition_of('.p0003-000000012000-000000015999.parquet.1a2b3c4d.staged')
    3
    >>> partition_of('..p0003-000000012000-000000015999.parquet.1a2b3c4d.staged.5e6f7a8b.tmp')
    3
    >>> partition_of('c-0123456789abcdef.parquet') is None
    True
    """
    head, dash, _ = name.lstrip(".").partition("-")
    if dash and head[:1] == "p" and head[1:].isdigit():
        return int(head[1:])
    return None


def by_partition(listed: Iterable[StoredObject]) -> dict[int, list[StoredObject]]:
    """A listing's live, staged and temporary files by partition (the rest left out): one
    pass, for several partitions' :meth:`DataLayout.partition_files` and
    ``partition_leftovers``."""
    grouped: dict[int, list[StoredObject]] = {}
    for item in listed:
        partition = partition_of(item.name)
        if partition is not None:
            grouped.setdefault(partition, []).append(item)
    return grouped


def backfill_file_name(import_id: str) -> str:
    return f"b-{import_id}.parquet"


def is_backfill_file(name: str) -> bool:
    return _BACKFILL.match(name) is not None


def is_live_file(name: str) -> bool:
    return _LIVE.match(name) is not None


def compacted_file_name(live_names: Iterable[str]) -> str:
    """The compacted file of these live files: named by the digest of their sorted names, the
    digest an hour's signature uses for them (so compaction leaves the signature as it was).

    >>> compacted_file_name(["p0001-000000000000-000000000009.parquet"])
    'c-565fb573bbbec99d.parquet'
    """
    return f"c-{names_digest(live_names)}.parquet"


def is_compacted_file(name: str) -> bool:
    return _COMPACTED.match(name) is not None


def names_digest(names: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def is_hidden(key: str) -> bool:
    """A temporary or staged object (a name part starting with a dot): never data."""
    return any(part.startswith(".") for part in key.split("/"))


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hours_between(since: datetime, until: datetime) -> list[datetime]:
    """Hour starts h with since <= h < until (since is floored to the hour).

    >>> [h.hour for h in hours_between(datetime(2026, 1, 1, 8, 30, tzinfo=UTC),
    ...                                 datetime(2026, 1, 1, 11, tzinfo=UTC))]
    [8, 9, 10]
    """
    hour = floor_hour(since)
    hours = []
    while hour < until:
        hours.append(hour)
        hour += HOUR
    return hours


def hour_prefix(dataset: Dataset, hour: datetime) -> str:
    """``aggregates/date=2026-11-22/hour=10``: the folder of one hour's files."""
    hour = floor_hour(hour)
    return f"{dataset}/date={hour:%Y-%m-%d}/hour={hour:%H}"


def hour_of(key: str) -> datetime | None:
    """The hour whose folder holds ``key`` (``<dataset>/date=.../hour=../<name>``), or None."""
    parts = key.split("/")
    if len(parts) != 4:
        return None
    date, hour = _DATE_DIR.match(parts[1]), _HOUR_DIR.match(parts[2])
    if not date or not hour:
        return None
    try:
        start = datetime.fromisoformat(f"{date.group(1)}T{hour.group(1)}:00")
    except ValueError:
        return None
    return start.replace(tzinfo=UTC)


@dataclass(frozen=True)
class HourFiles:
    """One hour folder's data files, from one listing: what to read, what a compaction would
    merge, and a signature that changes whenever the hour's data does."""

    hour: datetime
    #: The files that hold the hour's windows, each once: live, backfill and compacted files,
    #: without the live files a compacted one replaced.
    files: tuple[StoredObject, ...]
    #: Changes when a file is added or removed, never when a compaction merges live files.
    signature: str
    #: Live files a compacted file replaced: left-overs of a compaction cut short (to delete).
    hidden: tuple[StoredObject, ...] = ()

    @property
    def keys(self) -> list[str]:
        return [item.key for item in self.files]

    @property
    def live(self) -> tuple[StoredObject, ...]:
        """The live files among :attr:`files` (what a compaction merges)."""
        return tuple(item for item in self.files if is_live_file(item.name))

    @property
    def compacted(self) -> StoredObject | None:
        return next((item for item in self.files if is_compacted_file(item.name)), None)

    @property
    def backfill_only(self) -> bool:
        """Every file came from a backfill: nothing live will ever add to this hour."""
        return all(is_backfill_file(item.name) for item in self.files)


def hour_signature(live_part: str, others: Iterable[str]) -> str:
    """An hour's signature: its live files' digest (the compacted file's name carries the same
    one) and the names of its other files (backfills).

    >>> hour_signature("", ["b-00.parquet"]) == hour_signature("", ["b-00.parquet"])
    True
    """
    text = "live:" + live_part + "\n" + "\n".join(sorted(others))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def legacy_signature(files: HourFiles) -> str:
    """The signature fleetwatch 0.1 recorded for an hour (names, sizes and modification times
    of the files it read; every live file hidden by a compacted one): an hour recorded so is
    the same hour while that still matches (see
    :func:`fleetwatch.scoring.pending.migrate_signatures`)."""
    listed = sorted([*files.files, *files.hidden], key=lambda item: item.name)
    if any(is_compacted_file(item.name) for item in listed):
        listed = [item for item in listed if not is_live_file(item.name)]
    digest = hashlib.sha256()
    for item in listed:
        digest.update(f"{item.name}:{item.size}:{item.modified_ns}\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class DataLayout:
    """One data directory: its store (the data plane) and this machine's own folder.

    ``store`` holds the aggregates, the late sink, checkpoints and models, and may be an
    object store; ``local`` holds what one machine keeps for itself (the DuckDB file, locks,
    the model pack, Faust's state): the data directory itself when it is a folder."""

    store: DataStore
    local: Path
    #: Merged-file lists of compacted files, by (key, version): immutable objects, read once.
    _merged: dict[tuple[str, str], frozenset[str] | None] = field(default_factory=dict)

    @classmethod
    def open(cls, location: str | Path, local_dir: Path | None = None) -> DataLayout:
        """The layout of a data directory (a folder or an object-store URL)."""
        store = open_store(location)
        if isinstance(store, LocalStore):
            return cls(store, store.root)
        assert isinstance(store, ObjectStore)
        return cls(store, local_dir if local_dir is not None else default_local_dir(store))

    def __hash__(self) -> int:
        return hash((self.store.location, self.local))

    @property
    def remote(self) -> bool:
        return self.store.remote

    @property
    def location(self) -> str:
        return self.store.location

    # ------------------------------------------------------------------ this machine

    @property
    def database(self) -> Path:
        return self.local / "fleetwatch.duckdb"

    @property
    def state(self) -> Path:
        """This machine's state: locks, the model pack, Faust's tables."""
        return self.local / "state"

    @property
    def faust_state(self) -> Path:
        return self.state / "faust"

    @property
    def model_pack(self) -> Path:
        return self.state / "model-pack"

    @property
    def scheduler_lock(self) -> Path:
        """Held by a running ``fleetwatch schedule`` for its lifetime."""
        return self.state / "schedule.lock"

    @property
    def scheduler_state(self) -> Path:
        """What the running scheduler says of itself: its trigger, last and next tick."""
        return self.state / "schedule.json"

    @property
    def scoring_lock(self) -> Path:
        """Held while one process decides what to score and scores it."""
        return self.state / "scoring.lock"

    @property
    def logs(self) -> Path:
        """Log files of the processes ``fleetwatch demo`` starts."""
        return self.local / "logs"

    @property
    def demo_marker(self) -> Path:
        """Says that ``fleetwatch demo`` made the folder (and may replace it)."""
        return self.local / ".fleetwatch-demo"

    @property
    def demo_labels(self) -> Path:
        """The anomalies ``fleetwatch demo`` injected (its ground truth)."""
        return self.local / "labels.parquet"

    def use(self) -> FolderUse:
        """This process uses the data directory (see :class:`~.locks.FolderUse`): writers hold
        it shared for their lifetime (on this machine's folder; for an object store, the local
        one). A folder that does not exist yet is made."""
        self.check_writable_folder()
        try:
            self.local.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(str(self.local), exc) from None
        return FolderUse(self.local).share()

    def empty_local(self) -> None:
        """Delete everything in this machine's folder (the demo's own folder, or an
        evaluation's temporary one), the folder itself kept."""
        for child in self.local.iterdir() if self.local.is_dir() else ():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    @property
    def alert_journal(self) -> Path:
        """Deliveries of alerts not yet marked in DuckDB (see :mod:`fleetwatch.alerts`)."""
        return self.state / "alerts-delivered.jsonl"

    # ------------------------------------------------------------------ checks

    def require(self) -> None:
        """For commands that only read: the data directory must be there (a mistyped
        --data-dir is an error, never an empty folder made on the spot)."""
        if isinstance(self.store, ObjectStore):
            self.store.check_bucket()
            return
        root = self.local
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise FleetwatchError(f"data directory {root} {what} (check --data-dir)")

    def check_writable_folder(self) -> None:
        """For commands that write: a local data directory must be a folder, or not exist
        yet (it is made)."""
        if not self.store.remote and self.local.exists() and not self.local.is_dir():
            raise FleetwatchError(f"data directory {self.local} is not a folder (check --data-dir)")

    # ------------------------------------------------------------------ datasets

    def hour_key(self, dataset: Dataset, hour: datetime, name: str) -> str:
        return join(hour_prefix(dataset, hour), name)

    def hour_objects(self, dataset: Dataset = "aggregates") -> dict[datetime, list[StoredObject]]:
        """Every data file of a dataset by hour, from one listing (hidden names left out)."""
        by_hour: dict[datetime, list[StoredObject]] = {}
        for item in self.store.listing(dataset):
            if is_hidden(item.key) or not item.name.endswith(".parquet"):
                continue
            hour = hour_of(item.key)
            if hour is not None:
                by_hour.setdefault(hour, []).append(item)
        return dict(sorted(by_hour.items()))

    def inventory(self, hours: Iterable[datetime] | None = None) -> list[HourFiles]:
        """Every aggregate hour with data files (or just ``hours``), oldest first, from one
        listing (of the dataset, or of each hour asked for)."""
        if hours is None:
            listed = self.hour_objects("aggregates")
        else:
            listed = {}
            for hour in sorted({floor_hour(h) for h in hours}):
                items = [
                    item
                    for item in self.store.listing(hour_prefix("aggregates", hour))
                    if not is_hidden(item.key)
                    and item.name.endswith(".parquet")
                    and hour_of(item.key) == hour
                ]
                if items:
                    listed[hour] = items
        return [self.hour_files(hour, items) for hour, items in listed.items()]

    def hour_files(self, hour: datetime, listed: list[StoredObject]) -> HourFiles:
        """What one listing of an hour folder holds (see :class:`HourFiles`)."""
        live = [item for item in listed if is_live_file(item.name)]
        compacted = sorted(item for item in listed if is_compacted_file(item.name))
        others = [
            item
            for item in listed
            if not is_live_file(item.name) and not is_compacted_file(item.name)
        ]
        if not compacted:
            files = sorted(listed)
            live_part = names_digest(i.name for i in live) if live else ""
            return HourFiles(
                hour, tuple(files), hour_signature(live_part, [i.name for i in others])
            )
        # One compacted file per hour; a second could only come from two compactions of one
        # hour at once, which the scoring lock prevents: the newest name wins, the rest count
        # as its own left-overs would.
        chosen = compacted[0]
        merged = self.merged_names(chosen, [item.name for item in live])
        hidden = [item for item in live if item.name in merged]
        extra = [item for item in live if item.name not in merged]
        digest = chosen.name[2:18]
        live_part = digest if not extra else names_digest([digest, *(i.name for i in extra)])
        files = sorted([chosen, *extra, *others])
        return HourFiles(
            hour,
            tuple(files),
            hour_signature(live_part, [i.name for i in others]),
            tuple(sorted([*hidden, *compacted[1:]])),
        )

    def merged_names(self, compacted: StoredObject, beside: list[str]) -> frozenset[str]:
        """The live files ``compacted`` merged (read from its metadata only when live files
        lie beside it: after a compaction cut short, or a write it did not see)."""
        if not beside:
            return frozenset()
        cache_key = (compacted.key, compacted.version)
        if cache_key not in self._merged:
            self._merged[cache_key] = self._read_merged(compacted.key)
        merged = self._merged[cache_key]
        if merged is None:  # made by an older fleetwatch: it merged every live file there was
            return frozenset(beside)
        return merged

    def _read_merged(self, key: str) -> frozenset[str] | None:
        import pyarrow.parquet as pq

        source, filesystem = self.store.arrow(key)
        metadata = pq.read_metadata(source, filesystem=filesystem).metadata or {}
        if MERGED_KEY not in metadata:
            return None
        return frozenset(json.loads(metadata[MERGED_KEY]))

    def dataset_files(self, dataset: Dataset) -> list[StoredObject]:
        """Every data file of a dataset, each window once (temporary and merged files
        hidden), oldest hour first."""
        by_hour = self.hour_objects(dataset)
        if dataset == "late":
            return [item for items in by_hour.values() for item in sorted(items)]
        return [
            item for hour, items in by_hour.items() for item in self.hour_files(hour, items).files
        ]

    def hour_data(self, dataset: Dataset, hour: datetime) -> list[StoredObject]:
        """The data files of one hour folder, each window once."""
        listed = [
            item
            for item in self.store.listing(hour_prefix(dataset, hour))
            if not is_hidden(item.key) and item.name.endswith(".parquet")
        ]
        if dataset == "late":
            return sorted(listed)
        return list(self.hour_files(floor_hour(hour), listed).files)

    def files_between(self, since: datetime, until: datetime) -> list[StoredObject]:
        """Aggregate files of the hour folders that hold windows starting in [since, until):
        one listing per hour, or one of the whole dataset for a range of more than two days
        (a century of hours is not listed hour by hour)."""
        if until - since <= 48 * HOUR:
            hours = self.inventory(hours_between(since, until))
        else:
            first = floor_hour(since)
            hours = [files for files in self.inventory() if first <= files.hour < until]
        return [item for files in hours for item in files.files]

    def partition_files(
        self, dataset: Dataset, partition: int, listed: Sequence[StoredObject] | None = None
    ) -> Iterator[tuple[StoredObject, LiveFile]]:
        """Every live file a partition wrote, with what its name says: from ``listed`` (a
        listing of ``dataset`` made earlier, shared by several partitions) or a new listing."""
        for item in self.store.listing(dataset) if listed is None else listed:
            parsed = parse_live_file_name(item.name)
            if parsed is not None and parsed.partition == partition and not is_hidden(item.key):
                yield item, parsed

    @staticmethod
    def partition_leftovers(partition: int, listed: Sequence[StoredObject]) -> list[StoredObject]:
        """Staged files of a partition that a writer left behind, and temporaries of writes a
        crash cut short, in ``listed`` (a dataset's listing with the store's temporaries)."""
        return [
            item
            for item in listed
            if item.name.startswith(".") and partition_of(item.name) == partition
        ]

    # ------------------------------------------------------------------ aggregation state

    @staticmethod
    def aggregation_state(topic: str) -> str:
        """The aggregator's checkpoints and status files for ``topic`` (with the data: a
        checkpoint must name exactly the files it covers, wherever they are)."""
        return join("state", "aggregate", topic)


def default_local_dir(store: ObjectStore) -> Path:
    """Where a remote data directory's local files go unless ``local_dir`` says otherwise."""
    digest = hashlib.sha256(store.location.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "fleetwatch" / f"{store.bucket}-{digest}"
