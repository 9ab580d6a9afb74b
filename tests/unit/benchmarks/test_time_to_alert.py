"""benchmarks/time_to_alert.py's bound: when an ideal one-window detector first flags a fault."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

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
