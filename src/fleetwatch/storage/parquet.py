"""Durable, replay-safe Parquet files: schemas, atomic writes, deterministic names, clean-up.

Where the files go and how they are named is :mod:`fleetwatch.storage.layout`'s; a file
appears whole or not at all (:mod:`fleetwatch.storage.atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from fleetwatch.storage import atomic
from fleetwatch.storage.layout import DataLayout, Dataset, live_file_name
from fleetwatch.storage.remote import arrow_filesystem, arrow_source, is_remote

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


def read_table(source: Path | list[Path], **options: Any) -> pa.Table:
    """``pq.read_table`` of one file or several, local or in an object store."""
    paths = source if isinstance(source, list) else [source]
    if paths and is_remote(paths[0]):
        keys = [arrow_source(path)[0] for path in paths]
        target: Any = keys if isinstance(source, list) else keys[0]
        return pq.read_table(target, filesystem=arrow_filesystem(paths[0]), **options)
    return pq.read_table(source, **options)


def open_file(path: Path, **options: Any) -> pq.ParquetFile:
    """``pq.ParquetFile``, local or in an object store (read by byte ranges)."""
    source, filesystem = arrow_source(path)
    return pq.ParquetFile(source, filesystem=filesystem, **options)


def read_metadata(path: Path) -> pq.FileMetaData:
    source, filesystem = arrow_source(path)
    return pq.read_metadata(source, filesystem=filesystem)


def write_table(table: pa.Table, path: Path, compression: str = DEFAULT_COMPRESSION) -> None:
    """Write ``table`` to ``path`` so that readers see all of it or nothing."""
    codec = None if compression == "none" else compression
    atomic.write_atomically(path, lambda handle: pq.write_table(table, handle, compression=codec))


class RecordSink(Protocol):
    """Where closed windows (or late readings) go. Called from the worker's event loop.

    ``write`` blocks until the rows are durable and returns the paths written; it raises
    :class:`~fleetwatch.errors.StorageError` when the disk refuses, and then nothing was
    committed, so a restart replays.
    """

    def write(
        self, frame: pd.DataFrame, partition: int, time_column: str, epoch: int = 0
    ) -> list[Path]: ...


class PartitionedParquetSink:
    """A :class:`RecordSink` writing one of the data directory's hive-partitioned datasets."""

    def __init__(
        self, layout: DataLayout, dataset: Dataset, compression: str = DEFAULT_COMPRESSION
    ) -> None:
        self.layout = layout
        self.dataset: Dataset = dataset
        self.schema = AGGREGATE_SCHEMA if dataset == "aggregates" else LATE_SCHEMA
        self.compression = compression

    def write(
        self, frame: pd.DataFrame, partition: int, time_column: str, epoch: int = 0
    ) -> list[Path]:
        """One file per event-time hour of ``time_column``, named from the rows' offsets.

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
            folder = self.layout.hour_dir(self.dataset, pd.Timestamp(hour_start).to_pydatetime())
            path = folder / live_file_name(partition, first, last, epoch)
            write_table(table, path, self.compression)
            written.append(path)
        return written

    def has_files(self, partition: int) -> Path | None:
        """A file this partition wrote, if there is any."""
        return next(
            (path for path, _ in self.layout.partition_files(self.dataset, partition)), None
        )

    def remove_windows_after(self, partition: int, boundary_ms: int | None) -> int:
        """Delete this partition's files holding a window that ends after ``boundary_ms``.

        Those were written after the last checkpoint (whose close boundary it is); a replay
        writes them again. ``None`` (no window was closed at the checkpoint) means all of them.
        """
        import pyarrow.compute as pc

        self._remove_temporaries(partition)
        removed = 0
        for path, _ in list(self.layout.partition_files(self.dataset, partition)):
            if boundary_ms is not None:
                ends = read_table(path, columns=["window_end"]).column(0)
                newest = pc.max(ends).as_py()
                if newest is None or int(newest.timestamp() * 1000) <= boundary_ms:
                    continue
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def remove_from_offset(self, partition: int, epoch: int, offset: int | None) -> int:
        """Delete this partition's files of ``epoch`` made from records at or after ``offset``
        (None: all of that epoch's)."""
        self._remove_temporaries(partition)
        removed = 0
        for path, name in list(self.layout.partition_files(self.dataset, partition)):
            if name.epoch == epoch and (offset is None or name.first_offset >= offset):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _remove_temporaries(self, partition: int) -> None:
        for temporary in self.layout.partition_temporaries(self.dataset, partition):
            temporary.unlink(missing_ok=True)
