"""``fleetwatch import FILE``: publish a CSV or Parquet file of readings to the telemetry topic.

Two layouts are understood:

* long, as in Azure's batch-scoring reference implementation: ``TS, Device, Tag, Value``, one
  reading per row; rows sharing (TS, Device) become one message;
* wide: a timestamp column, a ``device_id`` column (or ``--device-id``), one column per sensor.

Invalid rows are reported with their line numbers (CSV: the file's line; Parquet: the row) and
are not published; everything valid is.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from fleetwatch.brokers.clients import delivery_error, finish, make_producer
from fleetwatch.config import Settings
from fleetwatch.errors import BrokerError, InvalidInputError, NothingDoneError, StorageError
from fleetwatch.ingest.backfill import BackfillSummary, backfill, import_id
from fleetwatch.output import progress_bar
from fleetwatch.storage.atomic import check_appendable
from fleetwatch.telemetry import (
    MAX_EVENT_MS,
    MIN_EVENT_MS,
    encode_message,
    is_valid_name,
)

#: A long file's sensor and value columns, by their usual names (its time and device columns
#: are named as a wide file's). Both must be there for ``auto`` to read a file as long.
TAG_COLUMNS = ("tag", "sensor", "sensor_id", "sensor_name", "metric", "variable", "signal")
VALUE_COLUMNS = ("value", "reading", "val", "measurement")
#: Column names that usually hold labels, not readings: imported as sensors only with a warning.
LABEL_LIKE = frozenset(
    {"anomaly", "anomalies", "label", "labels", "is_anomaly", "changepoint", "target", "fault"}
)
TIMESTAMP_COLUMNS = ("timestamp", "ts", "datetime", "time", "event_time")
DEVICE_COLUMNS = ("device_id", "device", "deviceid")


@dataclass(frozen=True)
class RejectedRow:
    line: int  # CSV: the line in the file (header = 1); Parquet: the 1-based row
    reason: str


@dataclass
class ImportSummary:
    file: str
    layout: str
    rows: int = 0
    messages_sent: int = 0
    messages_failed: int = 0
    readings: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    first_error: str | None = None
    backfill: BackfillSummary | None = None
    readings_closed: int = 0  # for windows the aggregation closed already: they will be late
    closed_through: datetime | None = None
    labels_kept_out: list[str] = field(default_factory=list)
    label_like: list[str] = field(default_factory=list)  # imported as sensors: a warning

    def as_record(self) -> dict[str, Any]:
        if self.backfill is not None:
            return {
                "file": self.file,
                "layout": self.layout,
                "rows": self.rows,
                **self.backfill.as_record(),
                "rows_rejected": len(self.rejected),
                "label_columns": ",".join(self.labels_kept_out) or None,
            }
        return {
            "file": self.file,
            "layout": self.layout,
            "rows": self.rows,
            "messages_sent": self.messages_sent,
            "messages_failed": self.messages_failed,
            "readings": self.readings,
            "rows_rejected": len(self.rejected),
            "first_error": self.first_error,
            "label_columns": ",".join(self.labels_kept_out) or None,
        }


def read_table(path: Path, delimiter: str = "") -> tuple[pd.DataFrame, int]:
    """The file as a frame of strings/values, and the line number of its first data row."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path), 1
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            reason = str(exc).splitlines()[0][:200]
            raise InvalidInputError(f"{path}: not a readable Parquet file ({reason})") from None
    if suffix not in (".csv", ".txt", ".tsv"):
        raise InvalidInputError(f"{path}: unknown file type; use .csv or .parquet")
    if delimiter and len(delimiter) != 1:
        raise InvalidInputError(
            f"--delimiter {delimiter!r}: give one character (',', ';', a tab, '|')"
        )
    if not delimiter:
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            sample = handle.read(64 * 1024)
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    try:
        frame = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InvalidInputError(f"{path}: the file is empty: no header, no readings") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise InvalidInputError(f"{path}: cannot read as CSV: {reason}") from None
    _refuse_repeated_names(path, delimiter)
    return frame, 2


def _refuse_repeated_names(path: Path, delimiter: str) -> None:
    """pandas renames a second ``t`` column ``t.1``, which would become a sensor of that name."""
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle, delimiter=delimiter), [])
    seen: set[str] = set()
    for name in (cell.strip() for cell in header):
        if name in seen:
            raise InvalidInputError(
                f"{path}: the header names column {name[:80]!r} twice; rename one of them"
            )
        seen.add(name)


