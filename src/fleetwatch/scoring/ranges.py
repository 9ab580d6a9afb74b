"""Per-device training ranges: each device's first N readings, first duration or first share
of its windows (``train --first``), or a CSV of ranges (``train --ranges``).

A device's range is always whole windows from its first one: for N readings, the windows whose
readings are all among its first N (a window's readings: its most-reported sensor's count).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwatch.config.values import parse_duration, parse_timestamp
from fleetwatch.errors import InvalidInputError
from fleetwatch.storage.layout import HOUR, DataLayout
from fleetwatch.storage.parquet import read_table
from fleetwatch.storage.store import DataStore
from fleetwatch.telemetry import is_valid_name

Range = tuple[datetime, datetime]


@dataclass(frozen=True)
class FirstPart:
    """What ``--first`` asked for: ``readings`` (a count), ``duration`` (seconds) or
    ``share`` (of the windows, 0..1)."""

    unit: str
    amount: float

    @classmethod
    def parse(cls, text: str, flag: str = "--first") -> FirstPart:
        """``400`` readings, ``400s``/``2h`` a duration, ``0.3`` or ``30%`` a share; ``flag``
        names the option in an error.

        >>> FirstPart.parse("400"), FirstPart.parse("90s"), FirstPart.parse("25%")
        (FirstPart(unit='readings', amount=400.0), FirstPart(unit='duration', amount=90.0), \
FirstPart(unit='share', amount=0.25))
        """
        value = text.strip().lower()
        try:
            if re.fullmatch(r"\d+", value):
                first = cls("readings", float(value))
            elif value.endswith("%"):
                first = cls("share", float(value[:-1]) / 100)
            elif re.fullmatch(r"\d*\.\d+", value):
                first = cls("share", float(value))
            else:
                first = cls("duration", parse_duration(value))
        except ValueError:
            raise InvalidInputError(
                f"{flag} {text!r}: give readings (400), a duration (400s, 2h) or a share (0.3, 30%)"
            ) from None
        if first.unit == "share" and not 0 < first.amount < 1:
            raise InvalidInputError(f"{flag} {text!r}: a share must be between 0 and 1")
        if not first.amount > 0:  # 0 readings, 0s: nothing to train on
            raise InvalidInputError(f"{flag} {text!r}: nothing to train on; give more than 0")
        return first


def data_span(layout: DataLayout) -> Range | None:
    """From the first hour with aggregates to the end of the last one."""
    hours = list(layout.hour_objects("aggregates"))
    return (min(hours), max(hours) + HOUR) if hours else None


def first_ranges(
    layout: DataLayout,
    first: FirstPart,
    since: datetime,
    until: datetime,
    window_ms: int,
    devices: Iterable[str] | None = None,
) -> dict[str, Range]:
    """Each device's range for ``first``, within [since, until)."""
    wanted = None if devices is None else set(devices)
    files = [item.key for item in layout.files_between(since, until)]
    windows = _windows(layout.store, files, since, until, wanted)
    ranges = {}
    for device_id, (starts, readings) in windows.items():
        if first.unit == "readings":
            through = int(np.searchsorted(np.cumsum(readings), first.amount, side="right"))
        elif first.unit == "duration":
            end = starts[0] + round(first.amount * 1000)
            through = int(np.searchsorted(starts + window_ms, end, side="right"))
        else:
            through = math.ceil(first.amount * len(starts))
        if through <= 0:
            continue
        end_ms = int(starts[through]) if through < len(starts) else int(starts[-1]) + window_ms
        ranges[device_id] = (_at(int(starts[0])), _at(end_ms))
    return ranges


def _at(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


def _windows(
    store: DataStore, files: list[str], since: datetime, until: datetime, wanted: set[str] | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per device: its window starts (epoch ms, sorted) and readings per window."""
    if not files:
        return {}
    tables = [
        read_table(store, key, columns=["device_id", "window_start", "count"]) for key in files
    ]
    table = pa.concat_tables([t.cast(tables[0].schema) for t in tables])
    starts = pc.cast(table.column("window_start"), pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    inside = pc.and_(
        pc.greater_equal(starts, round(since.timestamp() * 1000)),
        pc.less(starts, round(until.timestamp() * 1000)),
    )
    table = pa.table(
        {
            "device_id": pc.cast(table.column("device_id"), pa.string()),
            "window_start": starts,
            "count": table.column("count"),
        }
    ).filter(inside)
    grouped = table.group_by(["device_id", "window_start"]).aggregate([("count", "max")])
    grouped = grouped.sort_by([("device_id", "ascending"), ("window_start", "ascending")])
    devices = grouped.column("device_id").to_pylist()
    window_starts = grouped.column("window_start").to_numpy()
    counts = grouped.column("count_max").to_numpy()
    result: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    begin = 0
    for end in range(1, len(devices) + 1):
        if end == len(devices) or devices[end] != devices[begin]:
            if wanted is None or devices[begin] in wanted:
                result[devices[begin]] = (window_starts[begin:end], counts[begin:end])
            begin = end
    return result


#: The longest line of a ranges file (one is ~60 characters): past it the file is no such CSV
#: (``/dev/zero``'s one endless line would be read into memory whole).
MAX_LINE = 64 << 10


def _short_lines(handle: TextIO, path: Path, flag: str) -> Iterator[str]:
    """The lines of an open text file, refused at the first longer than :data:`MAX_LINE`."""
    number = 0
    while line := handle.readline(MAX_LINE + 1):
        number += 1
        if len(line) > MAX_LINE:
            raise InvalidInputError(
                f"{flag} {path}: line {number} is longer than {MAX_LINE >> 10} KiB: not a CSV of "
                "device_id,since,until"
            )
        yield line


def read_ranges(path: Path, flag: str = "--ranges") -> dict[str, Range]:
    """A CSV of ``device_id,since,until`` (a header line; timestamps ISO-8601, UTC if no zone)."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(_short_lines(handle, path, flag)))
    except OSError as exc:
        raise InvalidInputError(f"{flag} {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(
            f"{flag} {path}: not a CSV of device_id,since,until ({exc})"
        ) from None
    ranges = {}
    for line, row in enumerate(rows, start=2):
        try:
            device_id = (row.get("device_id") or "").strip()
            if not is_valid_name(device_id):
                raise ValueError(f"device id {device_id!r} is not 1-64 of [A-Za-z0-9_.-]")
            since = parse_timestamp((row.get("since") or "").strip())
            until = parse_timestamp((row.get("until") or "").strip())
            if until <= since:
                raise ValueError("until is not after since")
        except (ValueError, InvalidInputError) as exc:
            raise InvalidInputError(
                f"{flag} {path} line {line}: {exc} (expected columns device_id,since,until)"
            ) from None
        ranges[device_id] = (since, until)
    if not ranges:
        raise InvalidInputError(f"{flag} {path}: no ranges (columns device_id,since,until)")
    return ranges
