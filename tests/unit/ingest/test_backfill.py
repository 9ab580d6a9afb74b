"""`fleetwatch import --backfill`: historical files become aggregates exactly, once, and are
trained and scored like live data (before, they went to the late sink)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetwatch.cli import main
from fleetwatch.config import load_settings
from fleetwatch.scheduler.service import CatchUp
from fleetwatch.scoring.train import train
from fleetwatch.storage.layout import DataLayout
from tests.integration.aggregate_helpers import read_parquet_dir

START = datetime(2026, 11, 20, 6, tzinfo=UTC)


def azure_csv(path: Path, hours: int = 3, seed: int = 3) -> pd.DataFrame:
    """The Azure batch-scoring reference's layout: TS, Device, Tag, Value, one reading a row."""
    rng = np.random.default_rng(seed)
    rows = []
    for device in ("Device_1", "Device_2", "Device_3"):
        for second in range(0, hours * 3600, 10):
            ts = START + timedelta(seconds=second + int(rng.integers(0, 9)))
            for tag, base in (("temperature", 60.0), ("pressure", 2.0)):
                rows.append((ts.strftime("%Y-%m-%d %H:%M:%S"), device, tag, base + rng.normal()))
    frame = pd.DataFrame(rows, columns=["TS", "Device", "Tag", "Value"])
    frame.to_csv(path, index=False)
    return frame


def expected_windows(frame: pd.DataFrame) -> pd.DataFrame:
    ts = pd.to_datetime(frame["TS"]).dt.tz_localize("UTC")
    data = pd.DataFrame(
        {
            "device_id": frame["Device"],
            "sensor": frame["Tag"],
            "window_start": ts.dt.floor("min"),
            "value": frame["Value"],
        }
    )
    return (
        data.groupby(["device_id", "sensor", "window_start"])["value"]
        .agg(count="count", mean="mean", std=lambda v: v.std(ddof=0), min="min", max="max")
        .reset_index()
    )


def assert_windows_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """The same windows, each with the same count and statistics."""
    merged = want.merge(
        got.assign(window_start=got["window_start"].astype("datetime64[ns, UTC]")),
        on=["device_id", "sensor", "window_start"],
        suffixes=("_want", "_got"),
        how="outer",
        indicator=True,
    )
    assert (merged["_merge"] == "both").all()
    assert (merged["count_want"] == merged["count_got"]).all()
    for column in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(merged[f"{column}_got"], merged[f"{column}_want"], atol=1e-9)


def test_a_historical_file_becomes_exact_aggregates_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "sensor_data.csv"
    frame = azure_csv(source)
    data = tmp_path / "data"
    args = [
        "import",
        str(source),
        "--backfill",
        "--assume-timezone",
        "UTC",
        "--data-dir",
        str(data),
    ]
    assert main(args) == 0
    assert "windows_written" in capsys.readouterr().out
    assert main(args) == 0  # again: the same files, no duplicate
    got = read_parquet_dir(data / "aggregates")
    assert not got.duplicated(["device_id", "sensor", "window_start"]).any()
    assert_windows_equal(got, expected_windows(frame))
    assert not (data / "late").exists()
    files = sorted(p.name for p in (data / "aggregates").rglob("*.parquet"))
    assert len(files) == 3 and len(set(files)) == 1 and files[0].startswith("b-")


