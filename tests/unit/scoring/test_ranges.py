"""Per-device training ranges: ``train --first`` (readings, duration, share) and ``--ranges``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetwatch.errors import InvalidInputError
from fleetwatch.scoring.ranges import FirstPart, first_ranges, read_ranges
from fleetwatch.storage.layout import DataLayout
from tests.unit.scoring.conftest import T0, synthetic_windows, write_windows


@pytest.mark.parametrize(
    ("text", "unit", "amount"),
    [("400", "readings", 400), ("400s", "duration", 400), ("2h", "duration", 7200),
     ("0.3", "share", 0.3), ("30%", "share", 0.3)],
)  # fmt: skip
def test_first_part_forms(text: str, unit: str, amount: float) -> None:
    first = FirstPart.parse(text)
    assert first.unit == unit and first.amount == pytest.approx(amount)


@pytest.mark.parametrize("text", ["", "abc", "1.5", "0%", "-3", "3 rows", "0", "00", "0s", "0h"])
def test_first_part_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(InvalidInputError, match="--first"):
        FirstPart.parse(text)


def test_first_ranges_per_device_equal_a_pandas_computation(tmp_path: Path) -> None:
    frame = synthetic_windows(hours=2)
    late = frame["device_id"] == "pump-05"  # this device starts 30 minutes later
    frame = frame[~late | (frame["window_start"] >= pd.Timestamp(T0) + pd.Timedelta(minutes=30))]
    frame.loc[frame["device_id"] == "pump-02", "count"] = 7  # 7 readings a window
    write_windows(tmp_path, frame)
    layout = DataLayout.open(tmp_path)
    until = T0 + timedelta(hours=2)
    starts = frame.groupby("device_id")["window_start"].min()
    for first in (
        FirstPart("readings", 400),
        FirstPart("duration", 1800),
        FirstPart("share", 0.25),
    ):
        ranges = first_ranges(layout, first, T0, until, 60_000)
        assert sorted(ranges) == sorted(frame["device_id"].unique())
        for device_id, (since, end) in ranges.items():
            start = starts[device_id]
            windows = frame[frame["device_id"] == device_id]["window_start"].drop_duplicates()
            per_window = (
                frame[frame["device_id"] == device_id].groupby("window_start")["count"].max()
            )
            if first.unit == "readings":  # whole windows within the first 400 readings
                kept = int((per_window.cumsum() <= 400).sum())
            elif first.unit == "duration":
                kept = 30
            else:
                kept = int(np.ceil(0.25 * len(windows)))
            assert since == start.to_pydatetime()
            assert end == (start + pd.Timedelta(minutes=kept)).to_pydatetime()


def test_a_file_of_ranges(tmp_path: Path) -> None:
    good = tmp_path / "ranges.csv"
    good.write_text("device_id,since,until\npump-01,2026-11-22T00,2026-11-22T02\n")
    (since, until) = read_ranges(good)["pump-01"]
    assert until - since == timedelta(hours=2)
    bad = tmp_path / "bad.csv"
    bad.write_text("device_id,since,until\n../x,2026-11-22T00,2026-11-22T02\n")
    with pytest.raises(InvalidInputError, match=r"line 2.*not 1-64"):
        read_ranges(bad)
    bad.write_text("device_id,since,until\npump-01,2026-11-22T02,2026-11-22T00\n")
    with pytest.raises(InvalidInputError, match="until is not after since"):
        read_ranges(bad)


def test_a_file_of_ranges_with_an_endless_line_is_refused_not_read(tmp_path: Path) -> None:
    # Before: `--ranges /dev/zero` read one endless line into memory (a MemoryError).
    endless = tmp_path / "endless.csv"
    with endless.open("wb") as handle:
        handle.write(b"device_id,since,until\n")
        handle.truncate(64 << 20)  # sparse: 64 MiB of NULs and no newline
    with pytest.raises(InvalidInputError, match=r"--ranges .*line 2 is longer than 64 KiB"):
        read_ranges(endless)
    many = tmp_path / "many.csv"  # a long file of short lines is fine
    rows = (f"pump-{i},2026-11-22T00,2026-11-22T02\n" for i in range(200_000))
    many.write_text("device_id,since,until\n" + "".join(rows))
    assert len(read_ranges(many)) == 200_000
