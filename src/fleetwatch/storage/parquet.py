"""Durable, replay-safe Parquet files: schemas, readers, and the sinks the aggregator writes.

Where the files go and how they are named is :mod:`fleetwatch.storage.layout`'s; every byte goes
through the data directory's :class:`~fleetwatch.storage.store.DataStore`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from fleetwatch.storage.layout import DataLayout, Dataset, hour_prefix, live_file_name
from fleetwatch.storage.store import DataStore, StoredObject, join

if TYPE_CHECKING:  # pandas takes a third of a second to import; readers do not need it
    import pandas as pd

AGGREGATE_SCHEMA: Final = pa.schema(
    [
        ("device_id", pa.string()),
        ("sensor", pa.string()),
        ("window_start", pa.timestamp("ms", tz="UTC")),
        ("window_end", pa.timestamp("ms", tz="UTC")),
        ("count", pa.int64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
    ]
)
LATE_SCHEMA: Final = pa.schema(
    [
        ("device_id", pa.string()),
        ("sensor", pa.string()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("value", pa.float64()),
        ("window_start", pa.timestamp("ms", tz="UTC")),
        ("lateness_ms", pa.int64()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)

#: Snappy, the Parquet default most readers expect: scoring decodes an hour of it in 0.27
#: CPU-seconds where zstd takes 0.46 (6M rows), for files 8% larger (random values; the
#: demo's small files: no larger). ``[aggregate] parquet_compression`` chooses another.
DEFAULT_COMPRESSION: Final = "snappy"


def read_table(store: DataStore, keys: str | list[str], **options: Any) -> pa.Table:
    """``pq.read_table`` of one object or several of the store."""
    chosen = [keys] if isinstance(keys, str) else keys
    sources = [store.arrow(key) for key in chosen]
    filesystem = sources[0][1] if sources else None
    names = [source for source, _ in sources]
    target: Any = names[0] if isinstance(keys, str) else names
    return pq.read_table(target, filesystem=filesystem, **options)


def open_file(store: DataStore, key: str, **options: Any) -> pq.ParquetFile:
    """``pq.ParquetFile`` of an object (read by byte ranges)."""
    source, filesystem = store.arrow(key)
    return pq.ParquetFile(source, filesystem=filesystem, **options)


def read_metadata(store: DataStore, key: str) -> pq.FileMetaData:
    source, filesystem = store.arrow(key)
    return pq.read_metadata(source, filesystem=filesystem)


def table_bytes(
    table: pa.Table,
    compression: str = DEFAULT_COMPRESSION,
    metadata: dict[bytes, bytes] | None = None,
    row_group_size: int | None = None,
) -> bytes:
    """``table`` as the bytes of a Parquet file."""
    codec = None if compression == "none" else compression
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=codec, row_group_size=row_group_size)
    return bytes(sink.getvalue())


def write_table(
    store: DataStore,
    key: str,
    table: pa.Table,
    compression: str = DEFAULT_COMPRESSION,
    row_group_size: int | None = None,
) -> None:
    """Write ``table`` to ``key`` so that readers see all of it or nothing."""
    store.write(key, table_bytes(table, compression, row_group_size=row_group_size))


#: A file written under a staged name, and the name it is published under.
Staged = tuple[str, str]


def staged_key(final: str) -> str:
    """A hidden name beside ``final``, unique to this write (listings of data skip it)."""
    folder, _, name = final.rpartition("/")
    return join(folder, f".{name}.{uuid.uuid4().hex[:8]}.staged")


class RecordSink(Protocol):
    """Where closed windows (or late readings) go. Called from the worker's event loop.

    ``write`` blocks until the rows are durable under *staged* names, hidden from readers, and
    returns what it wrote; ``take_staged`` hands a partition's files written since its last
    call to the partition's checkpoint, which publishes them (see
    :mod:`fleetwatch.storage.checkpoints`): one partition's checkpoint never publishes
    another's files (that one may be fenced off already). ``write``
    raises :class:`~fleetwatch.errors.StorageError` when the store refuses; then nothing was
    published, so a restart replays.
    """

    def write(
        self, frame: pd.DataFrame, partition: int, time_column: str, epoch: int = 0
    ) -> list[Staged]: ...

    def take_staged(self, partition: int | None = None) -> list[Staged]: ...

    def discard(self, staged: Sequence[Staged]) -> None: ...

    @property
    def store(self) -> DataStore: ...


class PartitionedParquetSink:
    """A :class:`RecordSink` writing one of the data directory's hive-partitioned datasets."""

    def __init__(
        self, layout: DataLayout, dataset: Dataset, compression: str = DEFAULT_COMPRESSION
    ) -> None:
        self.layout = layout
        self.store = layout.store
        self.dataset: Dataset = dataset
        self.schema = AGGREGATE_SCHEMA if dataset == "aggregates" else LATE_SCHEMA
        self.compression = compression
        self.staged: dict[int, list[Staged]] = {}  # by partition

    def write(
        self, frame: pd.DataFrame, partition: int, time_column: str, epoch: int = 0
    ) -> list[Staged]:
        """One file per event-time hour of ``time_column``, named from the rows' offsets,
        written under a staged name (see :class:`RecordSink`).

        ``frame`` has an ``offset`` column or ``first_offset``/``last_offset`` columns; only the
        schema's columns are stored.
        """
        import pandas as pd

        if frame.empty:
            return []
        written = []
        hours = frame[time_column].dt.floor("h")
        for hour_start, rows in frame.groupby(hours, sort=True):
            if "offset" in rows:
                first, last = int(rows["offset"].min()), int(rows["offset"].max())
            else:
                first, last = int(rows["first_offset"].min()), int(rows["last_offset"].max())
            table = pa.Table.from_pandas(
                rows[self.schema.names], schema=self.schema, preserve_index=False
            )
            hour = pd.Timestamp(hour_start).to_pydatetime()
            name = live_file_name(partition, first, last, epoch)
            final = join(hour_prefix(self.dataset, hour), name)
            staged = staged_key(final)
            self.store.write(staged, table_bytes(table, self.compression))
            written.append((staged, final))
        self.staged.setdefault(partition, []).extend(written)
        return written

    def take_staged(self, partition: int | None = None) -> list[Staged]:
        """The files ``partition`` staged since it was last asked (None: every partition)."""
        if partition is not None:
            return self.staged.pop(partition, [])
        taken = [item for files in self.staged.values() for item in files]
        self.staged = {}
        return taken

    def discard(self, staged: Sequence[Staged]) -> None:
        """Delete files staged and never published (the partition was lost)."""
        self.store.delete(key for key, _ in staged)

    def listing(self, temporaries: bool = False) -> list[StoredObject]:
        """The dataset's objects, listed once for several partitions: the methods below take
        it as ``listed`` (without it, each lists the dataset again: on object storage, one
        request per thousand objects, every time). With ``temporaries``, the store's own
        left-overs too, for :meth:`remove_leftovers` (locally a second walk of the folder:
        0.4 s at 20,000 files, once, not once a partition)."""
        found = self.store.listing(self.dataset)
        return found + self.store.temporaries(self.dataset) if temporaries else found

    def has_files(self, partition: int, listed: Sequence[StoredObject] | None = None) -> str | None:
        """A file this partition wrote, if there is any."""
        found = self.layout.partition_files(self.dataset, partition, listed)
        return next((item.key for item, _ in found), None)

    def remove_leftovers(
        self,
        partition: int,
        keep: frozenset[str] = frozenset(),
        listed: Sequence[StoredObject] | None = None,
    ) -> int:
        """Delete the temporary and staged files of this partition a writer left behind
        (except ``keep``: those a checkpoint still publishes); ``listed`` is
        ``listing(temporaries=True)`` (None: listed now)."""
        found = self.listing(temporaries=True) if listed is None else listed
        stale = [
            item.key
            for item in self.layout.partition_leftovers(partition, found)
            if item.key not in keep
        ]
        return self.store.delete(stale)

    def remove_windows_after(
        self,
        partition: int,
        boundary_ms: int | None,
        epoch: int = 0,
        next_offset: int | None = None,
        listed: Sequence[StoredObject] | None = None,
    ) -> int:
        """Delete this partition's files holding a window that ends after ``boundary_ms``.

        Those were written after the last checkpoint (whose close boundary it is); a replay
        writes them again. ``None`` (no window was closed at the checkpoint) means all of them.

        A file some checkpoint up to this one published was made from records read before
        it: its name's epoch is at most ``epoch`` and, in that epoch, its last offset is
        before ``next_offset``. Such files are known from their names and not read, so taking
        a partition over costs a listing however many files it has (reading each one's
        windows took ~5 s a partition on object storage, long enough to set off a new
        rebalance); only a file no checkpoint can have published is read.
        """
        import pyarrow.compute as pc

        doomed = []
        for item, name in list(self.layout.partition_files(self.dataset, partition, listed)):
            published = name.epoch < epoch or (
                name.epoch == epoch and next_offset is not None and name.last_offset < next_offset
            )
            if published:
                continue
            if boundary_ms is not None:
                ends = read_table(self.store, item.key, columns=["window_end"]).column(0)
                newest = pc.max(ends).as_py()
                if newest is None or int(newest.timestamp() * 1000) <= boundary_ms:
                    continue
            doomed.append(item.key)
        return self.store.delete(doomed)

    def remove_from_offset(
        self,
        partition: int,
        epoch: int,
        offset: int | None,
        listed: Sequence[StoredObject] | None = None,
    ) -> int:
        """Delete this partition's files of ``epoch`` made from records at or after ``offset``
        (None: all of that epoch's)."""
        doomed = [
            item.key
            for item, name in list(self.layout.partition_files(self.dataset, partition, listed))
            if name.epoch == epoch and (offset is None or name.first_offset >= offset)
        ]
        return self.store.delete(doomed)


def publish_staged(sink: RecordSink) -> list[str]:
    """Publish what ``sink`` staged, without a checkpoint (backfills and tests, whose files
    no partition vouches for); the keys published."""
    published = []
    for staged, final in sink.take_staged():
        sink.store.move(staged, final)
        published.append(final)
    return published
