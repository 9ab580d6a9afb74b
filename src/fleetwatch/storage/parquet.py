"""Durable, replay-safe Parquet files: atomic writes, deterministic names, orphan clean-up.

Layout (hive-partitioned by event time)::

    <data>/aggregates/date=2026-11-22/hour=10/p0003-000000012000-000000015999.parquet
    <data>/late/date=2026-11-22/hour=10/p0003-000000015000-000000015998.parquet

A name is ``p<partition>-<first offset>-<last offset>`` of the Kafka records the file was made
from, so replaying the same records writes the same name (an overwrite, never a duplicate).
A file appears whole or not at all: written to a temporary name, fsync'ed, renamed, and the
directory fsync'ed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

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
_NAME = re.compile(r"^p(\d{4})-(\d{12})-(\d{12})\.parquet$")


class RecordSink(Protocol):
    """Where closed windows (or late readings) go. Called from the worker's event loop.

    ``write`` blocks until the rows are durable and returns the paths written; it raises
    ``OSError`` when the disk refuses, and then nothing was committed, so a restart replays.
    """

    def write(self, frame: pd.DataFrame, partition: int, time_column: str) -> list[Path]: ...

    def remove_windows_after(self, partition: int, boundary_ms: int | None) -> int: ...

    def remove_from_offset(self, partition: int, offset: int | None) -> int: ...


def file_name(partition: int, first_offset: int, last_offset: int) -> str:
    """The deterministic name of a file made from records first..last of a partition.

    >>> file_name(3, 12000, 15999)
    'p0003-000000012000-000000015999.parquet'
    """
    return f"p{partition:04d}-{first_offset:012d}-{last_offset:012d}.parquet"


def parse_file_name(name: str) -> tuple[int, int, int] | None:
    match = _NAME.match(name)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Snappy, the Parquet default most readers expect: scoring decodes an hour of it in 0.27
#: CPU-seconds where zstd takes 0.46 (6M rows), for files 8% larger (random values; the
#: demo's small files: no larger). ``[aggregate] parquet_compression`` chooses another.
DEFAULT_COMPRESSION: Final = "snappy"


def write_atomically(table: pa.Table, path: Path, compression: str = DEFAULT_COMPRESSION) -> None:
    """Write ``table`` to ``path`` so that readers see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        pq.write_table(table, handle, compression=compression)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def hour_directory(root: Path, hour_start: datetime) -> Path:
    return root / f"date={hour_start:%Y-%m-%d}" / f"hour={hour_start:%H}"


class PartitionedParquetSink:
    """A :class:`RecordSink` writing hive-partitioned files under ``root``."""

    def __init__(
        self, root: Path, schema: pa.Schema, compression: str = DEFAULT_COMPRESSION
    ) -> None:
        self.root = root
        self.schema = schema
        self.compression = compression

    def write(self, frame: pd.DataFrame, partition: int, time_column: str) -> list[Path]:
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
            path = hour_directory(self.root, pd.Timestamp(hour_start)) / file_name(
                partition, first, last
            )
            write_atomically(table, path, self.compression)
            written.append(path)
        return written

    def files_of(self, partition: int) -> Iterator[tuple[Path, int, int]]:
        """``(path, first_offset, last_offset)`` of every file this partition wrote."""
        if not self.root.exists():
            return
        for path in self.root.glob(f"date=*/hour=*/p{partition:04d}-*.parquet"):
            parsed = parse_file_name(path.name)
            if parsed is not None:
                yield path, parsed[1], parsed[2]

    def remove_windows_after(self, partition: int, boundary_ms: int | None) -> int:
        """Delete this partition's files holding a window that ends after ``boundary_ms``.

        Those were written after the last checkpoint (whose close boundary it is); a replay
        writes them again. ``None`` (no window was closed at the checkpoint) means all of them.
        """
        import pyarrow.compute as pc

        self._remove_temporary(partition)
        removed = 0
        for path, _, _ in list(self.files_of(partition)):
            if boundary_ms is not None:
                ends = pq.read_table(path, columns=["window_end"]).column(0)
                newest = pc.max(ends).as_py()
                if newest is None or int(newest.timestamp() * 1000) <= boundary_ms:
                    continue
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def remove_from_offset(self, partition: int, offset: int | None) -> int:
        """Delete this partition's files made from records at or after ``offset`` (None: all)."""
        self._remove_temporary(partition)
        removed = 0
        for path, first, _ in list(self.files_of(partition)):
            if offset is None or first >= offset:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _remove_temporary(self, partition: int) -> None:
        for temporary in self.root.glob(f"date=*/hour=*/.p{partition:04d}-*.tmp"):
            temporary.unlink(missing_ok=True)
