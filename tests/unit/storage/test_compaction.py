"""Hourly compaction: a closed hour's many live files become one, its windows unchanged (pandas
over the files before), the hour not scored again, and a compaction cut short after its write
still gives every window exactly once; open hours, backfills and the late sink are left alone."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from fleetwatch.config import Settings
from fleetwatch.scheduler.service import CatchUp, compact_closed_hours
from fleetwatch.scoring.features import read_cube
from fleetwatch.scoring.pending import pending_hours
from fleetwatch.scoring.train import train
from fleetwatch.storage.compaction import compact_hour
from fleetwatch.storage.duck import sandbox
from fleetwatch.storage.layout import DataLayout, is_compacted_file, parse_live_file_name
from fleetwatch.storage.parquet import PartitionedParquetSink, read_table
from tests.unit.scoring.conftest import (
    DEVICES,
    T0,
    set_watermark,
    settings_for,
    synthetic_windows,
)

KEYS = ["device_id", "sensor", "window_start"]
HOURS = [T0 + timedelta(hours=h) for h in range(3)]


def write_in_pieces(data_dir: Path, frame: pd.DataFrame, partitions: int = 3) -> None:
    """As the aggregator writes: each partition's windows in many small files (one per
    checkpoint), named after made-up offsets."""
    sink = PartitionedParquetSink(DataLayout(data_dir), "aggregates")
    for partition in range(partitions):
        mine = frame[frame["device_id"].map(lambda d: int(d[-2:]) % partitions) == partition]
        for piece, rows in enumerate(
            rows for _, rows in mine.groupby(mine["window_start"].dt.floor("10min"))
        ):
            rows = rows.assign(first_offset=piece * 100, last_offset=piece * 100 + 99)
            sink.write(rows, partition, "window_start")


def windows(settings: Settings, hour: object) -> pd.DataFrame:
    layout = DataLayout.of(settings)
    files = layout.hour_files("aggregates", hour)  # type: ignore[arg-type]
    frame = pd.concat([read_table(path).to_pandas() for path in files], ignore_index=True)
    return frame.sort_values(KEYS).reset_index(drop=True)


def stored(settings: Settings) -> pd.DataFrame:
    import duckdb

    with duckdb.connect(str(DataLayout.of(settings).database), read_only=True) as db:
        return db.execute(
            "SELECT device_id, window_start, score, is_anomaly FROM scores ORDER BY 1, 2"
        ).df()


@pytest.fixture
def scored(tmp_path: Path) -> Settings:
    settings = settings_for(tmp_path / "data")
    settings = replace(settings, schedule=replace(settings.schedule, compact=False))
    write_in_pieces(settings.data_dir, synthetic_windows())
    train(settings, T0, T0 + timedelta(hours=2), DEVICES)
    set_watermark(settings, T0 + timedelta(hours=2))  # hours 0 and 1 closed, 2 open
    assert [r.status for r in CatchUp(settings)()] == ["succeeded", "succeeded"]
    return settings


def test_a_closed_hour_becomes_one_file_with_the_same_windows_and_is_not_rescored(
    scored: Settings,
) -> None:
    layout = DataLayout.of(scored)
    before = {hour: windows(scored, hour) for hour in HOURS}
    rows_before = stored(scored)
    assert len(layout.hour_files("aggregates", HOURS[0])) >= 12

    assert compact_closed_hours(scored) == 2
    for hour in HOURS[:2]:
        files = layout.all_hour_files("aggregates", hour)
        assert [is_compacted_file(p.name) for p in files] == [True]
        pd.testing.assert_frame_equal(windows(scored, hour), before[hour])
    open_hour = layout.all_hour_files("aggregates", HOURS[2])
    assert len(open_hour) > 1 and all(parse_live_file_name(p.name) for p in open_hour)
    assert pending_hours(scored) == []  # same data: nothing to score again
    assert compact_closed_hours(scored) == 0  # and nothing left to compact

    cube = read_cube(scored.data_dir, HOURS[0], HOURS[1], 60_000)
    assert len(cube.row_starts) == 60 * len(DEVICES)
    with sandbox(layout) as connection:
        counted = connection.execute(
            "SELECT count(*), count(DISTINCT (device_id, sensor, window_start)) FROM aggregates"
        ).fetchone()
    total = sum(len(frame) for frame in before.values())
    assert counted == (total, total)
    set_watermark(scored, T0 + timedelta(hours=3))
    assert [r.status for r in CatchUp(scored)()] == ["succeeded"]  # hour 2, now closed
    assert len(stored(scored)) == len(rows_before) + 60 * len(DEVICES)


def test_a_compaction_cut_short_after_its_write_still_counts_each_window_once(
    scored: Settings,
) -> None:
    layout = DataLayout.of(scored)
    before = windows(scored, HOURS[0])
    rows_before = stored(scored)
    compaction = compact_hour(layout, HOURS[0])  # written; the signature and deletion not done
    assert compaction is not None and compaction.rows == len(before)
    assert len(layout.all_hour_files("aggregates", HOURS[0])) > 2  # the live files are there
    pd.testing.assert_frame_equal(windows(scored, HOURS[0]), before)  # ... and hidden
    with sandbox(layout) as connection:
        [(count,)] = connection.execute(
            "SELECT count(*) FROM aggregates WHERE window_start < ?", [HOURS[1]]
        ).fetchall()
    assert count == len(before)
    # the hour's files changed form without its signature being moved: it is scored once more
    assert [p.hour for p in pending_hours(scored)] == [HOURS[0]]
    assert [r.status for r in CatchUp(scored)()] == ["succeeded"]
    pd.testing.assert_frame_equal(stored(scored), rows_before)
    assert compact_closed_hours(scored) == 2  # the left-overs deleted, hour 1 compacted
    assert len(layout.all_hour_files("aggregates", HOURS[0])) == 1
    assert pending_hours(scored) == []


def test_the_scheduler_compacts_after_scoring_and_leaves_backfills_and_late_files(
    tmp_path: Path,
) -> None:
    from fleetwatch.storage.layout import backfill_file_name

    settings = settings_for(tmp_path / "data")
    write_in_pieces(settings.data_dir, synthetic_windows(hours=2))
    layout = DataLayout.of(settings)
    late = PartitionedParquetSink(layout, "late")
    late_rows = pd.DataFrame(
        {
            "device_id": ["pump-00"] * 2, "sensor": ["pressure"] * 2,
            "ts": pd.to_datetime([T0, T0], utc=True).astype("datetime64[ms, UTC]"),
            "value": [1.0, 2.0],
            "window_start": pd.to_datetime([T0, T0], utc=True).astype("datetime64[ms, UTC]"),
            "lateness_ms": [1, 2], "partition": [0, 0], "offset": [5, 6],
        }
    )  # fmt: skip
    late.write(late_rows.iloc[:1], 0, "window_start")
    late.write(late_rows.iloc[1:], 0, "window_start")
    backfilled = layout.hour_dir("aggregates", HOURS[1]) / backfill_file_name("0" * 16)
    other = pd.read_parquet(layout.hour_files("aggregates", HOURS[1])[0]).assign(device_id="x-1")
    other.to_parquet(backfilled)  # another device's history, imported
    train(settings, T0, T0 + timedelta(hours=1), DEVICES)
    set_watermark(settings, T0 + timedelta(hours=2))
    CatchUp(settings)()  # scores both hours, then compacts them
    for hour in HOURS[:2]:
        names = [p.name for p in layout.all_hour_files("aggregates", hour)]
        assert sum(is_compacted_file(n) for n in names) == 1
        assert not any(parse_live_file_name(n) for n in names)
    assert backfilled.exists()
    assert len(layout.hour_files("late", T0)) == 2  # the late sink is never compacted
    assert pending_hours(settings) == []
