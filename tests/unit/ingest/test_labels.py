"""``import --label-columns/--exclude-columns``: labels never become sensors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd


def skab_like(path: Path) -> None:
    frame = pd.DataFrame(
        {
            "datetime": pd.date_range("2026-03-01 10:00:00", periods=120, freq="s").astype(str),
            "Current": 1.0,
            "Volume Flow RateRMS": 32.0,
            "note": "x",
            "anomaly": [0.0] * 100 + [1.0] * 20,
            "changepoint": 0.0,
        }
    )
    frame.to_csv(path, sep=";", index=False)


def run(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwatch", "import", str(tmp_path / "valve.csv"),
         "--backfill", "--device-id", "valve-0", "--assume-timezone", "UTC",
         "--sanitize-names", "--data-dir", str(tmp_path / "data"), *flags],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def sensors(tmp_path: Path) -> set[str]:
    files = list((tmp_path / "data" / "aggregates").rglob("*.parquet"))
    return set(pd.concat([pd.read_parquet(f) for f in files])["sensor"].astype(str))


def test_label_columns_stay_out_of_the_readings(tmp_path: Path) -> None:
    skab_like(tmp_path / "valve.csv")
    done = run(tmp_path, "--label-columns", "anomaly,changepoint", "--exclude-columns", "note")
    assert done.returncode == 0, done.stderr
    assert sensors(tmp_path) == {"Current", "Volume_Flow_RateRMS"}
    assert "anomaly,changepoint" in done.stdout and "looks like a label" not in done.stderr


def test_a_label_like_column_imported_as_a_sensor_is_warned_about(tmp_path: Path) -> None:
    skab_like(tmp_path / "valve.csv")
    done = run(tmp_path, "--exclude-columns", "note,changepoint")
    assert done.returncode == 0, done.stderr
    assert "anomaly" in sensors(tmp_path)
    assert "column 'anomaly' looks like a label" in done.stderr
    assert "--label-columns 'anomaly'" in done.stderr


def test_a_label_column_that_is_not_there_is_one_clear_error(tmp_path: Path) -> None:
    skab_like(tmp_path / "valve.csv")
    done = run(tmp_path, "--label-columns", "anomally")
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr.count("\n") == 1 and "--label-columns 'anomally': no such column" in done.stderr
    )
