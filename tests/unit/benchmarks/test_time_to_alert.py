"""benchmarks/time_to_alert.py's bound: when an ideal one-window detector first flags a fault."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import sys
from argparse import Namespace
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

BENCHMARK = Path(__file__).parents[3] / "benchmarks" / "time_to_alert.py"
LIVE = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("time_to_alert", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["time_to_alert"] = module
    spec.loader.exec_module(module)
    return module


def windows(device: str, sensor: str, live_means: list[float]) -> list[dict[str, object]]:
    """60 training windows alternating -1, +1 (mean 0, sample spread 1.0084), then live ones."""
    rows = []
    for i in range(60):
        start = LIVE - timedelta(seconds=10 * (60 - i))
        rows.append({"device_id": device, "sensor": sensor, "window_start": start,
                     "mean": -1.0 if i % 2 else 1.0})  # fmt: skip
    for i, mean in enumerate(live_means):
        start = LIVE + timedelta(seconds=10 * i)
        rows.append({"device_id": device, "sensor": sensor, "window_start": start, "mean": mean})
    return rows


def test_a_fault_is_flagged_where_its_sensor_leaves_what_fault_free_devices_do(
    benchmark: ModuleType,
) -> None:
    alternating = [-1.0 if i % 2 else 1.0 for i in range(30)]
    ramp = [0.0] * 10 + [0.3 * (m + 1) for m in range(20)]  # 0.3, 0.6, 0.9, 1.2 from window 10
    rows = [
        *windows("clean-1", "s", alternating),  # |z| 0.9917 in every live window: the threshold
        *windows("clean-2", "s", alternating),
        *windows("drifting", "s", ramp),
        *windows("drifting", "t", [100.0] * 30),  # another sensor's distance does not count
        *windows("creeping", "s", [0.0] * 10 + [0.01] * 20),
        *windows("early", "s", [5.0] + [0.0] * 29),  # a flag before the fault does not count
    ]
    fault_start = LIVE + timedelta(seconds=102.5)  # in window 10
    faults = pd.DataFrame(
        {
            "device_id": ["drifting", "creeping", "early"],
            "sensor": ["s", "s", "s"],
            "kind": ["drift_ramp"] * 3,
            "start": [fault_start] * 3,
            "end": [LIVE + timedelta(seconds=290)] * 3,
        }
    )
    # "noisy" has a fault that is not judged (it began too late): it is not fault-free either
    rows += windows("noisy", "s", [50.0] * 30)
    faulty = {"drifting", "creeping", "early", "noisy"}
    found = benchmark.ideal_detector(faults, pd.DataFrame(rows), LIVE, 0.001, faulty)
    # window 13 (1.2 / 1.0084 = 1.19 > 0.9917) ends at 140 s: 37.5 s after the first reading
    assert found == [pytest.approx(37.5), None, None]


def test_the_drift_bound_is_the_chance_of_the_best_test_on_the_readings_in_time(
    benchmark: ModuleType,
) -> None:
    """Measured on simulated readings: the known-ramp test at a threshold taken from readings
    without the ramp flags the drift as often as the bound says; a window-mean test less often."""
    rng = np.random.default_rng(3)
    slope, far, trials = 0.012, 0.01, 150_000  # a chance near 1/2: one reading more moves it 0.03
    start = LIVE + timedelta(seconds=102.5)
    drifts = pd.DataFrame({"start": [start], "slope": [slope]})
    bound = benchmark.drift_bound(drifts, [1.0] * 30, lag=7.6, far=far, within=60.0)
    # in time: the window ending at 150 s (+ 7.6 s lag <= 162.5 s); readings at 102.5 + k < 150
    k = np.arange(48)
    noise = rng.standard_normal((trials, len(k)))
    null = noise @ k / np.sqrt(k @ k)
    drift = (noise + slope * k) @ k / np.sqrt(k @ k)
    flagged = float((drift > np.quantile(null, 1 - far)).mean())
    assert bound["chances"] == [pytest.approx(flagged, abs=0.012)]
    last = slice(48 - 10, 48)  # the last window before 150 s holds readings 38..47
    window_null, window = noise[:, last].mean(axis=1), (noise + slope * k)[:, last].mean(axis=1)
    assert float((window > np.quantile(window_null, 1 - far)).mean()) < flagged - 0.05


def test_the_p95_chance_counts_every_way_the_drifts_can_fall(benchmark: ModuleType) -> None:
    """Against every outcome enumerated, each judged by the printed p95 (nearest rank)."""
    starts = [LIVE + timedelta(seconds=s) for s in (3.2, 41.9, 77.0, 130.4, 181.1)]
    drifts = pd.DataFrame({"start": starts, "slope": [0.05, 0.02, 0.015, 0.012, 0.01]})
    for others in ([5.0] * 40, [5.0] * 38 + [math.inf, 70.0], [5.0] * 20):
        bound = benchmark.drift_bound(drifts, others, lag=7.6, far=0.001, within=60.0)
        chances = bound["chances"]
        assert 0.0 < min(chances) < max(chances) <= 1.0
        expected = 0.0
        for fast in itertools.product([True, False], repeat=len(chances)):
            delays = [59.0 if f else 61.0 for f in fast]
            if benchmark.percentile(others + delays, 0.95) <= 60.0:
                expected += math.prod(c if f else 1 - c for c, f in zip(chances, fast, strict=True))
        assert bound["p95_within_chance"] == pytest.approx(expected)


def test_the_drifts_made_again_are_the_simulators_with_the_slope_in_their_readings(
    benchmark: ModuleType,
) -> None:
    """The slope is read back from the readings: faulty minus the same fleet without faults."""
    from fleetwatch.config.sections import Settings
    from fleetwatch.simulators.fleet import FleetStream
    from fleetwatch.simulators.publish import spec_from_settings

    options = Namespace(devices=40, faults_per_device_hour=30.0, minutes=4.0)
    base = spec_from_settings(Settings(), benchmark.SEED)
    faulty_spec = replace(base, devices=40, start=LIVE, interval_s=1.0, anomaly_rate=30.0)

    def readings(spec: object, ticks: int) -> tuple[np.ndarray, FleetStream]:
        stream = FleetStream(spec)  # type: ignore[arg-type]
        rows = np.full((ticks, 40, 3), np.nan)
        for tick, messages in stream.ticks():
            if tick >= ticks:
                break
            for _, value in messages:
                message = json.loads(value)
                device = stream.device_ids.index(message["device_id"])
                for s, name in enumerate(stream.sensor_names):
                    rows[tick, device, s] = message["readings"].get(name, np.nan)
        return rows, stream

    faulty, stream = readings(faulty_spec, 300)
    clean, _ = readings(replace(faulty_spec, anomaly_rate=0.0), 300)
    labels = pd.DataFrame([vars(label) for label in stream.anomalies.close()])
    labels = labels.assign(
        start=pd.to_datetime(labels["start_ms"], unit="ms", utc=True),
        end=pd.to_datetime(labels["end_ms"], unit="ms", utc=True),
    )
    judged = labels["start"] < LIVE + timedelta(minutes=4)
    drifts = labels[(labels["kind"] == "drift_ramp") & judged]
    assert len(drifts) >= 3
    sized = benchmark.drift_sizes(drifts, options, LIVE)
    for fault in sized.itertuples():
        device = stream.device_ids.index(fault.device_id)
        sensor = stream.sensor_names.index(fault.sensor)
        first = round((fault.start_ms - LIVE.timestamp() * 1000) // 1000)
        last = min(299, round((fault.end_ms - LIVE.timestamp() * 1000) // 1000))
        added = (faulty - clean)[first : last + 1, device, sensor]
        sigma = stream.signals.noise[device, sensor]
        fitted = np.polyfit(np.arange(len(added)), added / sigma, 1)[0]
        assert abs(fitted) == pytest.approx(fault.slope, rel=1e-3)  # either sign
    assert benchmark.drift_sizes(drifts.assign(device_id="other"), options, LIVE) is None
