"""benchmarks/time_to_alert.py's bound: when an ideal one-window detector first flags a fault."""

from __future__ import annotations

import itertools
import json
import math
from argparse import Namespace
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from tests.unit.benchmarks.conftest import load_script

LIVE = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    return load_script("time_to_alert.py")


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


def test_an_alert_is_false_when_it_overlaps_no_fault_of_its_device(benchmark: ModuleType) -> None:
    t0 = pd.Timestamp("2026-01-01T00:10:00Z")
    second = pd.Timedelta(seconds=1)
    faults = pd.DataFrame(
        {
            "device_id": ["d-1", "d-2"],
            "start": [t0, t0 + 100 * second],
            "end": [t0 + 30 * second, t0 + 130 * second],
        }
    )

    def alert(device: str, start_s: int) -> dict[str, object]:
        start = t0 + start_s * second
        return {
            "kind": "anomaly",
            "device_id": device,
            "window_start": start.isoformat(),
            "window_end": (start + benchmark.WINDOW_S * second).isoformat(),
        }

    alerts = {
        "in": alert("d-1", 20),  # inside d-1's fault
        "tail": alert("d-1", 30),  # its last window plus one: still the fault's
        "after": alert("d-1", 40 + benchmark.WINDOW_S),  # after it: false
        "other device": alert("d-3", 20),  # a device without a fault: false
        "d-2 before": alert("d-2", 100 - 2 * benchmark.WINDOW_S),  # ends before d-2's: false
        "retraction": {**alert("d-3", 0), "kind": "retracted"},  # not an alarm
    }
    assert benchmark.false_alerts(alerts, faults) == 3


def test_a_fault_inside_an_incident_alerted_before_it_is_counted_apart_not_missed(
    benchmark: ModuleType,
) -> None:
    second = timedelta(seconds=1)
    w = benchmark.WINDOW_S

    def at(s: float) -> str:
        return (LIVE + s * second).isoformat()

    faults = pd.DataFrame(
        {
            "device_id": ["alerted", "continued", "missed", "never alerted"],
            "kind": ["spike"] * 4,
            "start": [LIVE + 100 * second] * 4,
            "end": [LIVE + 130 * second] * 4,
        }
    )
    incidents = [  # the final run's: each fault's device has one
        {"device_id": device, "window_start": at(start), "window_end": at(150)}
        for device, start in [
            ("alerted", 100),
            ("continued", 80),
            ("missed", 100),
            ("never alerted", 80),
        ]
    ]
    alerts = {  # live: "continued" alerted at its incident's first window, before the fault
        "a": {"alert_id": "a", "kind": "anomaly", "device_id": "alerted", "window_start": at(100),
              "window_end": at(100 + w)},
        "c": {"alert_id": "c", "kind": "anomaly", "device_id": "continued", "window_start": at(80),
              "window_end": at(80 + w)},
    }  # fmt: skip
    sent_from = 1_000.0
    arrivals = {"a": sent_from + 100 + w + 3, "c": sent_from + 80 + w + 3}

    result = benchmark.judge(faults, alerts, arrivals, incidents, LIVE, sent_from)

    assert (result["faults"], result["missed"], result["continued"]) == (4, 2, 1)
    assert result["missed_live_found_hourly"] == 2  # "missed" and "never alerted"
    assert result["median_s"] == pytest.approx(w + 3)  # the one delay: "alerted"'s
