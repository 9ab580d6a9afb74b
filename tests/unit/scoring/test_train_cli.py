"""``fleetwatch train``: per-device ranges from the command line; nothing trained is not done."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd

from fleetwatch.scoring.registry import ModelRegistry
from tests.unit.scoring.conftest import (
    SENSORS,
    T0,
    drifting_windows,
    synthetic_windows,
    write_windows,
)


def train(data: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwatch", "train", "--data-dir", str(data), "--workers", "2",
         *flags],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_first_part_of_each_device_and_a_file_of_ranges(tmp_path: Path) -> None:
    frame = synthetic_windows(hours=3)
    late = frame["device_id"] == "pump-05"  # joins an hour later than the others
    frame = frame[~late | (frame["window_start"] >= pd.Timestamp(T0) + pd.Timedelta(hours=1))]
    write_windows(tmp_path, frame)
    done = train(tmp_path, "--first", "30m")
    assert done.returncode == 0, done.stderr
    registry = ModelRegistry.of(tmp_path)
    for device_id in frame["device_id"].unique():
        training = registry.describe(device_id)["training"]
        start = frame[frame["device_id"] == device_id]["window_start"].min().to_pydatetime()
        assert training["from"] == start.isoformat()
        assert training["until"] == (start + timedelta(minutes=30)).isoformat()
        assert training["windows"] == 30
    ranges = tmp_path / "ranges.csv"
    ranges.write_text("device_id,since,until\npump-01,2026-11-22T01,2026-11-22T02\n")
    done = train(tmp_path, "--ranges", str(ranges))
    assert done.returncode == 0, done.stderr
    assert registry.describe("pump-01")["training"]["windows"] == 60
    assert registry.active_version("pump-01") == "v0002"
    assert registry.active_version("pump-02") == "v0001"


def test_nothing_trained_is_exit_1_with_the_reason(tmp_path: Path) -> None:
    write_windows(tmp_path, synthetic_windows(hours=1))
    done = train(tmp_path, "--first", "10m")  # 10 windows: fewer than 15
    assert done.returncode == 1
    assert "no device was trained: 8 skipped" in done.stderr and "10 windows" in done.stderr
    assert done.stderr.count("\n") == 1


def test_slow_sensors_declared_judged_or_none(tmp_path: Path) -> None:
    """``--slow-sensors``: named sensors are described by their change (whatever their
    windows look like), ``none`` keeps every level, ``auto`` judges (white noise: not slow);
    the choice is recorded in each version's manifest; a mixed list is a one-line error."""
    write_windows(tmp_path, synthetic_windows(hours=1))
    registry = ModelRegistry.of(tmp_path)

    def features(*flags: str) -> list[str]:
        done = train(tmp_path, "--first", "30m", *flags)
        assert done.returncode == 0, done.stderr
        manifest = registry.describe("pump-01")
        assert manifest["parameters"]["slow_sensors"] == (
            flags[1].split(",") if flags else ["auto"]
        )
        return list(manifest["features"])

    judged = features()
    assert not any(name.endswith("__delta") for name in judged)  # white noise: every level
    declared = features("--slow-sensors", f"{SENSORS[0]},humidity")  # a name it lacks: ignored
    assert f"{SENSORS[0]}__delta" in declared and f"{SENSORS[0]}__mean" not in declared
    assert f"{SENSORS[1]}__mean" in declared
    assert features("--slow-sensors", "none") == judged
    mixed = train(tmp_path, "--first", "30m", "--slow-sensors", "auto,temperature")
    assert mixed.returncode == 2 and mixed.stderr.count("\n") == 1
    assert "--slow-sensors" in mixed.stderr and "not both" in mixed.stderr
    bad = train(tmp_path, "--first", "30m", "--slow-sensors", "../etc")
    assert bad.returncode == 2 and "not a valid sensor name" in bad.stderr


def test_auto_slow_sensors_are_the_fleets_majority(tmp_path: Path) -> None:
    """``auto``: each device judges its sensors on its training windows, the devices trained
    together decide by majority: a temperature wandering on 5 of 8 pumps is slow on all 8;
    a pressure that happened to drift on one pump stays a level (alone, that pump would
    judge it slow)."""
    frame = drifting_windows()
    write_windows(tmp_path, frame)
    done = train(tmp_path, "--first", "45m")
    assert done.returncode == 0, done.stderr
    assert re.search(r"slow_sensors +temperature \(5 of 8 devices\)\n", done.stdout)
    registry = ModelRegistry.of(tmp_path)
    for device_id in frame["device_id"].unique():
        features = registry.describe(device_id)["features"]
        assert "temperature__delta" in features and "temperature__mean" not in features
        assert "pressure__mean" in features and "pressure__delta" not in features
    alone = train(tmp_path, "--first", "45m", "--devices", "pump-07")
    assert alone.returncode == 0, alone.stderr
    features = registry.describe("pump-07")["features"]
    assert "pressure__delta" in features and "temperature__mean" in features
