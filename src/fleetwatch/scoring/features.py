"""Window features per device: for every sensor its mean, std, min, max, and whether it reported.

The ``present`` indicator makes a missing sensor explicit: a model trained on windows where the
sensor always reported sees a window without it as far from normal (a dropout is an anomaly),
while the sensor's own statistics are imputed with the training medians.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fleetwatch.storage.parquet import AGGREGATE_SCHEMA

STATISTICS: Final = ("mean", "std", "min", "max")
#: Value of ``<sensor>__present`` when the sensor reported (0 when not). A sensor that always
#: reported in training has a constant column, which the scaler leaves unscaled, so this weight
#: makes one missing sensor as unusual as a 10-sigma deviation.
PRESENT: Final = 10.0
FloatMatrix = npt.NDArray[np.float64]


def feature_names(sensors: list[str]) -> list[str]:
    """The feature columns of a device with these sensors.

    >>> feature_names(["temp"])
    ['temp__mean', 'temp__std', 'temp__min', 'temp__max', 'temp__present']
    """
    return [f"{s}__{stat}" for s in sorted(sensors) for stat in (*STATISTICS, "present")]


def hours_between(since: datetime, until: datetime) -> list[datetime]:
    """Hour starts h with since <= h < until (since is floored to the hour)."""
    hour = since.replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour < until:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def read_windows(data_dir: Path, since: datetime, until: datetime) -> pd.DataFrame:
    """Closed windows with ``since <= window_start < until``, read once from the hour folders."""
    root = data_dir / "aggregates"
    tables = []
    for hour in hours_between(since, until):
        folder = root / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"
        for path in sorted(folder.glob("*.parquet")):
            tables.append(pq.read_table(path, schema=AGGREGATE_SCHEMA))
    if not tables:
        empty: pd.DataFrame = AGGREGATE_SCHEMA.empty_table().to_pandas()
        return empty
    frame: pd.DataFrame = pa.concat_tables(tables).to_pandas()
    start, end = pd.Timestamp(since), pd.Timestamp(until)
    selected: pd.DataFrame = frame[(frame["window_start"] >= start) & (frame["window_start"] < end)]
    return selected


@dataclass(frozen=True)
class DeviceWindows:
    """One device's windows as a wide matrix over a given feature list."""

    device_id: str
    window_start: npt.NDArray[np.int64]  # epoch ms
    window_end: npt.NDArray[np.int64]
    matrix: FloatMatrix  # (windows, features); NaN where a sensor did not report


class WindowCube:
    """An hour (or any range) of windows as a dense (device-window, sensor, statistic) array.

    Built once, vectorised, for all devices; ``matrix(device, names)`` then cuts one device's
    feature matrix out of it without pandas.
    """

    def __init__(self, frame: pd.DataFrame, window_ms: int) -> None:
        self.window_ms = window_ms
        device_codes, devices = pd.factorize(frame["device_id"], sort=True)
        sensor_codes, sensors = pd.factorize(frame["sensor"], sort=True)
        starts = frame["window_start"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
        base = int(starts.min()) if len(starts) else 0
        slots = (starts - base) // window_ms
        width = int(slots.max()) + 1 if len(slots) else 1
        keys = device_codes.astype(np.int64) * width + slots
        row_codes, row_keys = pd.factorize(keys, sort=True)
        self.values = np.full((len(row_keys), len(sensors), len(STATISTICS)), np.nan)
        self.values[row_codes, sensor_codes, :] = frame[list(STATISTICS)].to_numpy(dtype=float)
        row_devices = row_keys // width
        self.row_starts = base + (row_keys % width) * window_ms
        self.devices = [str(d) for d in devices]
        bounds = np.searchsorted(row_devices, np.arange(len(devices) + 1))
        self._rows = {d: (int(bounds[i]), int(bounds[i + 1])) for i, d in enumerate(self.devices)}
        self._sensor_index = {str(s): i for i, s in enumerate(sensors)}
        self._plans: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __contains__(self, device_id: str) -> bool:
        return device_id in self._rows

    def window_count(self, device_id: str) -> int:
        begin, end = self._rows[device_id]
        return end - begin

    def sensors(self, device_id: str) -> list[str]:
        """The sensors that reported at least once for this device."""
        begin, end = self._rows[device_id]
        reported = ~np.isnan(self.values[begin:end, :, 0]).all(axis=0)
        names = sorted(self._sensor_index, key=self._sensor_index.__getitem__)
        return sorted(n for n, seen in zip(names, reported.tolist(), strict=True) if seen)

    def _plan(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each feature comes from: (sensor index, statistic index, kind) per column.

        kind 0 = a statistic, 1 = a present indicator; +2 when the sensor is absent from the
        whole range (a statistic is then NaN, an indicator 0).
        Devices of one fleet share their feature list, so this is computed once per list.
        """
        plan = self._plans.get(names)
        if plan is None:
            sensors, stats, kinds = [], [], []
            for name in names:
                sensor, stat = name.rsplit("__", 1)
                index = self._sensor_index.get(sensor)
                sensors.append(0 if index is None else index)
                stats.append(0 if stat == "present" else STATISTICS.index(stat))
                kinds.append((1 if stat == "present" else 0) + (2 if index is None else 0))
            plan = self._plans[names] = (np.array(sensors), np.array(stats), np.array(kinds))
        return plan

    def matrix(self, device_id: str, names: list[str]) -> DeviceWindows:
        begin, end = self._rows[device_id]
        sensors, stats, kinds = self._plan(tuple(names))
        if len(sensors) and self._sensor_index:
            matrix = self.values[begin:end][:, sensors, stats]
            indicator = kinds % 2 == 1
            matrix[:, indicator] = (~np.isnan(matrix[:, indicator])) * PRESENT
            matrix[:, kinds == 2] = np.nan
            matrix[:, kinds == 3] = 0.0
        else:
            matrix = np.full((end - begin, len(names)), np.nan)
        starts = self.row_starts[begin:end]
        return DeviceWindows(device_id, starts, starts + self.window_ms, matrix)
