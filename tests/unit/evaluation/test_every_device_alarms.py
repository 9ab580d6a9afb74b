"""Issue 25: every trained device can alarm, whatever its cadence and however it is trained.

A single-sensor series read every 5 minutes, 60 s windows, trained alone (hold-out C's shape):
before, its sensor was judged slow, its change needed a reading exactly one window earlier
(never there), every held-out score was 0 and nothing was ever flagged. The labels are
injected, the figures computed from them here, independently of the product."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fleetwatch.scoring.features import judge_slow


def machine_temperature(path: Path, seed: int) -> pd.DataFrame:
    """Ten days of one temperature read every 5 minutes: a daily cycle, a slow AR(1)
    wander and noise; in the last three days, four labelled faults (two level shifts of 2
    hours, an overheating ramp, a drop to a stuck value)."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2026-02-01", periods=10 * 288, freq="5min", tz="UTC")
    wander = np.zeros(len(times))
    for i in range(1, len(times)):
        wander[i] = 0.98 * wander[i - 1] + rng.normal(0, 0.3)
    hours = np.asarray((times - times[0]).total_seconds() / 3600.0)
    value = 70 + 3 * np.sin(2 * np.pi * hours / 24) + wander + rng.normal(0, 0.2, len(times))
    label = np.zeros(len(times), dtype=int)
    day = 288
    for start, length, change in (
        (7 * day + 100, 24, 9.0),
        (8 * day + 40, 24, -9.0),
        (8 * day + 200, 36, np.linspace(0, 15, 36)),
        (9 * day + 120, 30, None),
    ):
        where = slice(start, start + length)
        if change is None:
            value[where] = 55.0  # stuck far below
        else:
            value[where] += change
        label[where] = 1
    frame = pd.DataFrame(
        {"timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "temperature": value, "anomaly": label}
    )
    frame.to_csv(path, index=False)
    return frame


def test_a_sensor_read_further_apart_than_the_window_is_never_judged_slow() -> None:
    """The slow judgement looks at the cadence: the same random walk is slow when read in
    every window and not when read in one window of five."""
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(0, 1, 400))[:, None]
    every = np.arange(400, dtype=np.int64) * 60_000
    assert judge_slow(walk, ["t"], every, 60_000) == {"t": True}
    assert judge_slow(walk, ["t"], every * 5, 60_000) == {"t": False}


def test_a_single_slow_cadence_series_trained_alone_finds_its_faults(tmp_path: Path) -> None:
    found_all = []
    for seed in (1, 2):
        path = tmp_path / f"machine-{seed}.csv"
        frame = machine_temperature(path, seed)
        done = subprocess.run(
            [sys.executable, "-m", "fleetwatch", "evaluate", str(path), "--train-first", "7d",
             "--format", "json"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        record = json.loads(done.stdout)
        assert record["models_use"] == "levels of temperature (1 devices)"
        assert record["threshold_degenerate"] == 0
        # independently: the test part is the last three days; the episodes are the labels'
        test = frame.iloc[7 * 288 :]
        assert record["test_points"] == len(test)
        assert record["anomalous_points"] == int(test["anomaly"].sum())
        assert record["episodes"] == 4
        found_all.append(record["episodes_found"])
        assert record["far_percent"] < 5.0, record
        assert record["recall"] > 0.5, record
    assert sum(found_all) >= 7  # of 8 faults: before issue 25, none (nothing was flagged)
