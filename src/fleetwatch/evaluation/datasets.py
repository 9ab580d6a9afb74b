"""Labelled data for ``fleetwatch evaluate``: readings (as messages), and per reading its label.

Three sources:

- a folder of files (SKAB's layout): each CSV/Parquet file under it is one device, named after
  its path (``valve1/0.csv`` -> ``valve1-0``), with a timestamp column, sensor columns and
  label columns;
- one CSV/Parquet file with a label column: its devices from a ``device_id`` column (or
  ``--device-id``, or the file's name);
- ``simulator``: the demo's fleet (``[demo]`` settings), generated in-process with its
  injected anomalies as labels.

Label columns never become sensors. A label is anomalous when it is a non-zero number or
``true``/``yes``; an episode is a contiguous run of anomalous readings of a device (of the
simulator: one injected anomaly), its kind the ``--kind-column`` value most of its readings
have (of the simulator: the kind injected).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetwatch.config import Settings
from fleetwatch.errors import InvalidInputError
from fleetwatch.evaluation.metrics import episodes_of_runs
from fleetwatch.ingest.importer import (
    Message,
    RejectedRow,
    _Clock,
    detect_layout,
    kept_out,
    read_table,
    wide_messages,
)
from fleetwatch.scoring.ranges import FirstPart
from fleetwatch.telemetry import is_valid_name

if TYPE_CHECKING:
    from fleetwatch.simulators.fleet import FleetSpec

SUFFIXES = (".csv", ".parquet", ".tsv", ".txt")


@dataclass
class Dataset:
    """Readings and their labels, one point per message (per row of a file)."""

    name: str
    messages: list[Message]  # (device_id, ts_ms, readings), one per point
    truth: np.ndarray  # per point
    episodes: np.ndarray  # per point: its episode id, -1 when normal
    kinds: list[str | None] | None  # per episode id; None when the labels have no kinds
    rejected: int  # rows that were not valid readings (not evaluated)
    default_first: FirstPart | None = None  # the training part when --train-first is not given
    unlabelled: list[str] = field(default_factory=list)  # files of a folder without labels

    @property
    def devices(self) -> np.ndarray:
        return np.array([m[0] for m in self.messages], dtype=object)

    @property
    def times(self) -> np.ndarray:
        return np.array([m[1] for m in self.messages], dtype=np.int64)


def load(source: str, settings: Settings) -> Dataset:
    """The dataset ``source`` names: ``simulator``, a folder, or a file."""
    if source == "simulator":
        return simulated(settings)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
        if not files:
            raise InvalidInputError(f"{path}: no .csv or .parquet files in this folder")
        parts, unlabelled = [], []
        for file in files:
            part = _read_file(file, settings, _device_from_path(file.relative_to(path)))
            if part is None:
                unlabelled.append(str(file.relative_to(path)))
            else:
                parts.append(part)
        if not parts:
            raise InvalidInputError(
                f"{path}: no file has the label column {settings.evaluate.label_column!r} "
                "(name it with --label-column)"
            )
        dataset = _joined(str(path), parts)
        dataset.unlabelled = unlabelled
        return dataset
    if path.is_file():
        part = _read_file(path, settings, None)
        if part is None:
            raise InvalidInputError(
                f"{path}: no label column {settings.evaluate.label_column!r} (name it with "
                "--label-column)"
            )
        return _joined(str(path), [part])
    raise InvalidInputError(f"{source}: no such file or folder (or give `simulator`)")


def _device_from_path(relative: Path) -> str:
    """``valve1/0.csv`` -> ``valve1-0``: the path without its suffix, made a valid id."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", str(relative.with_suffix("")).replace("/", "-"))
    return name[-64:].strip("-.") or "device"


@dataclass
class _Part:
    messages: list[Message]
    labels: np.ndarray
    kinds: list[str | None] | None
    rejected: int


def _read_file(path: Path, settings: Settings, device_id: str | None) -> _Part | None:
    """A file's readings and labels; None for a file without the label column (in a folder:
    SKAB's anomaly-free file is not part of its protocol)."""
    options = settings.evaluate
    frame, first_line = read_table(path, settings.import_.delimiter)
    if not any(
        str(c).strip().lower() == options.label_column.strip().lower() for c in frame.columns
    ):
        return None
    if detect_layout(frame, "auto") != "wide":
        raise InvalidInputError(
            f"{path}: evaluate reads wide files (a timestamp column, sensor columns and label "
            "columns); this one looks like TS,Device,Tag,Value rows"
        )
    (label,) = kept_out(frame, [options.label_column], "--label-column")
    named = list(dict.fromkeys([label, *options.label_columns]))
    labels = kept_out(frame, named, "--label-columns")
    kind_column = (
        kept_out(frame, [options.kind_column], "--kind-column") if options.kind_column else []
    )
    excluded = kept_out(frame, settings.import_.exclude_columns, "--exclude-columns")
    clock = _Clock(_zone(settings))
    rows: list[int] = []
    rejected: list[RejectedRow] = []
    fallback = device_id or settings.import_.device_id or _device_from_path(Path(path.name))
    messages = list(
        wide_messages(
            frame,
            first_line,
            clock,
            rejected,
            fallback,
            sanitize=True,
            left_out=[*labels, *kind_column, *excluded],
            rows=rows,
        )
    )
    if device_id is not None:  # one device per file: its path names it
        messages = [(device_id, ts, readings) for _, ts, readings in messages]
    truth = np.array([_is_anomalous(v) for v in frame[label].to_numpy()[rows]], dtype=bool)
    kinds = None
    if kind_column:
        kinds = [None if _blank(v) else str(v) for v in frame[kind_column[0]].to_numpy()[rows]]
    return _Part(messages, truth, kinds, len(rejected))


