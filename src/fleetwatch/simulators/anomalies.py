"""Labelled anomaly injection: spike, level shift, stuck-at, noise burst, drift ramp, dropout.

A device has at most one anomaly at a time, on one sensor, so each label is unambiguous. Every
injected anomaly becomes a :class:`AnomalyLabel` with the event times of the first and last
reading it touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from fleetwatch.errors import InvalidInputError
from fleetwatch.simulators.signals import FloatArray

#: Simulated duration range in seconds per kind; a spike lasts a few readings instead.
DURATION_S: Final[dict[str, tuple[float, float]]] = {
    "level_shift": (300.0, 900.0),
    "stuck": (300.0, 900.0),
    "noise_burst": (180.0, 600.0),
    "drift_ramp": (600.0, 1200.0),
    "dropout": (300.0, 900.0),
}
SPIKE_READINGS: Final = (1, 3)
#: Size of the effect in units of the sensor's noise standard deviation.
MAGNITUDE_SIGMA: Final[dict[str, tuple[float, float]]] = {
    "spike": (10.0, 20.0),
    "level_shift": (6.0, 12.0),
    "noise_burst": (5.0, 10.0),
    "drift_ramp": (10.0, 20.0),
    "stuck": (0.0, 0.0),
    "dropout": (0.0, 0.0),
}


@dataclass(frozen=True)
class AnomalyLabel:
    """Ground truth of one injected anomaly; times are event times in epoch milliseconds."""

    device_id: str
    sensor: str
    kind: str
    start_ms: int
    end_ms: int


@dataclass
class _Active:
    kind: str
    sensor: int
    start_tick: int
    end_tick: int  # inclusive
    magnitude: float  # signed, in noise sigmas
    start_ms: int
    last_ms: int
    stuck_value: float | None = None


class AnomalyInjector:
    """Starts, applies and ends anomalies tick by tick; collects the labels."""

    def __init__(
        self,
        device_ids: list[str],
        sensor_names: list[str],
        kinds: list[str],
        rate_per_hour: float,
        interval_s: float,
        clean_ticks: int,
        rng: np.random.Generator,
    ) -> None:
        # A dropout of a one-sensor device would leave an empty message, which is not an anomaly
        # but invalid input; such fleets get the other kinds only.
        self.kinds = [k for k in kinds if k != "dropout" or len(sensor_names) > 1]
        self.device_ids = device_ids
        self.sensor_names = sensor_names
        self.start_probability = min(1.0, rate_per_hour * interval_s / 3600.0)
        self.interval_s = interval_s
        self.clean_ticks = clean_ticks
        self.rng = rng
        self.active: dict[int, _Active] = {}
        self.labels: list[AnomalyLabel] = []

    def step(
        self,
        tick: int,
        values: FloatArray,
        present: npt.NDArray[np.bool_],
        noise_sigma: FloatArray,
        event_ms: npt.NDArray[np.int64],
    ) -> None:
        """Apply this tick's anomalies to ``values``/``present`` (devices x sensors) in place."""
        # Draw for every device every tick, so the random stream does not depend on the state.
        starts = self.rng.random(len(self.device_ids))
        if self.kinds and tick >= self.clean_ticks and self.start_probability > 0:
            for device in np.flatnonzero(starts < self.start_probability).tolist():
                if device not in self.active:
                    self._start(device, tick, int(event_ms[device]))
        finished: list[int] = []
        for device, anomaly in self.active.items():
            self._apply(anomaly, device, tick, values, present, noise_sigma)
            anomaly.last_ms = int(event_ms[device])
            if tick >= anomaly.end_tick:
                finished.append(device)
        for device in finished:
            self._finish(device)

    def _start(self, device: int, tick: int, event_ms: int) -> None:
        kind = self.kinds[int(self.rng.integers(len(self.kinds)))]
        sensor = int(self.rng.integers(len(self.sensor_names)))
        if kind == "spike":
            length = int(self.rng.integers(SPIKE_READINGS[0], SPIKE_READINGS[1] + 1))
        else:
            low, high = DURATION_S[kind]
            length = max(1, round(self.rng.uniform(low, high) / self.interval_s))
        low, high = MAGNITUDE_SIGMA[kind]
        sign = 1.0 if self.rng.random() < 0.5 else -1.0
        magnitude = sign * self.rng.uniform(low, high) if high else 0.0
        self.active[device] = _Active(
            kind, sensor, tick, tick + length - 1, magnitude, event_ms, event_ms
        )

    def _apply(
        self,
        anomaly: _Active,
        device: int,
        tick: int,
        values: FloatArray,
        present: npt.NDArray[np.bool_],
        noise_sigma: FloatArray,
    ) -> None:
        sensor = anomaly.sensor
        sigma = noise_sigma[device, sensor]
        if anomaly.kind in ("spike", "level_shift"):
            values[device, sensor] += anomaly.magnitude * sigma
        elif anomaly.kind == "drift_ramp":
            span = max(1, anomaly.end_tick - anomaly.start_tick)
            values[device, sensor] += anomaly.magnitude * sigma * (tick - anomaly.start_tick) / span
        elif anomaly.kind == "noise_burst":
            values[device, sensor] += abs(anomaly.magnitude) * sigma * self.rng.standard_normal()
        elif anomaly.kind == "stuck":
            if anomaly.stuck_value is None:
                anomaly.stuck_value = float(values[device, sensor])
            values[device, sensor] = anomaly.stuck_value
        elif anomaly.kind == "dropout":
            present[device, sensor] = False

    def _finish(self, device: int) -> None:
        anomaly = self.active.pop(device)
        self.labels.append(
            AnomalyLabel(
                self.device_ids[device],
                self.sensor_names[anomaly.sensor],
                anomaly.kind,
                anomaly.start_ms,
                anomaly.last_ms,
            )
        )

    def close(self) -> list[AnomalyLabel]:
        """End every running anomaly at the last reading it touched; all labels, by start."""
        for device in list(self.active):
            self._finish(device)
        return sorted(self.labels, key=lambda label: (label.start_ms, label.device_id))


