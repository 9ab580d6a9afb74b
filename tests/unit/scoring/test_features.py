"""The window cube: read from Parquet once, it equals the pandas pivot of the rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetwatch.scoring.features import feature_names


@pytest.mark.parametrize("columns", ["shared", "per device"])
@pytest.mark.parametrize("fleet", ["one device type", "two device types"])
def test_cube_read_from_parquet_equals_the_pandas_pivot(
    tmp_path: Path, columns: str, fleet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read_cube`` (dictionary-encoded columns, several files per hour, rows in any order, a
    missing statistic, devices with different sensors) equals the pandas pivot of the rows,
    whichever grid layout it picks."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fleetwatch.scoring import features
    from fleetwatch.storage.parquet import AGGREGATE_SCHEMA
    from tests.unit.scoring.conftest import T0, cube_of, synthetic_windows
    from tests.unit.scoring.reference import device_matrix, pivot_by_device, sensors_of

    monkeypatch.setattr(features, "SHARED_COLUMNS_UP_TO", 1e9 if columns == "shared" else 0.0)
    frame = synthetic_windows(hours=3).sample(frac=1.0, random_state=1)  # rows in any order
    minute = (frame["window_start"] - frame["window_start"].min()).dt.total_seconds() // 60
    gap = (frame["device_id"] == "pump-02") & (minute % 60).between(10, 14)
    frame = frame[~gap]  # pump-02 lost five windows an hour: `gather` pads it with NaN rows
    sensors = ["pressure", "temperature", "vibration", "humidity"]
    if fleet == "two device types":  # half the fleet has other sensors
        other = frame["device_id"].isin(["pump-04", "pump-05", "pump-06", "pump-07"])
        renamed = {"pressure": "flow", "temperature": "rpm", "vibration": "voltage"}
        frame.loc[other, "sensor"] = frame.loc[other, "sensor"].map(renamed)
        sensors += list(renamed.values())
    frame.loc[frame.index[:5], "std"] = np.nan  # written as nulls: read back as NaN
    for hour, rows in frame.groupby(frame["window_start"].dt.floor("h")):
        folder = tmp_path / "aggregates" / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"
        # as three partitions' files, each with its own dictionary and codec (the setting
        # [aggregate] parquet_compression may change between two workers' restarts)
        for part, codec in enumerate(("snappy", "zstd", "none")):
            table = pa.Table.from_pandas(
                rows.iloc[part::3][AGGREGATE_SCHEMA.names],
                schema=AGGREGATE_SCHEMA,
                preserve_index=False,
            )
            name = f"p{part:04d}-{part:012d}-{part:012d}.parquet"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / name, compression=None if codec == "none" else codec)
    names = feature_names(sensors, slow=["temperature"])  # a change from the window before
    for since, until in ((T0, T0 + pd.Timedelta(hours=3)), (T0 + pd.Timedelta(hours=2), None)):
        end = until or since + pd.Timedelta(hours=1)
        cube = cube_of(tmp_path, since, end, 60_000)
        chosen = frame[(frame["window_start"] >= since) & (frame["window_start"] < end)]
        expected = pivot_by_device(chosen)
        assert cube.devices == sorted(expected)
        for device_id, rows in expected.items():
            fast = cube.matrix(device_id, names)
            slow = device_matrix(device_id, rows, names, 60_000)
            np.testing.assert_array_equal(fast.window_start, slow.window_start)
            np.testing.assert_array_equal(fast.matrix, slow.matrix)
            assert cube.sensors(device_id) == sensors_of(rows)
            assert cube.window_count(device_id) == len(rows)
        if columns == "per device":
            assert cube.cells.shape[1] == 3  # each device's own three sensors
        windows, counts = cube.gather(cube.devices, names)  # many devices at once
        for device_id, matrix, count in zip(cube.devices, windows, counts, strict=True):
            np.testing.assert_array_equal(matrix[:count], cube.matrix(device_id, names).matrix)
            assert np.isnan(matrix[count:]).all()


def test_cube_refuses_a_file_with_rows_without_a_device(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fleetwatch.errors import InvalidInputError
    from fleetwatch.storage.parquet import AGGREGATE_SCHEMA
    from tests.unit.scoring.conftest import T0, cube_of, synthetic_windows

    frame = synthetic_windows(hours=1)
    frame.loc[frame.index[:3], "device_id"] = None
    table = pa.Table.from_pandas(
        frame[AGGREGATE_SCHEMA.names], schema=AGGREGATE_SCHEMA, preserve_index=False
    )
    folder = tmp_path / "aggregates" / f"date={T0:%Y-%m-%d}" / f"hour={T0:%H}"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "p0000-000000000000-000000000001.parquet")
    with pytest.raises(InvalidInputError, match="3 rows without a"):
        cube_of(tmp_path, T0, T0.replace(hour=1), 60_000)


def test_cubes_read_in_two_threads_at_once_are_the_cubes_read_alone(tmp_path: Path) -> None:
    """`fleetwatch schedule` may score and retrain at the same moment, in two threads."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.unit.scoring.conftest import T0, cube_of, synthetic_windows, write_windows

    folders = [tmp_path / "a", tmp_path / "b"]
    for seed, folder in enumerate(folders):
        write_windows(folder, synthetic_windows(hours=3, seed=seed))
    until = T0.replace(hour=3)
    names = feature_names(["pressure", "temperature", "vibration"])

    def matrices(folder: Path) -> dict[str, np.ndarray]:
        cube = cube_of(folder, T0, until, 60_000)
        return {d: cube.matrix(d, names).matrix for d in cube.devices}

    alone = [matrices(folder) for folder in folders]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(matrices, folders * 25))
    for index, got in enumerate(together):
        expected = alone[index % 2]
        assert got.keys() == expected.keys()
        for device_id, matrix in expected.items():
            np.testing.assert_array_equal(got[device_id], matrix)