def _find(columns: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {c.strip().lower(): c for c in columns}
    return next((lowered[n] for n in names if n in lowered), None)


def detect_layout(frame: pd.DataFrame, wanted: str) -> str:
    columns = [str(c) for c in frame.columns]
    is_long = all(
        _find(columns, names) for names in (TIMESTAMP_COLUMNS, TAG_COLUMNS, VALUE_COLUMNS)
    )
    if wanted == "long" and not is_long:
        raise InvalidInputError(
            f"long layout needs a timestamp ({', '.join(TIMESTAMP_COLUMNS)}), a sensor "
            f"({', '.join(TAG_COLUMNS)}) and a value ({', '.join(VALUE_COLUMNS)}) column, "
            f"as in TS,Device,Tag,Value; got {columns}"
        )
    if wanted == "auto":
        return "long" if is_long else "wide"
    return wanted


class _Clock:
    """Parses one timestamp cell to epoch ms, or says why it cannot."""

    def __init__(self, assume: tzinfo | None) -> None:
        self.assume = assume

    def epoch_ms(self, cell: Any) -> int | str:
        if isinstance(cell, pd.Timestamp | datetime):
            moment: datetime = cell.to_pydatetime() if isinstance(cell, pd.Timestamp) else cell
        elif isinstance(cell, int | float) and not isinstance(cell, bool):
            if not math.isfinite(cell):
                return "timestamp is not a number"
            moment_ms = int(cell)
            return self._bounded(moment_ms, str(cell))
        else:
            text = str(cell).strip()
            if re.fullmatch(r"-?\d+", text):
                return self._bounded(int(text), text)
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return f"timestamp {text[:40]!r} is not ISO-8601 or epoch milliseconds"
        if moment.tzinfo is None:
            if self.assume is None:
                return f"timestamp {str(cell)[:40]!r} has no offset (pass --assume-timezone UTC)"
            moment = moment.replace(tzinfo=self.assume)
        return self._bounded(round(moment.timestamp() * 1000), str(cell))

    @staticmethod
    def _bounded(ts_ms: int, shown: str) -> int | str:
        if not MIN_EVENT_MS <= ts_ms < MAX_EVENT_MS:
            if MIN_EVENT_MS <= ts_ms * 1000 < MAX_EVENT_MS:
                return (
                    f"timestamp {shown[:40]!r} is outside 2000..2100 as epoch milliseconds "
                    "(epoch seconds? multiply by 1000, or write ISO-8601)"
                )
            return f"timestamp {shown[:40]!r} is outside 2000..2100"
        return ts_ms


def _number(cell: Any) -> float | None:
    if isinstance(cell, bool):
        return None
    try:
        value = float(cell)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.strip())[:64] or "_"


Message = tuple[str, int, dict[str, float]]


def kept_out(frame: pd.DataFrame, named: list[str], flag: str) -> list[str]:
    """The columns of ``frame`` that ``named`` names: the one of that exact name (spaces
    aside), else the one it names case aside; one clear error for a name that is no column or
    names two."""
    columns = [str(c) for c in frame.columns]
    found = []
    for name in named:
        match = _named(name, columns, flag, "columns")
        if match is None:
            raise InvalidInputError(
                f"{flag} {name!r}: no such column (the columns are {', '.join(columns)})"
            )
        found.append(match)
    return found


def _named(name: str, candidates: Collection[str], flag: str, what: str) -> str | None:
    """The one of ``candidates`` that ``name`` names: the one of that exact name (spaces
    aside), else the one it names case aside; None for none, one clear error for two."""
    wanted = name.strip()
    matches = [c for c in candidates if c.strip() == wanted] or [
        c for c in candidates if c.strip().lower() == wanted.lower()
    ]
    if len(matches) > 1:
        raise InvalidInputError(
            f"{flag} {name!r}: names {len(matches)} {what} "
            f"({', '.join(map(repr, sorted(matches)))}) that differ only in case: give the "
            "exact name"
        )
    return matches[0] if matches else None


def tags_left_out(frame: pd.DataFrame, named: list[str], flag: str) -> frozenset[str]:
    """The sensor tags of a long ``frame`` that ``named`` names, as ``kept_out`` finds columns:
    the exact tag (spaces aside), else the one it names case aside (a name no row has is not an
    error: a label may be absent from a file)."""
    tag_col = _find([str(c) for c in frame.columns], TAG_COLUMNS)
    assert tag_col is not None  # detect_layout
    tags = {str(t).strip() for t in frame[tag_col].unique()}
    found = (_named(name, tags, flag, "sensors") for name in named)
    return frozenset(tag for tag in found if tag is not None)


