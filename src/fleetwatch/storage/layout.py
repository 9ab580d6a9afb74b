"""The data directory's layout: the one module that knows where everything lives.

::

    <data>/aggregates/date=2026-11-22/hour=10/p0003-000000012000-000000015999.parquet
    <data>/aggregates/date=2026-11-22/hour=10/b-3f2a9c0d51e7b864.parquet     (a backfill)
    <data>/late/date=2026-11-22/hour=10/p0003-000000015000-000000015998.parquet
    <data>/models/<device_id>/<version>/{model.joblib, params.bin, manifest.json}
    <data>/fleetwatch.duckdb
    <data>/state/aggregate/<topic>/{topic.json, p0003.json, status-<host>-<pid>.json}
    <data>/state/model-pack/          <data>/state/faust/          <data>/state/*.lock

Aggregate and late files are hive-partitioned by the event-time hour of their rows. A live
file is named ``p<partition>-<first offset>-<last offset>`` after the Kafka records it was made
from, so a replay writes the same name (an overwrite, never a duplicate); after a topic reset
(see :mod:`fleetwatch.aggregate.coordinator`) offsets start again, so the partition's *epoch*
joins the name: ``p<partition>-r<epoch>-<first>-<last>``. A backfill file is
``b-<import id>``, the id being a digest of the imported file and the window settings, so
importing the same file again rewrites the same names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from fleetwatch.storage.remote import check_bucket, default_local_dir, is_remote, list_tree

if TYPE_CHECKING:
    from fleetwatch.config.sections import Settings

HOUR: Final = timedelta(hours=1)
Dataset = Literal["aggregates", "late"]
_LIVE = re.compile(r"^p(\d{4})-(?:r(\d{3,})-)?(\d{12})-(\d{12})\.parquet$")
_BACKFILL = re.compile(r"^b-([0-9a-f]{16})\.parquet$")
_COMPACTED = re.compile(r"^c-([0-9a-f]{16})\.parquet$")
_HOUR_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


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


def backfill_file_name(import_id: str) -> str:
    return f"b-{import_id}.parquet"


def is_backfill_file(name: str) -> bool:
    return _BACKFILL.match(name) is not None


def compacted_file_name(digest: str) -> str:
    return f"c-{digest}.parquet"


def is_compacted_file(name: str) -> bool:
    return _COMPACTED.match(name) is not None


def visible(files: list[Path]) -> list[Path]:
    """The files of one hour folder that hold its data: a compacted file replaces every live
    file of its (closed) hour, so live files beside one are left-overs of a compaction that
    stopped before deleting them (see :mod:`fleetwatch.storage.compaction`)."""
    if not any(is_compacted_file(path.name) for path in files):
        return files
    return [path for path in files if parse_live_file_name(path.name) is None]


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


def require_data_dir(layout: DataLayout) -> None:
    """For commands that only read: the data folder must be there (a mistyped --data-dir is
    an error, never an empty folder made on the spot)."""
    from fleetwatch.errors import FleetwatchError

    if layout.remote:
        check_bucket(layout.root)
        return
    if not layout.root.is_dir():
        what = "is not a folder" if layout.root.exists() else "does not exist"
        raise FleetwatchError(f"data directory {layout.root} {what} (check --data-dir)")


@dataclass(frozen=True)
class HourFiles:
    """The data files of one hour folder as they are now."""

    hour: datetime
    files: tuple[Path, ...]
    signature: str  # changes whenever a file is added, removed or rewritten
    #: Live files hidden by a compacted one: left-overs of a compaction cut short.
    hidden: tuple[Path, ...] = ()

    @property
    def live(self) -> int:
        """How many of :attr:`files` are live files (a compaction merges them)."""
        return sum(parse_live_file_name(path.name) is not None for path in self.files)

    @property
    def backfill_only(self) -> bool:
        """Every file came from a backfill: nothing live will ever add to this hour."""
        return all(is_backfill_file(path.name) for path in self.files)


@dataclass(frozen=True)
class DataLayout:
    """Paths of one data directory.

    ``root`` holds the data plane (aggregates, the late sink, checkpoints, models) and may be
    an object-store URL (:mod:`fleetwatch.storage.remote`); ``local`` holds what one machine
    keeps for itself (the DuckDB file, locks, the model pack, Faust's state). For a local data
    directory both are the same folder."""

    root: Path
    local_dir: Path | None = None

    @classmethod
    def of(cls, settings: Settings) -> DataLayout:
        return cls(settings.data_dir, settings.local_dir)

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    @property
    def local(self) -> Path:
        if not self.remote:
            return self.root
        return self.local_dir if self.local_dir is not None else default_local_dir(self.root)

    @property
    def aggregates(self) -> Path:
        return self.root / "aggregates"

    @property
    def late(self) -> Path:
        return self.root / "late"

    @property
    def models(self) -> Path:
        return self.root / "models"

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

    def aggregation_state(self, topic: str) -> Path:
        """The aggregator's checkpoints and status files for ``topic`` (with the data: a
        checkpoint must name exactly the files it covers, wherever they are)."""
        return self.root / "state" / "aggregate" / topic

    def dataset(self, name: Dataset) -> Path:
        return self.aggregates if name == "aggregates" else self.late

    def hour_dir(self, name: Dataset, hour: datetime) -> Path:
        hour = floor_hour(hour)
        return self.dataset(name) / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"

    def hour_dirs(self, name: Dataset = "aggregates") -> list[tuple[datetime, Path]]:
        """Every hour folder of a dataset, oldest first (empty ones included)."""
        root = self.dataset(name)
        found = []
        for date_dir in root.iterdir() if root.is_dir() else ():
            date = _HOUR_DIR.match(date_dir.name)
            if not date or not date_dir.is_dir():
                continue
            for hour_dir in date_dir.iterdir():
                if hour_dir.name.startswith("hour=") and hour_dir.name[5:].isdigit():
                    try:
                        start = datetime.fromisoformat(f"{date.group(1)}T{hour_dir.name[5:]}:00")
                    except ValueError:
                        continue
                    found.append((start.replace(tzinfo=UTC), hour_dir))
        return sorted(found)

    def inventory(self, hours: list[datetime] | None = None) -> list[HourFiles]:
        """Every aggregate hour folder with data files (or just ``hours``), oldest first."""
        if self.remote:
            return self._remote_inventory(hours)
        chosen = (
            [(hour, self.hour_dir("aggregates", hour)) for hour in hours]
            if hours is not None
            else self.hour_dirs("aggregates")
        )
        found = []
        for hour, folder in chosen:
            listed = sorted(folder.glob("[!.]*.parquet")) if folder.is_dir() else []
            files = tuple(visible(listed))
            if not files:
                continue
            digest = hashlib.sha256()
            for path in files:
                try:
                    info = path.stat()
                except FileNotFoundError:  # replaced or removed right now: counts as a change
                    continue
                digest.update(f"{path.name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
            hidden = tuple(path for path in listed if path not in files)
            found.append(HourFiles(hour, files, digest.hexdigest()[:16], hidden))
        return found

    def _remote_inventory(self, hours: list[datetime] | None) -> list[HourFiles]:
        """:meth:`inventory` in an object store: one listing of the dataset, not a request
        per folder and per file."""
        by_hour: dict[datetime, list[tuple[Path, int, int]]] = {}
        wanted = None if hours is None else {floor_hour(hour) for hour in hours}
        for path, size, modified in list_tree(self.aggregates):
            date, hour_name = path.parent.parent.name, path.parent.name
            match = _HOUR_DIR.match(date)
            if not match or not hour_name.startswith("hour=") or path.name.startswith("."):
                continue
            if not path.name.endswith(".parquet"):
                continue
            try:
                hour = datetime.fromisoformat(f"{match.group(1)}T{hour_name[5:]}:00")
            except ValueError:
                continue
            hour = hour.replace(tzinfo=UTC)
            if wanted is None or hour in wanted:
                by_hour.setdefault(hour, []).append((path, size, modified))
        found = []
        for hour in sorted(by_hour):
            entries = {path.name: (path, size, modified) for path, size, modified in by_hour[hour]}
            listed = sorted((e[0] for e in entries.values()), key=lambda p: p.name)
            files = tuple(visible(listed))
            digest = hashlib.sha256()
            for path in files:
                _, size, modified = entries[path.name]
                digest.update(f"{path.name}:{size}:{modified}\n".encode())
            hidden = tuple(path for path in listed if path not in files)
            found.append(HourFiles(hour, files, digest.hexdigest()[:16], hidden))
        return found

    def dataset_files(self, name: Dataset) -> list[Path]:
        """Every data file of a dataset (temporary files are hidden)."""
        root = self.dataset(name)
        if not root.is_dir():
            return []
        by_folder: dict[str, list[Path]] = {}
        for path in sorted(root.glob("date=*/hour=*/[!.]*.parquet")):
            by_folder.setdefault(str(path.parent), []).append(path)
        return [path for files in by_folder.values() for path in visible(files)]

    def hour_files(self, name: Dataset, hour: datetime) -> list[Path]:
        """The data files of one hour folder, sorted (temporary files are hidden)."""
        return visible(self.all_hour_files(name, hour))

    def all_hour_files(self, name: Dataset, hour: datetime) -> list[Path]:
        """Every data file of one hour folder, a compaction's left-overs included."""
        folder = self.hour_dir(name, hour)
        return sorted(folder.glob("[!.]*.parquet")) if folder.is_dir() else []

    def files_between(self, since: datetime, until: datetime) -> list[Path]:
        """Aggregate files of the hour folders that hold windows starting in [since, until)."""
        return [
            path
            for hour in hours_between(since, until)
            for path in self.hour_files("aggregates", hour)
        ]

    def partition_files(self, name: Dataset, partition: int) -> Iterator[tuple[Path, LiveFile]]:
        """Every live file a partition wrote, with what its name says."""
        root = self.dataset(name)
        if not root.is_dir():
            return
        for path in root.glob(f"date=*/hour=*/p{partition:04d}-*.parquet"):
            parsed = parse_live_file_name(path.name)
            if parsed is not None and parsed.partition == partition:
                yield path, parsed

    def partition_temporaries(self, name: Dataset, partition: int) -> Iterator[Path]:
        root = self.dataset(name)
        if root.is_dir():
            yield from root.glob(f"date=*/hour=*/.p{partition:04d}-*.tmp")
