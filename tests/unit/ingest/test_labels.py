"""``import --label-columns/--exclude-columns``: labels never become sensors."""

from __future__ import annotations

import shutil
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


def test_names_that_differ_only_in_case_are_told_apart(tmp_path: Path) -> None:
    # Before: `T` named the column `t` (the last of the two case aside); `T` stayed a sensor.
    frame = pd.DataFrame(
        {
            "datetime": pd.date_range("2026-03-01 10:00:00", periods=60, freq="s").astype(str),
            "T": 20.0,
            "t": 1.0,
            "Ab": 2.0,
            "aB": 3.0,
            "p": 4.0,
        }
    )
    frame.to_csv(tmp_path / "valve.csv", sep=";", index=False)
    for flags, left in (
        (["--label-columns", "T"], {"t", "Ab", "aB", "p"}),  # the exact name first
        (["--label-columns", "t"], {"T", "Ab", "aB", "p"}),
        (["--label-columns", "P", "--exclude-columns", " aB "], {"T", "t", "Ab"}),  # one match
    ):
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
        done = run(tmp_path, *flags)
        assert done.returncode == 0, done.stderr
        assert sensors(tmp_path) == left, flags
    done = run(tmp_path, "--exclude-columns", "ab")  # two columns, neither exactly
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert "--exclude-columns 'ab': names 2 columns ('Ab', 'aB')" in done.stderr


def test_a_long_files_label_tags_are_told_apart_the_same_way(tmp_path: Path) -> None:
    stamps = pd.date_range("2026-03-01 10:00:00", periods=30, freq="s").astype(str)
    frame = pd.concat(
        pd.DataFrame({"TS": stamps, "Tag": tag, "Value": value})
        for tag, value in (("T", 20.0), ("t", 1.0), ("Ab", 2.0), ("aB", 3.0), ("p", 4.0))
    )
    frame.to_csv(tmp_path / "valve.csv", sep=";", index=False)
    for flags, left in (
        (["--label-columns", "T"], {"t", "Ab", "aB", "p"}),
        (["--label-columns", "t"], {"T", "Ab", "aB", "p"}),
        (["--label-columns", "P", "--exclude-columns", " aB "], {"T", "t", "Ab"}),
    ):
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
        done = run(tmp_path, *flags)
        assert done.returncode == 0, done.stderr
        assert sensors(tmp_path) == left, flags
    done = run(tmp_path, "--exclude-columns", "ab")
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert "--exclude-columns 'ab': names 2 sensors ('Ab', 'aB')" in done.stderr