def _devices(frame: pd.DataFrame, columns: list[str], device_id: str) -> tuple[Any, str | None]:
    """Each row's device (its device column's, else ``device_id``), and that column."""
    dev_col = _find(columns, DEVICE_COLUMNS)
    if dev_col is None and not device_id:
        raise InvalidInputError(
            f"no device column ({', '.join(DEVICE_COLUMNS)}): pass --device-id NAME for this file"
        )
    if device_id and not is_valid_name(device_id):
        raise InvalidInputError(f"--device-id {device_id!r}: use 1-64 of [A-Za-z0-9_.-]")
    return (frame[dev_col] if dev_col is not None else [device_id] * len(frame)), dev_col


def long_messages(
    frame: pd.DataFrame,
    first_line: int,
    clock: _Clock,
    rejected: list[RejectedRow],
    left_out: frozenset[str] = frozenset(),
    device_id: str = "",
) -> Iterator[Message]:
    """Group valid long rows into messages, in order of first appearance; readings whose tag
    is in ``left_out`` (labels, excluded names: ``tags_left_out``) are left out. Without a
    device column, every row is ``device_id``'s."""
    columns = [str(c) for c in frame.columns]
    ts_col, tag_col, val_col = (
        _find(columns, names) for names in (TIMESTAMP_COLUMNS, TAG_COLUMNS, VALUE_COLUMNS)
    )
    assert ts_col is not None and tag_col is not None and val_col is not None  # detect_layout
    devices, _ = _devices(frame, columns, device_id)
    groups: dict[tuple[str, int], dict[str, float]] = {}
    lines: dict[tuple[str, int, str], int] = {}
    for offset, (ts, device, tag, value) in enumerate(
        zip(frame[ts_col], devices, frame[tag_col], frame[val_col], strict=True)
    ):
        line = first_line + offset
        device, tag = str(device).strip(), str(tag).strip()
        if tag in left_out:
            continue
        when = clock.epoch_ms(ts)
        number = _number(value)
        reason = (
            f"device id {device[:80]!r} is not 1-64 of [A-Za-z0-9_.-]"
            if not is_valid_name(device)
            else f"sensor name {tag[:80]!r} is not 1-64 of [A-Za-z0-9_.-]"
            if not is_valid_name(tag)
            else when
            if isinstance(when, str)
            else f"value {str(value)[:40]!r} is not a finite number"
            if number is None
            else None
        )
        if reason is None:
            assert isinstance(when, int) and number is not None
            previous = lines.get((device, when, tag))
            if previous is not None:
                reason = f"duplicate reading of {device}/{tag} at {ts} (first on line {previous})"
            else:
                lines[(device, when, tag)] = line
                groups.setdefault((device, when), {})[tag] = number
        if reason is not None:
            rejected.append(RejectedRow(line, reason))
    for (device, when), readings in groups.items():
        yield device, when, readings


def wide_messages(
    frame: pd.DataFrame,
    first_line: int,
    clock: _Clock,
    rejected: list[RejectedRow],
    device_id: str,
    sanitize: bool,
    left_out: list[str] = (),  # type: ignore[assignment]
    rows: list[int] | None = None,
) -> Iterator[Message]:
    """Messages of valid wide rows; the columns ``left_out`` (labels, excluded) are not
    readings. With ``rows``, each message's row (0-based, in ``frame``) is appended to it."""
    columns = [str(c) for c in frame.columns]
    ts_col = _find(columns, TIMESTAMP_COLUMNS)
    if ts_col is None:
        raise InvalidInputError(
            f"wide layout needs a timestamp column ({', '.join(TIMESTAMP_COLUMNS)}); got {columns}"
        )
    devices, dev_col = _devices(frame, columns, device_id)
    sensors = [c for c in columns if c not in (ts_col, dev_col) and c not in left_out]
    names = {c: (_sanitize(c) if sanitize else c.strip()) for c in sensors}
    bad = [c for c, n in names.items() if not is_valid_name(n)]
    if bad:
        raise InvalidInputError(
            f"sensor column {bad[0]!r} is not 1-64 of [A-Za-z0-9_.-]; rename it or pass "
            "--sanitize-names"
        )
    if not sensors:
        raise InvalidInputError("wide layout needs at least one sensor column")
    sensor_columns = [frame[c].tolist() for c in sensors]
    for offset, (ts, device) in enumerate(zip(frame[ts_col], devices, strict=True)):
        line = first_line + offset
        device = str(device).strip()
        when = clock.epoch_ms(ts)
        if not is_valid_name(device):
            rejected.append(
                RejectedRow(line, f"device id {device[:80]!r} is not 1-64 of [A-Za-z0-9_.-]")
            )
            continue
        if isinstance(when, str):
            rejected.append(RejectedRow(line, when))
            continue
        readings: dict[str, float] = {}
        problem = None
        for column, cells in zip(sensors, sensor_columns, strict=True):
            cell = cells[offset]
            if cell is None or (isinstance(cell, str) and cell.strip() == ""):
                continue  # a sensor that did not report in this row
            number = _number(cell)
            if number is None:
                problem = f"{column} = {str(cell)[:40]!r} is not a finite number"
                break
            readings[names[column]] = number
        if problem is None and not readings:
            problem = "no readings in this row"
        if problem is not None:
            rejected.append(RejectedRow(line, problem))
            continue
        if rows is not None:
            rows.append(offset)
        yield device, when, readings


