"""Hourly compaction: a closed hour's live aggregate files merged into one.

The aggregator writes one file per partition per checkpoint (24 partitions checkpointing every
10 s: 8,640 files an hour), so listing and opening files comes to cost more than reading them.
Once an hour is **closed** (every partition's watermark is past its end), no live file will be
added to it or rewritten: a replay after a crash re-reads only records of windows still open,
and readings for closed windows go to the late sink. So its live files can be merged:

1. the live files are read and written, in order, into ``c-<digest>.parquet`` (the digest of
   their names), a write that appears whole or not at all;
2. from then on, readers of that hour folder ignore its live files (:func:`fleetwatch.storage.
   layout.visible`): the hour's windows are the compacted file's (and any backfill's), each once;
3. the scoring runs that recorded the hour's old file signature are given the new one (the data
   did not change, so the hour is not scored again);
4. the live files are deleted. A crash before this leaves them hidden; the next compaction of
   the hour deletes them.

Only the aggregates are compacted: the late sink gets files for closed hours at any time.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fleetwatch.storage.atomic import write_atomically
from fleetwatch.storage.layout import (
    DataLayout,
    compacted_file_name,
    is_compacted_file,
    parse_live_file_name,
)
from fleetwatch.storage.parquet import AGGREGATE_SCHEMA, DEFAULT_COMPRESSION, read_table

log = logging.getLogger(__name__)

#: Rows per row group of a compacted file: large enough that a reader's per-group cost is
#: negligible, small enough that writing holds little memory.
ROW_GROUP_ROWS = 1 << 20


@dataclass(frozen=True)
class Compaction:
    """One hour's compaction, written but not yet finished (see :func:`finish`)."""

    hour: datetime
    merged: tuple[Path, ...]  # the live files now hidden by ``path``
    path: Path
    rows: int


def compact_hour(
    layout: DataLayout, hour: datetime, compression: str = DEFAULT_COMPRESSION
) -> Compaction | None:
    """Write the compacted file of a **closed** hour (the caller knows it is closed) when it
    has at least two live files; None when there is nothing to merge. Left-overs of an earlier
    compaction are returned as a compaction of zero rows, for :func:`finish` to delete."""
    every = layout.all_hour_files("aggregates", hour)
    live = [path for path in every if parse_live_file_name(path.name) is not None]
    done = [path for path in every if is_compacted_file(path.name)]
    if done:
        return Compaction(hour, tuple(live), done[0], 0) if live else None
    if len(live) < 2:
        return None
    digest = hashlib.sha256("\n".join(p.name for p in live).encode()).hexdigest()[:16]
    target = live[0].parent / compacted_file_name(digest)
    codec = None if compression == "none" else compression
    rows = 0

    def write(handle: object) -> None:
        nonlocal rows
        with pq.ParquetWriter(handle, AGGREGATE_SCHEMA, compression=codec) as writer:
            pending: list[pa.Table] = []
            held = 0
            for path in live:
                table = read_table(path).select(AGGREGATE_SCHEMA.names).cast(AGGREGATE_SCHEMA)
                pending.append(table)
                held += table.num_rows
                if held >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    rows += held
                    pending, held = [], 0
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                rows += held

    write_atomically(target, write)
    return Compaction(hour, tuple(live), target, rows)


def finish(compaction: Compaction) -> int:
    """Delete the live files the compacted file replaced; how many."""
    removed = 0
    for path in compaction.merged:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            continue
    return removed
