"""Hourly compaction: a closed hour's live aggregate files merged into one.

The aggregator writes one file per partition per checkpoint (24 partitions checkpointing every
10 s: 8,640 files an hour), so listing and opening files comes to cost more than reading them.
Once an hour is **closed** (every partition's watermark is past its end), no live file will be
added to it or rewritten: a replay after a crash re-reads only records of windows still open,
and readings for closed windows go to the late sink. So its live files can be merged, in two
steps that each leave the hour whole:

1. the live files of one :class:`~fleetwatch.storage.layout.HourFiles` (one listing) are read
   and written, in order, into ``c-<digest>.parquet`` (the digest of their names), whose
   metadata lists them: a write that appears whole or not at all. From then on, readers of the
   hour ignore exactly those live files (:meth:`~fleetwatch.storage.layout.DataLayout.hour_files`);
   a file the listing did not see is not in the list, so it stays visible;
2. the merged live files are deleted (only those: never a file the compaction did not merge).

The hour's signature is made from its live files' digest, which the compacted file's name
carries, so scoring sees the same signature before, during and after a compaction: a crash
at any point neither loses a window nor scores the hour again; the next compaction of the hour
deletes what is left. Only the aggregates are compacted: the late sink gets files for closed
hours at any time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq

from fleetwatch.faults import point
from fleetwatch.storage.layout import (
    MERGED_KEY,
    DataLayout,
    HourFiles,
    compacted_file_name,
    hour_prefix,
)
from fleetwatch.storage.parquet import AGGREGATE_SCHEMA, DEFAULT_COMPRESSION, read_table
from fleetwatch.storage.store import StoredObject, join

log = logging.getLogger(__name__)

#: Rows per row group of a compacted file: large enough that a reader's per-group cost is
#: negligible, small enough that writing holds little memory.
ROW_GROUP_ROWS = 1 << 20


@dataclass(frozen=True)
class Compaction:
    """One hour's compaction: the compacted file, and the live files it replaced (deleted by
    :func:`finish`)."""

    hour: datetime
    merged: tuple[StoredObject, ...]
    key: str
    rows: int

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def needs_compaction(files: HourFiles) -> bool:
    """The hour has live files to merge, or left-overs of a compaction to delete."""
    return bool(files.hidden) or len(files.live) >= (1 if files.compacted else 2)


def compact_hour(
    layout: DataLayout, files: HourFiles, compression: str = DEFAULT_COMPRESSION
) -> Compaction | None:
    """Write the compacted file of a **closed** hour (the caller knows it is closed) from the
    live files of ``files``; None when there is nothing to do. An hour already compacted whose
    listing shows left-overs gives a compaction of zero rows, for :func:`finish` to delete
    them; one with live files its compacted file did not merge (written after it: the hour was
    not closed after all) is left alone, and logged."""
    live = sorted(files.live)
    if files.compacted is not None:
        if live:
            log.warning(
                "%s: %d live files beside its compacted file %s were not merged; left as they "
                "are (each window is read once)",
                f"{files.hour:%Y-%m-%dT%H}", len(live), files.compacted.name,
            )  # fmt: skip
        if not files.hidden:
            return None
        return Compaction(files.hour, files.hidden, files.compacted.key, 0)
    if len(live) < 2:
        return None
    names = [item.name for item in live]
    key = join(hour_prefix("aggregates", files.hour), compacted_file_name(names))
    codec = None if compression == "none" else compression
    schema = AGGREGATE_SCHEMA.with_metadata({MERGED_KEY: json.dumps(names).encode()})
    rows = 0

    def write(handle: object) -> None:
        nonlocal rows
        with pq.ParquetWriter(handle, schema, compression=codec) as writer:
            pending: list[pa.Table] = []
            held = 0
            for item in live:
                table = read_table(layout.store, item.key)
                table = table.select(AGGREGATE_SCHEMA.names).cast(AGGREGATE_SCHEMA)
                pending.append(table.replace_schema_metadata(schema.metadata))
                held += table.num_rows
                if held >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    rows += held
                    pending, held = [], 0
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                rows += held

    layout.store.write(key, write)
    point("compaction.published")  # the compacted file is there, the live files too
    return Compaction(files.hour, tuple(live), key, rows)


def finish(layout: DataLayout, compaction: Compaction) -> int:
    """Delete the live files the compacted file replaced (those it lists, nothing else); how
    many."""
    return layout.store.delete(item.key for item in compaction.merged)
