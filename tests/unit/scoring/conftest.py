"""A small data directory with three hours of aggregates and trained models; no broker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetwatch.aggregate.windows import AGGREGATE_COLUMNS
from fleetwatch.config import Settings, load_settings
from fleetwatch.scoring.features import WindowCube, read_cube
from fleetwatch.scoring.train import train
from fleetwatch.storage.checkpoints import Checkpoint, CheckpointStore, TopicState
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.parquet import PartitionedParquetSink, publish_staged

T0 = datetime(2026, 11, 22, tzinfo=UTC)
DEVICES = [f"pump-{i:02d}" for i in range(8)]
SENSORS = ["pressure", "temperature", "vibration"]


def synthetic_windows(hours: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for d, device in enumerate(DEVICES):
        for minute in range(hours * 60):
            start = pd.Timestamp(T0) + pd.Timedelta(minutes=minute)
            for s, sensor in enumerate(SENSORS):
                if device == "pump-07" and minute >= 120 and sensor == "vibration":
                    continue  # a dropout in the third hour
                mean = 10 * (s + 1) + d + rng.normal(0, 0.1)
                if minute >= 150 and device == "pump-03":
                    mean += 5  # a level shift in the third hour
                rows.append(
                    (
                        device,
                        sensor,
                        start,
                        start + pd.Timedelta(minutes=1),
                        60,
                        mean,
                        abs(rng.normal(1, 0.05)),
                        mean - 2,
                        mean + 2,
                        0,
                        0,
                    )
                )
    frame = pd.DataFrame(
        rows,
        columns=[*AGGREGATE_COLUMNS, "first_offset", "last_offset"],
    )
    for column in ("window_start", "window_end"):
        frame[column] = frame[column].astype("datetime64[ms, UTC]")
    return frame


def drifting_windows() -> pd.DataFrame:
    """An hour of :func:`synthetic_windows` where the temperature of 5 of the 8 pumps and the
    pressure of pump-07 drift (100 sigma in the hour: slow, as each device judges alone)."""
    frame = synthetic_windows(hours=1)
    for device, sensor in [*((f"pump-0{i}", "temperature") for i in range(5)),
                           ("pump-07", "pressure")]:  # fmt: skip
        rows = (frame["device_id"] == device) & (frame["sensor"] == sensor)
        drift = np.linspace(0, 10, rows.sum())
        for column in ("mean", "min", "max"):
            frame.loc[rows, column] = frame.loc[rows, column] + drift
    return frame


def write_windows(data_dir: Path | str, frame: pd.DataFrame) -> None:
    """As the aggregator writes them (staged, then published), as partition 0's."""
    sink = PartitionedParquetSink(DataLayout.open(data_dir), "aggregates")
    sink.write(frame, 0, "window_start")
    publish_staged(sink)


def set_watermark(settings: Settings, closed: datetime, partitions: int = 2) -> None:
    """As the aggregator would leave it: the topic's partitions, each with a watermark (the
    lowest counts) and windows still open."""
    layout = settings.layout
    topic = settings.kafka.telemetry_topic
    store = CheckpointStore(layout.store, topic)
    store.save_topic_state(TopicState(partitions))
    for partition in range(partitions):
        boundary = int(closed.timestamp() * 1000) + partition * 60_000  # the min counts
        store.save(partition, Checkpoint(0, 10, boundary, boundary))


def settings_for(data_dir: Path, **score: object) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "": {"data_dir": str(data_dir)},
            # the scikit-learn objects kept: the tests' reference for the scores
            "train": {"workers": "2", "min_windows": "30", "keep_estimator": "true"},
            "score": {
                "workers": "2",
                "mini_batch_size": "3",
                "task_timeout": "5s",
                "max_retries": "1",
                "lock_timeout": "10s",
                **{k: str(v) for k, v in score.items()},
            },
        },
    )


def untrained(data: Path) -> Settings:
    """Three closed hours of :func:`synthetic_windows` in ``data``, no model yet."""
    write_windows(data, synthetic_windows())
    settings = settings_for(data)
    set_watermark(settings, T0 + pd.Timedelta(hours=3).to_pytimedelta())
    return settings


@pytest.fixture
def trained(tmp_path: Path) -> Settings:
    settings = untrained(tmp_path / "data")
    summary = train(
        settings, T0, T0 + pd.Timedelta(hours=2).to_pytimedelta(), [*DEVICES[:-1], "pump-07"]
    )
    assert len(summary.trained) == len(DEVICES)
    return settings


def cube_of(
    data_dir: Path | str,
    since: datetime,
    until: datetime,
    window_ms: int,
    devices: list[str] | None = None,
) -> WindowCube:
    """The cube of a data directory's windows in [since, until), from one listing."""
    layout = DataLayout.open(data_dir)
    keys = [item.key for item in layout.files_between(since, until)]
    return read_cube(layout.store, keys, since, until, window_ms, devices=devices)
