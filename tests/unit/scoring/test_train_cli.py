"""``fleetwatch train``: per-device ranges from the command line; nothing trained is not done."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd

from fleetwatch.scoring.registry import ModelRegistry
from tests.unit.scoring.conftest import T0, synthetic_windows, write_windows


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
    registry = ModelRegistry(tmp_path / "models")
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