def _zone(settings: Settings) -> Any:
    from zoneinfo import ZoneInfo

    name = settings.import_.assume_timezone or "UTC"  # only the order of the times matters
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError):
        raise InvalidInputError(f"--assume-timezone {name!r} is not a time zone") from None


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == ""


def _is_anomalous(value: Any) -> bool:
    if _blank(value):
        return False
    text = str(value).strip().lower()
    if text in ("true", "yes", "anomaly", "anomalous"):
        return True
    try:
        return float(text) != 0.0
    except ValueError:
        return False


def _joined(name: str, parts: list[_Part]) -> Dataset:
    """The parts' points, in (device, time) order, with their episodes numbered."""
    messages = [m for part in parts for m in part.messages]
    truth = np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, dtype=bool)
    with_kinds = any(p.kinds is not None for p in parts)
    row_kinds = [
        k for p in parts for k in (p.kinds if p.kinds is not None else [None] * len(p.messages))
    ]
    order = sorted(range(len(messages)), key=lambda i: (messages[i][0], messages[i][1]))
    messages = [messages[i] for i in order]
    truth = truth[order]
    row_kinds = [row_kinds[i] for i in order]
    devices = np.array([m[0] for m in messages], dtype=object)
    episodes = episodes_of_runs(devices, truth)
    kinds: list[str | None] | None = None
    if with_kinds:
        count = int(episodes.max()) + 1 if len(episodes) and episodes.max() >= 0 else 0
        votes: list[Counter[str]] = [Counter() for _ in range(count)]
        for episode, kind in zip(episodes.tolist(), row_kinds, strict=True):
            if episode >= 0 and kind is not None:
                votes[episode][kind] += 1
        kinds = [v.most_common(1)[0][0] if v else None for v in votes]
    rejected = sum(p.rejected for p in parts)
    for device in sorted(set(devices.tolist())):
        if not is_valid_name(device):
            raise InvalidInputError(f"device id {device!r} is not 1-64 of [A-Za-z0-9_.-]")
    return Dataset(name, messages, truth, episodes, kinds, rejected)


def simulated(settings: Settings) -> Dataset:
    """The demo's fleet (``[demo]`` settings), its clean first part for training."""
    from fleetwatch.simulators.fleet import FleetSpec

    demo = settings.demo
    spec = FleetSpec(
        devices=demo.devices,
        sensors=demo.sensors,
        start=demo.start or datetime(2026, 11, 22, 6, tzinfo=UTC),
        interval_s=demo.interval,
        seed=demo.seed,
        anomaly_rate=demo.anomaly_rate,
        clean_for_s=demo.train_for,
        daily_cycle=demo.daily_cycle,
        drift=demo.drift,
    )
    dataset = from_spec(spec, spec.start_ms + round((demo.train_for + demo.score_for) * 1000))
    dataset.name = f"simulator ({demo.devices} devices x {demo.sensors} sensors, seed {demo.seed})"
    dataset.default_first = FirstPart("duration", demo.train_for)
    return dataset


def from_spec(spec: FleetSpec, end_ms: int) -> Dataset:
    """The messages a fleet ``spec`` generates before ``end_ms`` (deterministic: the ones a
    simulator run of it published), its injected anomalies as labels."""
    from fleetwatch.simulators.fleet import FleetStream

    stream = FleetStream(spec)
    messages: list[Message] = []
    for tick, batch in stream.ticks():
        if stream.tick_time_ms(tick) >= end_ms:
            break
        messages += _valid(batch)
    messages += _valid(stream.drain_late())
    labels = stream.close()
    messages.sort(key=lambda m: (m[0], m[1]))
    devices = np.array([m[0] for m in messages], dtype=object)
    times = np.array([m[1] for m in messages], dtype=np.int64)
    episodes = np.full(len(messages), -1, dtype=np.int64)
    kinds: list[str | None] = []
    for label in labels:
        inside = (devices == label.device_id) & (times >= label.start_ms) & (times <= label.end_ms)
        episodes[inside & (episodes < 0)] = len(kinds)
        kinds.append(label.kind)
    return Dataset(f"{spec.devices} simulated devices", messages, episodes >= 0, episodes, kinds, 0)


def _valid(batch: list[tuple[bytes, bytes]]) -> list[Message]:
    """The batch's valid messages, parsed as the aggregation parses them (the malformed ones
    a simulator may send go to the dead-letter topic: not readings)."""
    from fleetwatch.telemetry import InvalidMessage, parse_message

    valid = []
    for key, value in batch:
        try:
            telemetry = parse_message(value, key)
        except InvalidMessage:
            continue
        valid.append((telemetry.device_id, telemetry.ts_ms, dict(telemetry.readings)))
    return valid
