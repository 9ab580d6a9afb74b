"""Issue 23, defect 1: an object-store data dir lost windows when a stage decided on one
listing and acted on another (s3fs's cached one). This process lists the bucket; another client
adds a third file to an hour; then the hour closes and the scheduler scores and compacts it:
every device of the hour is scored, nothing is deleted that was not merged, and the hour's
windows (read by a fresh client) are pandas' over all three files, each once."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fleetwatch.config.values import parse_location
from fleetwatch.scheduler.service import CatchUp, pending_now
from fleetwatch.scoring.train import train
from fleetwatch.storage.layout import DataLayout, live_file_name
from fleetwatch.storage.parquet import AGGREGATE_SCHEMA
from tests.conftest import S3Server
from tests.unit.scoring.conftest import (
    DEVICES,
    T0,
    set_watermark,
    settings_for,
    synthetic_windows,
    write_windows,
)

KEYS = ["device_id", "sensor", "window_start"]


def put(fs: Any, key: str, rows: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    pq.write_table(
        pa.Table.from_pandas(rows[AGGREGATE_SCHEMA.names], schema=AGGREGATE_SCHEMA,
                             preserve_index=False),
        buffer,
    )  # fmt: skip
    fs.pipe_file(key, buffer.getvalue())


def test_a_file_added_after_a_listing_is_scored_and_never_deleted_unmerged(
    s3_server: S3Server, tmp_path: Path
) -> None:
    url = f"{s3_server.bucket()}/fleet"
    settings = replace(settings_for(Path("unused")), data_dir=parse_location(url),
                       local_dir=tmp_path / "machine")  # fmt: skip
    frame = synthetic_windows(hours=3)
    write_windows(settings.data_dir, frame[frame["window_start"] < T0 + timedelta(hours=2)])
    train(settings, T0, T0 + timedelta(hours=2), DEVICES)
    set_watermark(settings, T0 + timedelta(hours=2))
    CatchUp(settings)()  # the first two hours scored (and their listing taken)

    hour = T0 + timedelta(hours=2)
    third = frame[frame["window_start"] >= hour]
    groups = [DEVICES[0:3], DEVICES[3:6], DEVICES[6:8]]
    fs: Any = s3_server.filesystem()  # another client: the aggregator
    folder = f"{url.removeprefix('s3://')}/aggregates/date={hour:%Y-%m-%d}/hour={hour:%H}"
    for index, devices in enumerate(groups[:2]):
        put(fs, f"{folder}/{live_file_name(index, 0, 99)}", third[third["device_id"].isin(devices)])
    assert pending_now(settings) == []  # this process lists the open hour (two files)
    CatchUp(settings)()
    put(fs, f"{folder}/{live_file_name(2, 0, 99)}", third[third["device_id"].isin(groups[2])])
    set_watermark(settings, hour + timedelta(hours=1))  # the hour closes with three files

    runs = CatchUp(settings)()  # scores the hour, then compacts it
    assert [run.window_start for run in runs if run.status == "succeeded"] == [hour]
    assert runs[-1].devices_scored == len(DEVICES)
    with duckdb.connect(str(tmp_path / "machine" / "fleetwatch.duckdb"), read_only=True) as db:
        scored = db.execute(
            "SELECT device_id, count(*) FROM scores WHERE window_start >= ? GROUP BY 1 ORDER BY 1",
            [hour],
        ).fetchall()
    assert scored == [(device, 60) for device in DEVICES]

    fresh: Any = s3_server.filesystem()
    kept = sorted(fresh.find(folder))
    read = pd.concat([pd.read_parquet(io.BytesIO(fresh.cat_file(key))) for key in kept])
    assert len(read) == len(third)  # every window once: none lost, none twice
    pd.testing.assert_frame_equal(
        read.sort_values(KEYS).reset_index(drop=True)[KEYS],
        third.sort_values(KEYS).reset_index(drop=True)[KEYS],
        check_dtype=False,
    )
    CatchUp(settings)()  # the next tick deletes nothing it did not merge
    again: Any = s3_server.filesystem()
    after = pd.concat([pd.read_parquet(io.BytesIO(again.cat_file(k))) for k in again.find(folder)])
    assert len(after) == len(third)


def test_compaction_deletes_only_what_it_merged(s3_server: S3Server, tmp_path: Path) -> None:
    """A compaction decided on a listing of two files; a third lands before it is done: the
    third is neither merged nor deleted, and stays visible beside the compacted file (each
    window read once); its hour's signature tells the change."""
    from fleetwatch.storage.compaction import compact_hour, finish

    url = f"{s3_server.bucket()}/fleet"
    layout = DataLayout.open(url)
    frame = synthetic_windows(hours=1)
    fs: Any = s3_server.filesystem()
    folder = f"{url.removeprefix('s3://')}/aggregates/date={T0:%Y-%m-%d}/hour={T0:%H}"
    groups = [DEVICES[0:3], DEVICES[3:6], DEVICES[6:8]]
    for index, devices in enumerate(groups[:2]):
        put(fs, f"{folder}/{live_file_name(index, 0, 99)}", frame[frame["device_id"].isin(devices)])
    [listed] = layout.inventory([T0])
    put(fs, f"{folder}/{live_file_name(2, 0, 99)}", frame[frame["device_id"].isin(groups[2])])
    compaction = compact_hour(layout, listed)
    assert compaction is not None and len(compaction.merged) == 2
    assert finish(layout, compaction) == 2
    [now] = layout.inventory([T0])
    assert sorted(item.name[0] for item in now.files) == ["c", "p"]  # the third is visible
    assert now.signature != listed.signature
    read = pd.concat(
        [pd.read_parquet(io.BytesIO(fs.cat_file(f"{url.removeprefix('s3://')}/{key}")))
         for key in now.keys]
    )  # fmt: skip
    assert len(read) == len(frame) and not read.duplicated(KEYS).any()
