"""``fleetwatch evaluate``: the product's own path on labelled data, and how well it detects.

1. The readings are backfilled into a data folder of their own (``import --backfill``'s
   path: every hour closed, no watermark), label columns kept out.
2. Every device is trained on its own first part (``--train-first``: readings, a duration or
   a share; ``train --first``'s ranges) with the product's thresholds: no label is used.
3. Every hour with readings after a device's training part is scored (``score``'s path, every
   window stored), and each labelled reading gets the flag of the window it falls in.
4. The readings after each device's training part are the test set (SKAB's protocol: train
   on the first 400 rows, test on the rest): :mod:`fleetwatch.evaluation.metrics`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from fleetwatch.config import Settings
from fleetwatch.config.values import format_duration
from fleetwatch.errors import InvalidInputError, NothingDoneError
from fleetwatch.evaluation.datasets import Dataset, load
from fleetwatch.evaluation.metrics import Report, evaluate
from fleetwatch.ingest.backfill import backfill
from fleetwatch.scoring.ranges import FirstPart, data_span, first_ranges, read_ranges
from fleetwatch.storage.layout import DataLayout, floor_hour

#: The training part of a labelled file when ``--train-first`` is not given.
DEFAULT_FIRST = FirstPart("share", 0.3)


@dataclass
class Evaluation:
    dataset: str
    report: Report
    devices: int
    devices_trained: int
    devices_skipped: dict[str, str]
    degenerate: dict[str, str]  # devices whose threshold is degenerate -> why
    test_points: int
    unscored_points: int  # test readings of devices without a model, or windows not scored
    rejected_rows: int
    hours_scored: int
    seconds: float
    settings: dict[str, Any]

    def as_record(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            **self.report.as_record(),
            "devices": self.devices,
            "devices_trained": self.devices_trained,
            "devices_skipped": len(self.devices_skipped),
            "test_points": self.test_points,
            "unscored_points": self.unscored_points,
            "rejected_rows": self.rejected_rows,
            "hours_scored": self.hours_scored,
            "seconds": round(self.seconds, 1),
            **self.settings,
            "skipped_reasons": self.devices_skipped,
            "degenerate_reasons": self.degenerate,
        }


def run_evaluation(settings: Settings, source: str) -> Evaluation:
    started = time.monotonic()
    dataset = load(source, settings)
    if not dataset.messages:
        raise InvalidInputError(f"{source}: no valid readings to evaluate on")
    keep = settings.evaluate.keep
    if keep is not None:
        try:
            keep.mkdir(parents=True, exist_ok=True)
            empty = not any(keep.iterdir())
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise InvalidInputError(
                f"--keep {keep}: cannot make it a folder ({reason}); give a new, writable one"
            ) from None
        if not empty:
            raise InvalidInputError(f"--keep {keep}: the folder is not empty; give a new one")
    folder = keep or Path(tempfile.mkdtemp(prefix="fleetwatch-evaluate-"))
    try:
        return _evaluate(settings, dataset, folder, started)
    finally:
        if keep is None:
            DataLayout.open(folder).empty_local()
            folder.rmdir()


def _evaluate(settings: Settings, dataset: Dataset, folder: Path, started: float) -> Evaluation:
    from fleetwatch.scheduler.service import score_hours
    from fleetwatch.scoring.train import TrainSummary, train_ranges

    settings = replace(
        settings,
        data_dir=folder,
        train=replace(settings.train, progress=False, activate=True),
        score=replace(settings.score, output="all", error_threshold=-1),
    )
    layout = DataLayout.open(folder)
    window_ms = round(settings.aggregate.window * 1000)
    folder.mkdir(parents=True, exist_ok=True)
    backfill(
        layout, dataset.messages, "evaluate", window_ms, settings.aggregate.parquet_compression
    )
    options = settings.evaluate
    if options.train_ranges is not None and options.train_first:
        raise InvalidInputError("--train-first and --train-ranges are exclusive: give one")
    first = (
        FirstPart.parse(options.train_first, "--train-first")
        if options.train_first
        else dataset.default_first or DEFAULT_FIRST
    )
    span = data_span(layout)
    if span is None:  # pragma: no cover - backfill wrote the readings
        raise InvalidInputError("no readings were written")
    devices = dataset.devices
    times = dataset.times
    if options.train_ranges is not None:
        ranges = read_ranges(options.train_ranges, "--train-ranges")
        unknown = sorted(set(ranges) - set(devices.tolist()))
        if unknown:
            raise InvalidInputError(
                f"--train-ranges {options.train_ranges}: {len(unknown)} devices not in the "
                f"data ({', '.join(unknown[:3])}); the data's devices are named after their "
                "files (valve1/0.csv -> valve1-0)"
            )
        training = f"ranges from {options.train_ranges.name}"
    else:
        ranges = first_ranges(layout, first, span[0], span[1], window_ms)
        training = describe_first(first)
    test = _test_points(devices, times, ranges, first, by_range=options.train_ranges is not None)
    if not test.any():
        raise InvalidInputError(
            f"nothing is left to test after each device's {training} ({len(times)} readings in "
            "all): give less with --train-first"
        )
    summary = train_ranges(settings, ranges, TrainSummary())
    for device_id in sorted(set(devices.tolist()) - set(ranges)):
        summary.skipped.setdefault(device_id, "no training windows in its first part")
    if not summary.trained:
        reason = next(iter({**summary.skipped, **summary.failed}.items()), ("-", "-"))
        raise NothingDoneError(
            f"no device could be trained on its {training} "
            f"(first: {reason[0]}: {reason[1]}); give more with --train-first"
        )
    hours = sorted({floor_hour(_at(ts)) for ts in times[test].tolist()})
    results, _ = score_hours(settings, hours)
    predicted, scored = predictions(layout, devices, times, window_ms)
    report = evaluate(dataset.truth[test], predicted[test], dataset.episodes[test], dataset.kinds)
    if settings.evaluate.keep is not None:
        keep_points(folder, dataset, devices, times, test, predicted, scored)
    return Evaluation(
        dataset.name,
        report,
        len(set(devices.tolist())),
        len(summary.trained),
        {**summary.skipped, **summary.failed},
        summary.degenerate,
        int(test.sum()),
        int((test & ~scored).sum()),
        dataset.rejected,
        len({r.window_start for r in results}),
        time.monotonic() - started,
        {
            "window": settings.aggregate.window,
            "train_first": training,
            "target_far": settings.train.target_far,
            # the kinds trained (``--model-kind auto`` chooses per device)
            "kind": "+".join(sorted(summary.kinds))
            or ("per_sensor" if settings.train.per_sensor else settings.train.model_kind),
            "models_use": summary.as_record()["models_use"],
            "threshold_degenerate": len(summary.degenerate),
            "slow_sensors": summary.as_record()["slow_sensors"]
            if settings.train.slow_sensors == ["auto"]
            else ",".join(settings.train.slow_sensors),
            "files_without_labels": ",".join(dataset.unlabelled) or None,
        },
    )


#: Where ``--keep DIR`` leaves the judged points, beside the data folder's own files.
POINTS_FILE: Final = "evaluation/points.parquet"


def keep_points(
    folder: Path,
    dataset: Dataset,
    devices: np.ndarray,
    times: np.ndarray,
    test: np.ndarray,
    predicted: np.ndarray,
    scored: np.ndarray,
) -> None:
    """Every point of the data set with its label and its window's flag, for reading the
    figures back (which windows were false alarms, which episodes were missed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = dataset.kinds
    kind = [
        None if episode < 0 or kinds is None else kinds[episode]
        for episode in dataset.episodes.tolist()
    ]
    table = pa.table(
        {
            "device_id": pa.array(devices.tolist(), pa.string()),
            "ts": pa.array(times, pa.timestamp("ms", tz="UTC")),
            "anomalous": pa.array(dataset.truth.astype(bool)),
            "flagged": pa.array(predicted.astype(bool)),
            "scored": pa.array(scored.astype(bool)),
            "test": pa.array(test.astype(bool)),
            "episode": pa.array(dataset.episodes.astype(np.int64)),
            "kind": pa.array(kind, pa.string()),
        }
    )
    path = folder / POINTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _at(ts_ms: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def describe_first(first: FirstPart) -> str:
    """How ``--train-first`` reads, for the report.

    >>> [describe_first(FirstPart.parse(t)) for t in ("400", "30d", "0.15")]
    ['first 400 readings', 'first 30d', 'first 15% of its windows']
    """
    if first.unit == "readings":
        return f"first {first.amount:g} readings"
    if first.unit == "duration":
        return f"first {format_duration(first.amount)}"
    return f"first {first.amount * 100:g}% of its windows"


def _test_points(
    devices: np.ndarray,
    times: np.ndarray,
    ranges: dict[str, Any],
    first: FirstPart,
    by_range: bool = False,
) -> np.ndarray:
    """The points after each device's training part: after its first N readings (SKAB's
    protocol), or from the end of its training range on. Devices without a range: none."""
    test = np.zeros(len(devices), dtype=bool)
    for device_id, (_, until) in ranges.items():
        mine = np.flatnonzero(devices == device_id)  # in time order
        if first.unit == "readings" and not by_range:
            test[mine[int(first.amount) :]] = True
        else:
            test[mine[times[mine] >= round(until.timestamp() * 1000)]] = True
    return test


def predictions(
    layout: DataLayout, devices: np.ndarray, times: np.ndarray, window_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per point: its window's flag, and whether its window was scored at all."""
    from fleetwatch.storage.duck import connect

    with connect(layout.database, read_only=True) as connection:
        rows = connection.execute(
            "SELECT device_id, epoch_ms(window_start), is_anomaly FROM scores"
        ).fetchall()
    flags = {(device, start): bool(flag) for device, start, flag in rows}
    starts = times - times % window_ms
    predicted = np.zeros(len(devices), dtype=bool)
    scored = np.zeros(len(devices), dtype=bool)
    for index, (device, start) in enumerate(zip(devices.tolist(), starts.tolist(), strict=True)):
        flag = flags.get((device, start))
        if flag is not None:
            scored[index] = True
            predicted[index] = flag
    return predicted, scored