def write_labels(labels: list[AnomalyLabel], path: Path, keep_existing: bool = False) -> None:
    """Write ground truth as Parquet or CSV (by suffix): device_id, sensor, kind, start, end.

    With ``keep_existing``, the labels already in ``path`` (a resumed simulator's earlier
    runs) are kept ahead of the new ones."""
    import pandas as pd

    if keep_existing and path.exists():
        labels = [*read_labels(path), *labels]

    frame = pd.DataFrame(
        {
            "device_id": pd.Series([x.device_id for x in labels], dtype="string"),
            "sensor": pd.Series([x.sensor for x in labels], dtype="string"),
            "kind": pd.Series([x.kind for x in labels], dtype="string"),
            "start": pd.to_datetime([x.start_ms for x in labels], unit="ms", utc=True),
            "end": pd.to_datetime([x.end_ms for x in labels], unit="ms", utc=True),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".csv":
        frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    else:
        raise InvalidInputError(f"--labels {path}: use a .parquet or .csv file name")


def read_labels(path: Path) -> list[AnomalyLabel]:
    """Read a labels file written by :func:`write_labels`."""
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, parse_dates=["start", "end"])
    starts = pd.to_datetime(frame["start"], utc=True).astype("datetime64[ms, UTC]")
    ends = pd.to_datetime(frame["end"], utc=True).astype("datetime64[ms, UTC]")
    return [
        AnomalyLabel(str(d), str(s), str(k), int(a.value // 1_000_000), int(b.value // 1_000_000))
        for d, s, k, a, b in zip(
            frame["device_id"], frame["sensor"], frame["kind"], starts, ends, strict=True
        )
    ]