def import_file(settings: Settings, path: Path) -> ImportSummary:
    """Validate and publish ``path``; the summary lists every rejected row."""
    options = settings.import_
    assume: tzinfo | None = None
    if options.assume_timezone:
        try:
            assume = ZoneInfo(options.assume_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInputError(
                f"--assume-timezone {options.assume_timezone!r} is not a time zone (try UTC)"
            ) from None
    if options.rejects is not None:
        check_appendable(options.rejects, "--rejects")  # before anything is sent: none lost
    frame, first_line = read_table(path, options.delimiter)
    if frame.empty:
        raise NothingDoneError(f"{path} has no rows (a header at most): nothing to import")
    layout = detect_layout(frame, options.layout)
    summary = ImportSummary(file=str(path), layout=layout, rows=len(frame))
    clock = _Clock(assume)
    if layout == "long":
        names = tags_left_out(frame, options.label_columns, "--label-columns") | tags_left_out(
            frame, options.exclude_columns, "--exclude-columns"
        )
        summary.labels_kept_out = list(options.label_columns)
        messages = list(
            long_messages(frame, first_line, clock, summary.rejected, names, options.device_id)
        )
    else:
        labels = kept_out(frame, options.label_columns, "--label-columns")
        left_out = [*labels, *kept_out(frame, options.exclude_columns, "--exclude-columns")]
        summary.labels_kept_out = labels
        summary.label_like = [
            str(c)
            for c in frame.columns
            if str(c).strip().lower() in LABEL_LIKE and str(c) not in left_out
        ]
        messages = list(
            wide_messages(
                frame,
                first_line,
                clock,
                summary.rejected,
                options.device_id,
                options.sanitize_names,
                left_out,
            )
        )
    summary.rejected.sort(key=lambda row: row.line)
    if options.backfill:
        settings.layout.use()  # held until the process ends: a demo cannot empty it meanwhile
        window_ms = round(settings.aggregate.window * 1000)
        summary.backfill = backfill(
            settings.layout,
            messages,
            import_id(path, window_ms),
            window_ms,
            settings.aggregate.parquet_compression,
        )
        summary.readings = summary.backfill.readings
        if options.rejects is not None:
            write_rejects(summary.rejected, options.rejects)
        return summary
    summary.closed_through, summary.readings_closed = _closed_already(settings, messages)
    topic = settings.kafka.telemetry_topic
    failures: list[BaseException] = []
    if messages:
        producer = make_producer(settings.kafka)
        try:
            with progress_bar("import", len(messages), enabled=True) as bar:
                for index, (device, when, readings) in enumerate(messages):
                    producer.send(
                        topic, key=device.encode(), value=encode_message(device, when, readings)
                    ).add_errback(failures.append)
                    summary.readings += len(readings)
                    if bar is not None and index % 1000 == 0:
                        bar.update(bar.task_ids[0], completed=index)
        except Exception as exc:
            raise BrokerError(f"could not publish {path}: {exc}") from None
        finally:
            finish(producer)  # every message counted delivered or failed
    summary.messages_failed = len(failures)
    summary.messages_sent = len(messages) - len(failures)
    if failures:
        summary.first_error = delivery_error(failures[0])
    if options.rejects is not None:
        write_rejects(summary.rejected, options.rejects)
    return summary


def _closed_already(settings: Settings, messages: list[Message]) -> tuple[datetime | None, int]:
    """The aggregation's watermark in this data directory, and how many of the readings are
    for windows it has closed (they would all go to the late sink)."""
    from fleetwatch.aggregate.progress import closed_through

    closed = closed_through(settings.layout, settings.kafka.telemetry_topic)
    if closed is None:
        return None, 0
    window_ms = round(settings.aggregate.window * 1000)
    boundary = closed.timestamp() * 1000
    late = sum(
        len(readings) for _, ts, readings in messages if ts - ts % window_ms + window_ms <= boundary
    )
    return closed, late


def write_rejects(rejected: list[RejectedRow], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["line", "reason"])
            writer.writerows((row.line, row.reason) for row in rejected)
    except OSError as exc:
        raise StorageError(f"cannot write --rejects {path}: {exc.strerror}") from None