@pytest.mark.parametrize(
    "names",
    [
        ("timestamp", "device_id", "sensor", "value"),
        ("time", "device", "metric", "reading"),
        ("Event_Time", "DeviceId", "sensor_name", "Value"),
    ],
)
def test_a_long_file_is_read_by_the_usual_names_of_its_columns(
    tmp_path: Path, names: tuple[str, str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # One reading a row under names other than TS, Device, Tag, Value: before, the file was
    # taken as wide, "sensor" and "value" as two sensors, and every row rejected.
    source = tmp_path / "readings.csv"
    frame = azure_csv(source, hours=1)
    frame.set_axis(list(names), axis=1).sample(frac=1, random_state=2).to_csv(source, index=False)
    data = tmp_path / "data"
    args = ["import", str(source), "--backfill", "--assume-timezone", "UTC"]
    assert main([*args, "--data-dir", str(data)]) == 0
    assert "layout               long" in capsys.readouterr().out
    got = read_parquet_dir(data / "aggregates")
    assert_windows_equal(got, expected_windows(frame))


def test_a_long_file_without_a_device_column_takes_device_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "readings.csv"
    source.write_text("timestamp,sensor,value\n2026-11-20T06:00:00Z,t,1.5\n")
    assert main(["import", str(source), "--backfill", "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "device" in err and "--device-id" in err
    args = ["import", str(source), "--backfill", "--device-id", "pump-7"]
    assert main([*args, "--data-dir", str(tmp_path / "d")]) == 0  # one device's long file
    got = read_parquet_dir(tmp_path / "d" / "aggregates")
    assert got[["device_id", "sensor", "count", "mean"]].values.tolist() == [
        ["pump-7", "t", 1, 1.5]
    ]


def test_backfill_files_hold_their_devices_in_order_in_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26 item 3: a backfill file is sorted by device, in row groups of
    ``GROUP_ROWS``, so that a part of a fleet (scoring, training) reads only the row groups
    of its devices: each row group's devices come after the previous group's, never
    interleaved, and each device's windows are in time order."""
    import pyarrow.parquet as pq

    import fleetwatch.ingest.backfill as backfill_module

    monkeypatch.setattr(backfill_module, "GROUP_ROWS", 100)
    source = tmp_path / "sensor_data.csv"
    azure_csv(source)
    data = tmp_path / "data"
    args = ["import", str(source), "--backfill", "--assume-timezone", "UTC", "--data-dir",
            str(data)]  # fmt: skip
    assert main(args) == 0
    for path in sorted((data / "aggregates").rglob("*.parquet")):
        parquet = pq.ParquetFile(path)
        assert parquet.metadata.num_row_groups > 1
        assert all(parquet.metadata.row_group(g).num_rows <= 100
                   for g in range(parquet.metadata.num_row_groups))  # fmt: skip
        groups = [parquet.read_row_group(g).to_pandas()
                  for g in range(parquet.metadata.num_row_groups)]  # fmt: skip
        for before, after in itertools.pairwise(groups):
            assert before["device_id"].max() <= after["device_id"].min()
        frame = pd.concat(groups)
        key = list(zip(frame["device_id"], frame["window_start"], frame["sensor"], strict=True))
        assert key == sorted(key)


def test_backfilled_hours_are_closed_trained_and_scored(tmp_path: Path) -> None:
    source = tmp_path / "sensor_data.csv"
    azure_csv(source, hours=4)
    data = tmp_path / "data"
    assert (
        main(
            [
                "import",
                str(source),
                "--backfill",
                "--assume-timezone",
                "UTC",
                "--data-dir",
                str(data),
            ]
        )
        == 0
    )
    settings = load_settings(
        environ={},
        overrides={
            "": {"data_dir": str(data)},
            "train": {"workers": "1", "progress": "false"},
            "score": {"workers": "1"},
        },
    )
    summary = train(settings, START, START + timedelta(hours=2))
    assert sorted(summary.trained) == ["Device_1", "Device_2", "Device_3"]
    results = CatchUp(settings)()  # no aggregation ever ran here: backfilled hours are closed
    assert [r.window_start.hour for r in results] == [6, 7, 8, 9]
    assert all(r.status == "succeeded" and r.devices_scored == 3 for r in results)
    assert CatchUp(settings)() == []


def test_windows_that_exist_already_are_refused_not_doubled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "sensor_data.csv"
    azure_csv(source, hours=1)
    data = tmp_path / "data"
    main(["import", str(source), "--backfill", "--assume-timezone", "UTC", "--data-dir", str(data)])
    capsys.readouterr()
    changed = tmp_path / "other.csv"  # another file with the same windows
    changed.write_text(source.read_text().replace("\n", "\n", 1) + "\n")
    assert (
        main(
            [
                "import",
                str(changed),
                "--backfill",
                "--assume-timezone",
                "UTC",
                "--data-dir",
                str(data),
            ]
        )
        == 2
    )
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "exist already" in line
    hours = DataLayout.open(data).inventory()
    assert len(hours) == 1 and len(hours[0].files) == 1


def test_an_hour_backfilled_a_part_at_a_time_is_checked_against_the_windows_it_overlaps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The clash check reads the hour's earlier files only in the new file's time span: files
    of the same hour that follow one another are accepted, and one that overlaps an earlier
    file is refused with the exact count of the windows both hold (2 devices x 2 minutes)."""
    data = tmp_path / "data"
    start = datetime(2026, 11, 23, 10, tzinfo=UTC)

    def part(name: str, first_minute: int, minutes: int) -> int:
        stamps = pd.date_range(start + timedelta(minutes=first_minute), periods=minutes * 2,
                               freq="30s")  # fmt: skip
        frame = pd.concat(
            pd.DataFrame({"timestamp": stamps, "device_id": device, "temp": 20.0 + index})
            for index, device in enumerate(["pump-1", "pump-2"])
        )
        path = tmp_path / f"{name}.parquet"
        frame.to_parquet(path)
        return main(
            ["import", str(path), "--backfill", "--layout", "wide", "--data-dir", str(data)]
        )

    assert part("a", 0, 20) == 0 and part("b", 20, 20) == 0  # one after the other: accepted
    capsys.readouterr()
    assert part("c", 38, 10) == 2  # minutes 38 and 39 are b's
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "error: 4 windows of this file in 2026-11-23T10:00Z exist already" in line
    assert part("d", 40, 20) == 0
    [hour] = DataLayout.open(data).inventory()
    windows = read_parquet_dir(data / "aggregates")
    assert len(hour.files) == 3 and len(windows) == 2 * 60
    assert not windows.duplicated(["device_id", "sensor", "window_start"]).any()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # pandas read the second "t" as a sensor named "t.1"
        ("timestamp,device_id,t,t\n2026-11-20T06:00:00Z,d1,1,2\n", "names column 't' twice"),
        # epoch seconds were read as milliseconds: "outside 2000..2100", nothing more
        ("timestamp,device_id,t\n1763618400,d1,1\n", "epoch seconds? multiply by 1000"),
    ],
)
def test_a_header_naming_a_column_twice_or_epoch_seconds_are_named(
    tmp_path: Path, text: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "readings.csv"
    source.write_text(text)
    code = main(["import", str(source), "--backfill", "--data-dir", str(tmp_path / "d")])
    assert code in (1, 2) and says in capsys.readouterr().err
    assert not list((tmp_path / "d").rglob("*.parquet"))
