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
from fleetwatch.scheduler.service import CatchUp, compact_closed_hours, pending_now
from fleetwatch.scoring.features import read_cube
from fleetwatch.scoring.train import train
from fleetwatch.storage.compaction import compact_hour
from fleetwatch.storage.duck import sandbox
from fleetwatch.storage.layout import (
    DataLayout,
    StoredObject,
    hour_prefix,
    is_compacted_file,
    parse_live_file_name,
)
from fleetwatch.storage.parquet import PartitionedParquetSink, publish_staged, read_table
from tests.unit.scoring.conftest import (
    DEVICES,
    T0,
    set_watermark,
    settings_for,
    synthetic_windows,
)

KEYS = ["device_id", "sensor", "window_start"]
HOURS = [T0 + timedelta(hours=h) for h in range(3)]


def write_in_pieces(data_dir: Path | str, frame: pd.DataFrame, partitions: int = 3) -> None:
    """As the aggregator writes: each partition's windows in many small files (one per
    checkpoint), named after made-up offsets."""
    sink = PartitionedParquetSink(DataLayout.open(data_dir), "aggregates")
    for partition in range(partitions):
        mine = frame[frame["device_id"].map(lambda d: int(d[-2:]) % partitions) == partition]
        for piece, rows in enumerate(
            rows for _, rows in mine.groupby(mine["window_start"].dt.floor("10min"))
        ):
            rows = rows.assign(first_offset=piece * 100, last_offset=piece * 100 + 99)
            sink.write(rows, partition, "window_start")
    publish_staged(sink)


def all_files(layout: DataLayout, hour: object) -> list[StoredObject]:
    """Every data file in the hour's folder, hidden left-overs of a compaction included."""
    return [
        item
        for item in layout.store.listing(hour_prefix("aggregates", hour))  # type: ignore[arg-type]
        if item.name.endswith(".parquet") and not item.name.startswith(".")
    ]


def windows(settings: Settings, hour: object) -> pd.DataFrame:
    layout = settings.layout
    files = layout.hour_data("aggregates", hour)  # type: ignore[arg-type]
    frame = pd.concat(
        [read_table(layout.store, item.key).to_pandas() for item in files], ignore_index=True
    )
    return frame.sort_values(KEYS).reset_index(drop=True)


def stored(settings: Settings) -> pd.DataFrame:
    import duckdb

    with duckdb.connect(str(settings.layout.database), read_only=True) as db:
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
    layout = scored.layout
    before = {hour: windows(scored, hour) for hour in HOURS}
    rows_before = stored(scored)
    assert len(layout.hour_data("aggregates", HOURS[0])) >= 12

    assert compact_closed_hours(scored) == 2
    for hour in HOURS[:2]:
        files = all_files(layout, hour)
        assert [is_compacted_file(p.name) for p in files] == [True]
        pd.testing.assert_frame_equal(windows(scored, hour), before[hour])
    open_hour = all_files(layout, HOURS[2])
    assert len(open_hour) > 1 and all(parse_live_file_name(p.name) for p in open_hour)
    assert pending_now(scored) == []  # same data: nothing to score again
    assert compact_closed_hours(scored) == 0  # and nothing left to compact

    keys = [item.key for item in layout.files_between(HOURS[0], HOURS[1])]
    cube = read_cube(layout.store, keys, HOURS[0], HOURS[1], 60_000)
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
    layout = scored.layout
    before = windows(scored, HOURS[0])
    rows_before = stored(scored)
    [listed] = layout.inventory([HOURS[0]])
    compaction = compact_hour(layout, listed)  # written; the live files not deleted
    assert compaction is not None and compaction.rows == len(before)
    assert len(all_files(layout, HOURS[0])) > 2  # the live files are there
    pd.testing.assert_frame_equal(windows(scored, HOURS[0]), before)  # ... and hidden
    with sandbox(layout) as connection:
        [(count,)] = connection.execute(
            "SELECT count(*) FROM aggregates WHERE window_start < ?", [HOURS[1]]
        ).fetchall()
    assert count == len(before)
    # the hour's files changed form, its data did not: it is not scored again (issue 23,
    # defect 2: a crash here used to give the hour a second whole-hour run)
    assert pending_now(scored) == []
    assert CatchUp(replace(scored, schedule=replace(scored.schedule, compact=False)))() == []
    pd.testing.assert_frame_equal(stored(scored), rows_before)
    assert compact_closed_hours(scored) == 2  # the left-overs deleted, hour 1 compacted
    assert len(all_files(layout, HOURS[0])) == 1
    assert pending_now(scored) == []


def test_the_scheduler_compacts_after_scoring_and_leaves_backfills_and_late_files(
    tmp_path: Path,
) -> None:
    from fleetwatch.storage.layout import backfill_file_name

    settings = settings_for(tmp_path / "data")
    write_in_pieces(settings.data_dir, synthetic_windows(hours=2))
    layout = settings.layout
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
    publish_staged(late)
    folder = settings.data_dir / hour_prefix("aggregates", HOURS[1])
    backfilled = folder / backfill_file_name("0" * 16)
    first = layout.hour_data("aggregates", HOURS[1])[0]
    other = pd.read_parquet(folder / first.name).assign(device_id="x-1")
    other.to_parquet(backfilled)  # another device's history, imported
    train(settings, T0, T0 + timedelta(hours=1), DEVICES)
    set_watermark(settings, T0 + timedelta(hours=2))
    CatchUp(settings)()  # scores both hours, then compacts them
    for hour in HOURS[:2]:
        names = [p.name for p in all_files(layout, hour)]
        assert sum(is_compacted_file(n) for n in names) == 1
        assert not any(parse_live_file_name(n) for n in names)
    assert backfilled.exists()
    assert len(layout.hour_data("late", T0)) == 2  # the late sink is never compacted
    assert pending_now(settings) == []
