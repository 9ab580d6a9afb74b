"""``fleetwatch import FILE --backfill``: historical readings straight into the aggregates.

Published to Kafka, a file of old readings meets the live watermark and lands in the late
sink (its windows closed long ago). A backfill takes the file's valid readings through the same
window statistics as the aggregator (:func:`fleetwatch.aggregate.windows.aggregate_batch`:
count, mean, population std, min, max per device, sensor and window) without any watermark, and
writes each event-time hour as one file ``b-<import id>.parquet`` beside the live ones. The
import id is a digest of the file's bytes and the window length, so importing the same file
again rewrites the same files (never a duplicate). Windows that another file of the hour already
holds (the live aggregation's, or another backfill's) are refused, never doubled. An hour whose
files all come from backfills is closed at once, so ``train`` and ``score`` use it as they use
live data (see :mod:`fleetwatch.scoring.pending`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fleetwatch.aggregate.windows import AGGREGATE_COLUMNS, aggregate_batch
from fleetwatch.errors import InvalidInputError
from fleetwatch.faults import point
from fleetwatch.storage.layout import DataLayout, backfill_file_name
from fleetwatch.storage.parquet import AGGREGATE_SCHEMA, read_table, write_table
from fleetwatch.storage.store import DataStore, StoredObject

Message = tuple[str, int, dict[str, float]]  # device_id, ts_ms, readings


@dataclass
class BackfillSummary:
    import_id: str
    readings: int = 0
    windows: int = 0
    files: list[str] = field(default_factory=list)

    def as_record(self) -> dict[str, Any]:
        return {
            "backfill_id": self.import_id,
            "readings_aggregated": self.readings,
            "windows_written": self.windows,
            "hours_written": len(self.files),
        }


def import_id(path: Path, window_ms: int) -> str:
    digest = hashlib.sha256(f"window={window_ms};".encode())
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def windows_of(messages: Iterable[Message], window_ms: int) -> pd.DataFrame:
    """The windows of ``messages``, in the aggregate schema's columns, with no watermark."""
    pairs: dict[tuple[str, str], int] = {}
    names: list[tuple[str, str]] = []
    codes: list[int] = []
    values: list[float] = []
    for device_id, ts_ms, readings in messages:
        window = ts_ms // window_ms
        for sensor, value in readings.items():
            pair = pairs.get((device_id, sensor))
            if pair is None:
                pair = pairs[(device_id, sensor)] = len(names)
                names.append((device_id, sensor))
            codes.append((pair << 32) | window)
            values.append(value)
    if not codes:
        return pd.DataFrame(columns=list(AGGREGATE_COLUMNS))
    stats = aggregate_batch(
        np.array(codes, dtype=np.int64),
        np.array(values, dtype=np.float64),
        np.zeros(len(codes), dtype=np.int64),
    )
    starts = (stats.codes & ((1 << 32) - 1)) * window_ms
    owners = [names[code] for code in (stats.codes >> 32).tolist()]
    frame = pd.DataFrame(
        {
            "device_id": [device for device, _ in owners],
            "sensor": [sensor for _, sensor in owners],
            "window_start": starts,
            "window_end": starts + window_ms,
            "count": stats.count,
            "mean": stats.mean,
            "std": np.sqrt(np.maximum(stats.m2 / stats.count, 0.0)),
            "min": stats.minimum,
            "max": stats.maximum,
        }
    )
    for column in ("window_start", "window_end"):
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True).astype(
            "datetime64[ms, UTC]"
        )
    # by device: a part of the fleet (scoring or training a few devices at a time) reads
    # the row groups of its devices only
    return frame.sort_values(["device_id", "window_start", "sensor"], kind="stable")


#: Rows per row group of a backfill file (sorted by device: a group holds about
#: ``GROUP_ROWS / (sensors x windows an hour)`` devices, 546 of 4 sensors, 1-min windows):
#: what a part of a fleet reads beyond its devices is at most a group per file.
GROUP_ROWS = 1 << 17


def backfill(
    layout: DataLayout,
    messages: Iterable[Message],
    identity: str,
    window_ms: int,
    compression: str,
) -> BackfillSummary:
    """Write the windows of ``messages`` as backfill files named after ``identity``."""
    name = backfill_file_name(identity)
    frame = windows_of(messages, window_ms)
    summary = BackfillSummary(identity)
    if frame.empty:  # no valid reading: nothing to write (the rejected rows say why)
        return summary
    hours = frame["window_start"].dt.floor("h")
    planned = []
    for hour, rows in frame.groupby(hours, sort=True):
        hour_start = pd.Timestamp(hour).to_pydatetime()
        clashes = _existing_windows(
            layout.store, layout.hour_data("aggregates", hour_start), name, rows
        )
        if clashes:
            raise InvalidInputError(
                f"{clashes} windows of this file in {hour_start:%Y-%m-%dT%H}:00Z exist already "
                "(written by the live aggregation or another backfill); backfill only what is "
                "missing, or move that hour's files away first"
            )
        planned.append((layout.hour_key("aggregates", hour_start, name), rows))
    for key, rows in planned:
        table = pa.Table.from_pandas(
            rows[list(AGGREGATE_SCHEMA.names)], schema=AGGREGATE_SCHEMA, preserve_index=False
        )
        write_table(layout.store, key, table, compression, row_group_size=GROUP_ROWS)
        point("backfill.written")  # the fault suite: some hours written, the others not
        summary.files.append(key)
        summary.windows += len(rows)
        summary.readings += int(rows["count"].sum())
    return summary


def _existing_windows(
    store: DataStore, files: list[StoredObject], own: str, rows: pd.DataFrame
) -> int:
    """How many of ``rows``' (device, sensor, window) are in ``files`` (other than ``own``).
    Only the other files' rows in the time span of ``rows`` are read (their row groups outside
    it are skipped by their statistics): an hour backfilled a few minutes per file reads what
    the file could clash with, not every earlier file of the hour whole."""
    others = [item.key for item in files if item.name != own]
    if not others:
        return 0
    wanted = set(rows["device_id"])
    keys = ["device_id", "sensor", "window_start"]
    span = [
        ("window_start", ">=", rows["window_start"].min().to_pydatetime()),
        ("window_start", "<=", rows["window_start"].max().to_pydatetime()),
    ]
    found = []
    for key in others:
        table = read_table(store, key, columns=keys, filters=span)
        part = table.to_pandas()
        found.append(part[part["device_id"].isin(wanted)])
    existing = pd.concat(found, ignore_index=True)
    if existing.empty:
        return 0
    existing["window_start"] = existing["window_start"].astype("datetime64[ms, UTC]")
    return len(rows[keys].merge(existing, on=keys, how="inner"))
