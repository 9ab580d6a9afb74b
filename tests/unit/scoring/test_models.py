"""One behaviour suite over every model kind: fast scores equal scikit-learn, round-trip, tamper."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
import pytest

from fleetwatch.scoring.features import feature_names
from fleetwatch.scoring.models import decision_from_arrays, new_model
from fleetwatch.scoring.registry import ModelIntegrityError, ModelRegistry

KINDS = ["device", "per_sensor"]
NAMES = feature_names(["a", "b", "c"])


def data(seed: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(rows, len(NAMES)))
    for i, name in enumerate(NAMES):
        if name.endswith("present"):
            matrix[:, i] = 10.0
    return matrix


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kernel", ["rbf", "linear", "poly", "sigmoid"])
def test_fast_scores_equal_sklearn_decision_function(kind: str, kernel: str) -> None:
    model = new_model(kind, 0.05, "scale", kernel)  # type: ignore[arg-type]
    model.fit(data(0, 300), NAMES)
    probe = data(1, 80)
    probe[::7, 0] = np.nan  # a sensor that did not report
    probe[::7, NAMES.index("a__present")] = 0.0
    fast = decision_from_arrays(kind, model.arrays(), probe)  # type: ignore[arg-type]
    np.testing.assert_allclose(fast, model.sklearn_decision(probe), rtol=0, atol=1e-9)


def test_models_scored_together_whose_support_vectors_use_other_features() -> None:
    """``decide`` scores a group of devices at once; each model's support vectors keep only
    the features that are not 0 in all of them, so models of one group may keep different
    ones (or none), and a kernel other than RBF skips the RBF extension."""
    from fleetwatch.scoring.models import DeviceModel, SvmParams, decide

    always, sometimes, constant = data(0, 300), data(4, 300), np.ones((300, len(NAMES)))
    sometimes[::5, NAMES.index("a__present")] = 0.0  # sensor a missing in a fifth
    sometimes[::5, NAMES.index("a__mean")] = np.nan
    models = []
    for training, kernel in (
        (always, "rbf"),
        (sometimes, "rbf"),
        (constant, "rbf"),
        (always, "linear"),
    ):
        model = DeviceModel(0.05, "scale", kernel)
        model.fit(training, NAMES)
        models.append(model)
    scorers = [SvmParams.from_pipeline(m.pipeline).scorer() for m in models]
    presents = [NAMES.index(n) for n in NAMES if n.endswith("present")]
    assert not set(presents) & set(scorers[0].columns.tolist())
    assert NAMES.index("a__present") in scorers[1].columns.tolist()
    assert len(scorers[2].columns) == 0
    counts = np.array([80, 61, 80, 17])
    probes = [data(10 + i, int(count)) for i, count in enumerate(counts)]
    probes[1][::3, NAMES.index("a__present")] = 0.0
    windows = np.full((len(models), 80, len(NAMES)), np.nan)
    for i, probe in enumerate(probes):
        windows[i, : len(probe)] = probe
    for model, probe, fast in zip(models, probes, decide(scorers, windows, counts), strict=True):
        np.testing.assert_allclose(fast, model.sklearn_decision(probe), rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_scores_the_same_after_reload(kind: str, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    model = new_model(kind, 0.05, "scale", "rbf")  # type: ignore[arg-type]
    model.fit(data(2, 200), NAMES)
    when = datetime(2026, 11, 22, tzinfo=UTC)
    saved = registry.save("pump-1", model, NAMES, when, when, 200, {"nu": 0.05})
    probe = data(3, 50)
    loaded_kind, arrays = ModelRegistry.load_params(registry.active("pump-1"))  # type: ignore[arg-type]
    np.testing.assert_allclose(
        decision_from_arrays(loaded_kind, arrays, probe), model.sklearn_decision(probe), atol=1e-9
    )
    estimator = ModelRegistry.load_estimator(saved)
    if kind == "device":
        np.testing.assert_allclose(
            estimator.decision_function(probe), model.sklearn_decision(probe), atol=1e-12
        )
    assert saved.manifest["features"] == NAMES
    assert set(saved.manifest["libraries"]) >= {"scikit-learn", "numpy", "python"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("file_name", ["model.joblib", "params.bin"])
def test_a_tampered_file_is_never_loaded(
    kind: str, file_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path)
    model = new_model(kind, 0.05, "scale", "rbf")  # type: ignore[arg-type]
    model.fit(data(4, 100), NAMES)
    when = datetime(2026, 11, 22, tzinfo=UTC)
    saved = registry.save("pump-1", model, NAMES, when, when, 100, {})
    with (saved.path / file_name).open("ab") as handle:
        handle.write(b"\x00evil")
    loads: list[object] = []
    monkeypatch.setattr(joblib, "load", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(ModelIntegrityError, match="does not match the sha256"):
        if file_name == "model.joblib":
            ModelRegistry.load_estimator(saved)
        else:
            ModelRegistry.load_params(saved)
    assert loads == []  # nothing was unpickled or parsed


def test_versions_activate_and_rollback(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    when = datetime(2026, 11, 22, tzinfo=UTC)
    for seed in range(3):
        model = new_model("device", 0.05, "scale", "rbf")
        model.fit(data(seed, 60), NAMES)
        registry.save("pump-1", model, NAMES, when, when, 60, {}, activate=seed < 2)
    assert [v.version for v in registry.versions("pump-1")] == ["v0001", "v0002", "v0003"]
    assert registry.active_version("pump-1") == "v0002"  # the third was not activated
    registry.activate("pump-1", "v0003")
    assert registry.rollback("pump-1") == "v0002"
    assert registry.active_version("pump-1") == "v0002"
    with pytest.raises(Exception, match="not 1-64"):
        registry.active("../../etc")


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

    from fleetwatch.scoring import features
    from fleetwatch.scoring.features import read_cube
    from fleetwatch.storage.parquet import AGGREGATE_SCHEMA, write_table
    from tests.unit.scoring.conftest import T0, synthetic_windows
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
            write_table(table, folder / name, codec)
    names = feature_names(sensors)
    for since, until in ((T0, T0 + pd.Timedelta(hours=3)), (T0 + pd.Timedelta(hours=2), None)):
        end = until or since + pd.Timedelta(hours=1)
        cube = read_cube(tmp_path, since, end, 60_000)
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

    from fleetwatch.errors import InvalidInputError
    from fleetwatch.scoring.features import read_cube
    from fleetwatch.storage.parquet import AGGREGATE_SCHEMA, write_table
    from tests.unit.scoring.conftest import T0, synthetic_windows

    frame = synthetic_windows(hours=1)
    frame.loc[frame.index[:3], "device_id"] = None
    table = pa.Table.from_pandas(
        frame[AGGREGATE_SCHEMA.names], schema=AGGREGATE_SCHEMA, preserve_index=False
    )
    folder = tmp_path / "aggregates" / f"date={T0:%Y-%m-%d}" / f"hour={T0:%H}"
    write_table(table, folder / "p0000-000000000000-000000000001.parquet")
    with pytest.raises(InvalidInputError, match="3 rows without a"):
        read_cube(tmp_path, T0, T0.replace(hour=1), 60_000)


def test_cubes_read_in_two_threads_at_once_are_the_cubes_read_alone(tmp_path: Path) -> None:
    """`fleetwatch schedule` may score and retrain at the same moment, in two threads."""
    from concurrent.futures import ThreadPoolExecutor

    from fleetwatch.scoring.features import read_cube
    from tests.unit.scoring.conftest import T0, synthetic_windows, write_windows

    folders = [tmp_path / "a", tmp_path / "b"]
    for seed, folder in enumerate(folders):
        write_windows(folder, synthetic_windows(hours=3, seed=seed))
    until = T0.replace(hour=3)
    names = feature_names(["pressure", "temperature", "vibration"])

    def matrices(folder: Path) -> dict[str, np.ndarray]:
        cube = read_cube(folder, T0, until, 60_000)
        return {d: cube.matrix(d, names).matrix for d in cube.devices}

    alone = [matrices(folder) for folder in folders]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(matrices, folders * 25))
    for index, got in enumerate(together):
        expected = alone[index % 2]
        assert got.keys() == expected.keys()
        for device_id, matrix in expected.items():
            np.testing.assert_array_equal(got[device_id], matrix)