def test_a_task_reads_only_its_row_groups_and_gets_its_devices_windows(tmp_path: Path) -> None:
    """``device_pieces`` finds which files hold which devices (as pandas says), and a cube
    read from just those pieces holds the same windows as one read from every file."""
    import pandas as pd

    from fleetwatch.scoring.features import device_pieces, read_cube
    from fleetwatch.storage.layout import DataLayout
    from tests.unit.scoring.conftest import T0, synthetic_windows
    from tests.unit.storage.test_compaction import write_in_pieces

    write_in_pieces(tmp_path, synthetic_windows(hours=1))
    layout = DataLayout.open(tmp_path)
    files = [item.key for item in layout.hour_data("aggregates", T0)]
    pieces, where = device_pieces(layout.store, files)
    holders: dict[str, set[int]] = {}
    for index, (key, group) in enumerate(pieces):
        assert group == 0  # one row group per file written by the aggregator
        for device in pd.read_parquet(tmp_path / key)["device_id"].unique():
            holders.setdefault(device, set()).add(index)
    assert {d: set(i) for d, i in where.items()} == holders
    mine = ["pump-01", "pump-04"]
    chosen = [pieces[i] for i in sorted({i for d in mine for i in where[d]})]
    assert len(chosen) < len(pieces)
    until = T0 + pd.Timedelta(hours=1).to_pytimedelta()
    partial = read_cube(layout.store, chosen, T0, until, 60_000, devices=mine)
    whole = read_cube(layout.store, files, T0, until, 60_000, devices=mine)
    for device in mine:
        for sensor in ("pressure", "vibration"):
            a = partial.matrix(device, [f"{sensor}__mean", f"{sensor}__std"]).matrix
            b = whole.matrix(device, [f"{sensor}__mean", f"{sensor}__std"]).matrix
            np.testing.assert_array_equal(a, b)
