"""Scoring runs: correctness against scikit-learn, idempotence, and every failure mode."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError
from fleetwatch.scheduler.service import pending_now
from fleetwatch.scoring.kinds import DeviceModel, kind_named
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.scoring.score import score_hour
from fleetwatch.scoring.train import train
from fleetwatch.storage.duck import query
from fleetwatch.storage.layout import DataLayout
from tests.unit.scoring.conftest import DEVICES, T0, settings_for
from tests.unit.scoring.reference import device_matrix, pivot_by_device, read_windows
from tests.unit.scoring.tamper import append_record, edit_manifest, republish, rewrite_row

HOUR3 = T0 + pd.Timedelta(hours=2).to_pytimedelta()


def db(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.data_dir / "fleetwatch.duckdb"), read_only=True) as c:
        return c.execute(sql).fetchall()


def reference_scores(registry: ModelRegistry, model: Any, matrix: np.ndarray) -> np.ndarray:
    """scikit-learn's own decision function (from model.joblib), on the scores' scale (NaN
    where it is at its floor)."""
    estimator = registry.load_estimator(model)
    reference = kind_named(model.manifest["kind"])()
    reference.restore(estimator)
    return np.asarray(reference.reference_scores(matrix))


def in_parts(settings: Settings, rows: int) -> Settings:
    """``settings`` with ``[score] part_rows`` set: hours of more rows are scored in parts."""
    return dataclasses.replace(settings, score=dataclasses.replace(settings.score, part_rows=rows))


def assert_scores_equal_sklearn(settings: Settings, skip: frozenset[str] = frozenset()) -> None:
    """Every stored score equals scikit-learn's own decision function (from model.joblib)
    wherever that is not at its floor; the others are below every threshold."""
    frame = read_windows(settings.data_dir, HOUR3, HOUR3 + pd.Timedelta(hours=1).to_pytimedelta())
    registry = ModelRegistry.of(settings.data_dir)
    for device_id, rows in pivot_by_device(frame).items():
        if device_id in skip:
            continue
        model = registry.active(device_id)
        assert model is not None
        matrix = device_matrix(device_id, rows, model.manifest["features"], 60_000).matrix
        expected = reference_scores(registry, model, matrix)
        sql = "SELECT score FROM scores WHERE device_id = ? ORDER BY window_start"
        with duckdb.connect(str(settings.data_dir / "fleetwatch.duckdb"), read_only=True) as c:
            got = np.array([r[0] for r in c.execute(sql, [device_id]).fetchall()])
        there = np.isfinite(expected)
        np.testing.assert_allclose(got[there], expected[there], rtol=0, atol=1e-9)
        assert (got[~there] < model.manifest["threshold"]).all()


def test_scores_equal_sklearn_on_the_same_features(trained: Settings) -> None:
    result = score_hour(trained, HOUR3, progress=False)
    assert result.status == "succeeded" and result.devices_scored == len(DEVICES)
    assert_scores_equal_sklearn(trained)
    expected = expected_anomalies(trained)
    flagged = db(trained, "SELECT device_id, epoch_ms(window_start) FROM anomalies")
    assert set(flagged) == expected and result.anomalies == len(expected) > 0


def expected_anomalies(settings: Settings) -> set[tuple[str, int]]:
    """The windows of the third hour scikit-learn scores below each model's own threshold."""
    frame = read_windows(settings.data_dir, HOUR3, HOUR3 + pd.Timedelta(hours=1).to_pytimedelta())
    registry = ModelRegistry.of(settings.data_dir)
    expected = set()
    for device_id, rows in pivot_by_device(frame).items():
        model = registry.active(device_id)
        assert model is not None
        matrix = device_matrix(device_id, rows, model.manifest["features"], 60_000)
        scores = reference_scores(registry, model, matrix.matrix)
        below = np.isnan(scores) | (scores < model.manifest["threshold"])
        expected |= {(device_id, int(start)) for start in matrix.window_start[below]}
    return expected


def test_a_fleet_of_mixed_model_kinds(trained: Settings) -> None:
    """Per-sensor and covariance models are scored next to single-pipeline ones, each like
    scikit-learn (its own estimator from model.joblib)."""
    until = T0 + pd.Timedelta(hours=2).to_pytimedelta()
    for devices, options in (
        (["pump-01", "pump-02"], {"per_sensor": True}),
        (["pump-03", "pump-04"], {"model_kind": "covariance"}),
        (["pump-05"], {"model_kind": "auto"}),  # three sensors: covariance
    ):
        chosen = dataclasses.replace(trained, train=dataclasses.replace(trained.train, **options))
        train(chosen, T0, until, devices)
    registry = ModelRegistry.of(trained.data_dir)
    kinds = {d: registry.active(d).manifest["kind"] for d in DEVICES}  # type: ignore[union-attr]
    assert kinds == {
        "pump-00": "device", "pump-01": "per_sensor", "pump-02": "per_sensor",
        "pump-03": "covariance", "pump-04": "covariance", "pump-05": "covariance",
        "pump-06": "device", "pump-07": "device",
    }  # fmt: skip
    result = score_hour(trained, HOUR3, progress=False)
    assert result.devices_scored == len(DEVICES) and result.devices_failed == 0
    assert_scores_equal_sklearn(trained)


def test_rescoring_an_hour_replaces_its_rows(trained: Settings) -> None:
    first = score_hour(trained, HOUR3, progress=False)
    second = score_hour(trained, HOUR3, progress=False)
    rows = db(trained, "SELECT count(*), count(DISTINCT run_id) FROM scores")
    assert rows == [(len(DEVICES) * 60, 1)]
    assert db(trained, "SELECT run_id FROM scores LIMIT 1") == [(second.run_id,)]
    assert len(db(trained, "SELECT * FROM runs")) == 2 and first.run_id != second.run_id


def test_output_anomalies_stores_only_the_anomalies(trained: Settings) -> None:
    every = score_hour(trained, HOUR3, progress=False)
    expected = db(
        trained, "SELECT device_id, window_start FROM scores WHERE is_anomaly ORDER BY 1, 2"
    )
    only = score_hour(settings_for(trained.data_dir, output="anomalies"), HOUR3, progress=False)
    got = db(trained, "SELECT device_id, window_start FROM scores ORDER BY 1, 2")
    assert got == expected and len(got) == every.anomalies == only.anomalies > 0
    assert only.rows_scored == every.rows_scored == len(DEVICES) * 60


def test_no_model_and_silent_devices(trained: Settings) -> None:
    shutil.rmtree(trained.data_dir / "models")  # pump-05: data, never trained
    train(trained, T0, HOUR3, [d for d in DEVICES if d != "pump-05"])
    registry = ModelRegistry.of(trained.data_dir)
    silent_model = registry.active("pump-06")
    assert silent_model is not None
    frame = read_windows(trained.data_dir, HOUR3, HOUR3 + pd.Timedelta(hours=1).to_pytimedelta())
    assert "pump-06" in set(frame["device_id"])
    # a device with a model but no data this hour: remove pump-06's windows from the hour
    for path in (trained.data_dir / "aggregates").glob("date=*/hour=02/*.parquet"):
        part = pd.read_parquet(path)
        part = part[part["device_id"] != "pump-06"]
        import pyarrow as pa
        import pyarrow.parquet as pq

        from fleetwatch.storage.parquet import AGGREGATE_SCHEMA

        pq.write_table(
            pa.Table.from_pandas(
                part[AGGREGATE_SCHEMA.names], schema=AGGREGATE_SCHEMA, preserve_index=False
            ),
            path,
        )
    result = score_hour(trained, HOUR3, progress=False)
    assert (result.devices_without_model, result.devices_silent) == (1, 1)
    outcomes = dict(db(trained, "SELECT device_id, outcome FROM device_runs"))
    assert outcomes["pump-05"] == "no_model" and outcomes["pump-06"] == "silent"
    assert outcomes["pump-00"] == "scored"


def test_a_tampered_model_fails_its_device_only(trained: Settings) -> None:
    model = ModelRegistry.of(trained.data_dir).active("pump-02")
    assert model is not None
    rewrite_row(trained.data_dir, model, params=lambda blob: blob + b"tampered")
    result = score_hour(trained, HOUR3, progress=False)
    assert result.devices_failed == 1 and result.devices_scored == len(DEVICES) - 1
    error = db(trained, "SELECT error FROM device_runs WHERE device_id = 'pump-02'")[0][0]
    assert "does not match the sha256" in error


def test_a_malformed_model_fails_only_its_device_among_those_scored_with_it(
    trained: Settings,
) -> None:
    """Devices that share a feature list are imputed and scaled together; a model whose
    support vectors do not fit its features (a valid file, a wrong shape) fails alone."""
    registry = ModelRegistry.of(trained.data_dir)
    good = registry.active("pump-02")
    assert good is not None
    features = good.manifest["features"]

    class WrongShape(DeviceModel):
        def arrays(self) -> dict[str, np.ndarray]:
            arrays = super().arrays()
            arrays["sv"] = np.hstack([arrays["sv"], np.ones((len(arrays["sv"]), 1))])
            return arrays

    model = WrongShape()
    model.fit(np.random.default_rng(0).normal(size=(50, len(features))), features)
    registry.save("pump-02", model, features, T0, T0, 50, {})
    result = score_hour(trained, HOUR3, progress=False)  # 3 devices a task, scored together
    assert result.devices_failed == 1 and result.devices_scored == len(DEVICES) - 1
    error = db(trained, "SELECT error FROM device_runs WHERE device_id = 'pump-02'")[0][0]
    assert error.startswith("ValueError")
    assert_scores_equal_sklearn(trained, skip=frozenset({"pump-02"}))
    assert db(trained, "SELECT count(*) FROM scores WHERE device_id = 'pump-02'") == [(0,)]


def test_an_active_file_pointing_outside_its_device_fails_that_device(
    trained: Settings,
) -> None:
    append_record(trained.data_dir, [["activate", "pump-03", "../pump-00/v0001", "0" * 64]])
    result = score_hour(trained, HOUR3, progress=False)
    assert result.devices_failed == 1 and result.devices_scored == len(DEVICES) - 1
    error = db(trained, "SELECT error FROM device_runs WHERE device_id = 'pump-03'")[0][0]
    assert "is not 1-64" in error and "activate a version to mend it" in error
    ModelRegistry.of(trained.data_dir).activate("pump-03", "v0001")
    assert score_hour(trained, HOUR3, progress=False).devices_failed == 0


def test_a_model_that_raises(trained: Settings) -> None:
    model = ModelRegistry.of(trained.data_dir).active("pump-01")
    assert model is not None

    def narrower(manifest: dict[str, Any]) -> None:  # now the matrix has the wrong width
        manifest["features"] = manifest["features"][:-2]

    republish(trained.data_dir, model, narrower)  # as by someone who meant it
    result = score_hour(trained, HOUR3, progress=False)
    assert result.devices_failed == 1
    error = db(trained, "SELECT error FROM device_runs WHERE device_id = 'pump-01'")[0][0]
    assert "ValueError" in error


def test_a_hanging_task_times_out_and_only_its_device_fails(trained: Settings) -> None:
    settings = settings_for(trained.data_dir, task_timeout="1s", max_retries=1)

    def hook(device_id: str) -> None:
        if device_id == "pump-04":
            time.sleep(60)

    started = time.monotonic()
    result = score_hour(settings, HOUR3, hook=hook, progress=False)
    assert time.monotonic() - started < 20
    assert result.devices_failed == 1 and result.devices_scored == len(DEVICES) - 1
    error = db(settings, "SELECT error FROM device_runs WHERE device_id = 'pump-04'")[0][0]
    assert "timed out after 1s" in error and "2 attempts" in error


def test_a_killed_worker_costs_only_its_task_which_is_retried(
    trained: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "killed-once"

    def hook(device_id: str) -> None:
        if device_id == "pump-01" and not marker.exists():
            marker.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)

    result = score_hour(trained, HOUR3, hook=hook, progress=False)
    assert marker.exists()
    assert result.status == "succeeded" and result.devices_scored == len(DEVICES)

    def always(device_id: str) -> None:
        if device_id == "pump-01":
            os.kill(os.getpid(), signal.SIGKILL)

    result = score_hour(trained, HOUR3, hook=always, progress=False)
    assert result.devices_failed == 1 and result.devices_scored == len(DEVICES) - 1
    error = db(
        trained, "SELECT error FROM device_runs WHERE device_id = 'pump-01' AND outcome = 'failed'"
    )[0][0]
    assert "killed by signal 9" in error


def test_error_threshold_aborts_and_keeps_the_old_scores(trained: Settings) -> None:
    good = score_hour(trained, HOUR3, progress=False)
    settings = settings_for(trained.data_dir, error_threshold=0, max_retries=0)

    def hook(device_id: str) -> None:
        raise RuntimeError("model exploded")

    result = score_hour(settings, HOUR3, hook=hook, progress=False)
    assert result.status == "aborted" and "error-threshold" in (result.error or "")
    assert db(settings, "SELECT DISTINCT run_id FROM scores") == [(good.run_id,)]
    statuses = dict(db(settings, "SELECT run_id, status FROM runs"))
    assert statuses[result.run_id] == "aborted"


def test_pending_hours_are_the_unscored_ones(trained: Settings) -> None:
    assert [p.hour.hour for p in pending_now(trained)] == [0, 1, 2]
    score_hour(trained, HOUR3, progress=False)
    assert [p.hour.hour for p in pending_now(trained)] == [0, 1]


def test_sql_is_read_only_with_one_line_errors(trained: Settings) -> None:
    score_hour(trained, HOUR3, progress=False)
    layout = DataLayout.open(trained.data_dir)
    [result] = query(layout, "SELECT count(*) AS n FROM aggregates")
    assert result.rows == [(len(DEVICES) * 180 * 3 - 60,)]  # pump-07 lost a sensor
    for statement in (
        "DROP TABLE scores",
        "INSERT INTO runs (run_id) VALUES ('x')",
        "DELETE FROM scores",
        "COPY scores TO '/tmp/x.csv'",
        "ATTACH '/tmp/other.db'",
        "SELECT 1; DROP TABLE runs",
    ):
        with pytest.raises(FleetwatchError, match="read-only"):
            query(layout, statement)
    with pytest.raises(FleetwatchError, match=r"bad SQL|SQL error"):
        query(layout, "SELEC * FROM runs")
    with pytest.raises(FleetwatchError, match="SQL error"):
        query(layout, "SELECT * FROM no_such_table")
    assert len(db(trained, "SELECT * FROM scores")) == len(DEVICES) * 60


def test_cli_sql_one_line_error_and_formats(trained: Settings) -> None:
    score_hour(trained, HOUR3, progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    env["FLEETWATCH_DATA_DIR"] = str(trained.data_dir)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleetwatch", "sql", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    bad = run("DROP TABLE runs")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "read-only" in bad.stderr and "Traceback" not in bad.stderr
    good = run("SELECT count(*) AS n FROM scores", "--format", "csv")
    assert good.returncode == 0 and good.stdout == f"n\n{len(DEVICES) * 60}\n"


def test_queries_during_a_scoring_write_succeed(trained: Settings) -> None:
    """A writer holding the lock for a while: `fleetwatch sql` waits and then answers."""
    score_hour(trained, HOUR3, progress=False)
    path = trained.data_dir / "fleetwatch.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    env["FLEETWATCH_DATA_DIR"] = str(trained.data_dir)
    holding = threading.Event()

    def hold_the_lock() -> None:
        with duckdb.connect(str(path)) as writer:
            writer.execute("BEGIN TRANSACTION; DELETE FROM scores WHERE false;")
            holding.set()
            time.sleep(2)
            writer.execute("COMMIT")

    thread = threading.Thread(target=hold_the_lock)
    thread.start()
    holding.wait(10)
    # a separate process, as a user would run it; it must retry, not fail
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetwatch",
            "sql",
            "SELECT count(*) AS n FROM scores",
            "--format",
            "csv",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    thread.join()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(len(DEVICES) * 60)


def test_training_in_device_groups_fits_the_same_models(
    trained: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the training range a few devices at a time (bounded memory for big fleets)
    fits exactly the models of one read: same parameters, byte for byte."""
    import fleetwatch.scoring.features as features
    import fleetwatch.scoring.train as training

    registry = ModelRegistry.of(trained.data_dir)
    whole = {d: registry.active(d).manifest["sha256"]["params.bin"] for d in DEVICES}  # type: ignore[union-attr]
    monkeypatch.setattr(training, "READ_ROWS", 1000)  # about two devices per read
    reads: list[tuple[str, ...]] = []

    def read_cube(*args: Any, devices: list[str], **kwargs: Any) -> Any:
        reads.append(tuple(devices))
        return features.read_cube(*args, devices=devices, **kwargs)

    monkeypatch.setattr(training, "read_cube", read_cube)
    summary = train(trained, T0, T0 + pd.Timedelta(hours=2).to_pytimedelta())
    assert sorted(summary.trained) == DEVICES and not summary.failed
    # the slow-sensor judgement reads every group once; the fits read them again, but the
    # judgement's last read is kept for them: 2 x groups - 1 reads, no group read 3 times
    groups = set(reads)
    assert len(groups) >= 2 and len(reads) == 2 * len(groups) - 1
    assert sorted(d for group in groups for d in group) == DEVICES
    grouped = {d: registry.active(d).manifest["sha256"]["params.bin"] for d in DEVICES}  # type: ignore[union-attr]
    assert grouped == whole
    assert {registry.active_version(d) for d in DEVICES} == {"v0002"}
    summary = train(trained, T0, T0 + pd.Timedelta(hours=2).to_pytimedelta(), ["pump-01", "nope"])
    assert list(summary.trained) == ["pump-01"]
    assert summary.skipped == {"nope": "no windows in the training range"}


def test_a_range_of_up_to_twice_read_rows_is_read_once_and_published_per_group(
    trained: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two groups' windows are held at once anyway (the workers fit one while the next is
    read): a range of up to twice ``READ_ROWS`` rows is read once for the judgement and the
    fits; one row more and it is read in groups. Devices submitted a few at a time
    (``SUBMIT_DEVICES``) are still published as one run object a group, with the models of
    one read."""
    import fleetwatch.scoring.features as features
    import fleetwatch.scoring.train as training

    registry = ModelRegistry.of(trained.data_dir)
    whole = {d: registry.active(d).manifest["sha256"]["params.bin"] for d in DEVICES}  # type: ignore[union-attr]
    until = T0 + pd.Timedelta(hours=2).to_pytimedelta()
    layout = DataLayout.open(trained.data_dir)
    files = [item.key for item in layout.files_between(T0, until)]
    rows = sum(features.read_metadata(layout.store, key).num_rows for key in files)
    reads: list[tuple[str, ...]] = []

    def read_cube(*args: Any, devices: list[str], **kwargs: Any) -> Any:
        reads.append(tuple(devices))
        return features.read_cube(*args, devices=devices, **kwargs)

    monkeypatch.setattr(training, "read_cube", read_cube)
    monkeypatch.setattr(training, "SUBMIT_DEVICES", 3)
    runs = trained.data_dir / "models" / "runs"
    for read_rows, groups in (((rows + 1) // 2, 1), ((rows - 1) // 2, 2)):
        monkeypatch.setattr(training, "READ_ROWS", read_rows)
        reads.clear()
        before = set(runs.glob("*.parquet"))
        summary = train(trained, T0, until)
        assert sorted(summary.trained) == DEVICES and not summary.failed
        assert len(set(reads)) >= groups and (groups > 1 or reads == [tuple(DEVICES)])
        assert len(set(runs.glob("*.parquet")) - before) == len(set(reads))
        assert {d: registry.active(d).manifest["sha256"]["params.bin"] for d in DEVICES} == whole  # type: ignore[union-attr]


def test_the_fits_read_each_device_once_when_files_arrived_after_the_judgement(
    trained: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slow-sensor judgement's last group is kept for the fits. Files that arrive between
    the two reads (live data) change the row count, so the fits' groups are not the
    judgement's: a device of the kept group must not be read (fitted, saved) again."""
    import fleetwatch.scoring.train as training
    from fleetwatch.storage.parquet import PartitionedParquetSink, publish_staged
    from tests.unit.scoring.conftest import synthetic_windows

    monkeypatch.setattr(training, "READ_ROWS", 1000)  # about two devices per read
    layout = DataLayout.open(trained.data_dir)
    read = training.CubeReader(layout, 60_000)
    until = T0 + pd.Timedelta(hours=2).to_pytimedelta()
    judged = [part for part, _ in read(T0, until, DEVICES, keep=True)]
    assert sorted(d for part in judged for d in part) == DEVICES
    others = synthetic_windows(hours=2, seed=1)  # other devices' windows, in another file
    others["device_id"] = "other-" + others["device_id"]
    sink = PartitionedParquetSink(layout, "aggregates")
    sink.write(others, 1, "window_start")
    publish_staged(sink)
    fitted = [part for part, _ in read(T0, until, DEVICES, keep=False)]
    assert len(fitted) > len(judged)  # smaller groups now
    assert sorted(d for part in fitted for d in part) == DEVICES  # each device once


def test_training_in_device_groups_reads_only_the_row_groups_of_each_group(
    trained: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26 item 3, in training: a group of devices reads the row groups that hold them.
    Files sorted by device in small row groups: each read is about its devices' rows, not
    the whole range (before, every read was the whole range); the models are the same."""
    import pyarrow.parquet as pq

    import fleetwatch.scoring.features as features
    import fleetwatch.scoring.train as training
    from fleetwatch.storage.layout import DataLayout

    registry = ModelRegistry.of(trained.data_dir)
    whole = {d: registry.active(d).manifest["sha256"]["params.bin"] for d in DEVICES}  # type: ignore[union-attr]
    layout = DataLayout.open(trained.data_dir)
    until = T0 + pd.Timedelta(hours=2).to_pytimedelta()
    files = [Path(trained.data_dir) / item.key for item in layout.files_between(T0, until)]
    group_rows = 60
    for path in files:
        table = pq.read_table(path).sort_by([("device_id", "ascending"),
                                             ("window_start", "ascending")])  # fmt: skip
        pq.write_table(table, path, row_group_size=group_rows)
    monkeypatch.setattr(training, "READ_ROWS", 1000)  # about two devices per read
    reads: list[tuple[int, int]] = []  # (rows read, rows of its devices)

    def read_cube(store: Any, chosen: Any, *args: Any, devices: list[str], **kwargs: Any) -> Any:
        pieces = [(p, None) if isinstance(p, str) else p for p in chosen]
        read = 0
        for key, group in pieces:
            metadata = pq.ParquetFile(Path(trained.data_dir) / key).metadata
            read += metadata.num_rows if group is None else metadata.row_group(group).num_rows
        own = sum(pq.read_table(path, filters=[("device_id", "in", devices)]).num_rows
                  for path in files)  # fmt: skip
        reads.append((read, own))
        return features.read_cube(store, chosen, *args, devices=devices, **kwargs)

    monkeypatch.setattr(training, "read_cube", read_cube)
    summary = train(trained, T0, until)
    assert sorted(summary.trained) == DEVICES and not summary.failed
    assert len(reads) >= 3
    for read, own in reads:  # at most a row group a file shared with a neighbouring group
        assert own <= read <= own + 2 * len(files) * group_rows
    grouped = {d: registry.active(d).manifest["sha256"]["params.bin"] for d in DEVICES}  # type: ignore[union-attr]
    assert grouped == whole


def test_a_tampered_manifest_fails_its_device_instead_of_flagging_everything(
    trained: Settings,
) -> None:
    """Before: a manifest threshold edited to 1e9 made every window an anomaly, no error."""
    model = ModelRegistry.of(trained.data_dir).active("pump-04")
    assert model is not None

    def threshold(manifest: dict[str, Any]) -> None:
        manifest["threshold"] = 1e9

    rewrite_row(trained.data_dir, model, manifest=edit_manifest(threshold))
    result = score_hour(trained, HOUR3, progress=False)
    assert result.devices_failed == 1 and result.devices_scored == len(DEVICES) - 1
    error = db(trained, "SELECT error FROM device_runs WHERE device_id = 'pump-04'")[0][0]
    assert "manifest.json does not match" in error
    assert db(trained, "SELECT count(*) FROM anomalies WHERE device_id = 'pump-04'") == [(0,)]


def test_windows_whose_score_is_not_finite_are_anomalous_with_a_reason(
    trained: Settings,
) -> None:
    """Issue 23, defect 7: readings of 1e300 make a device's features overflow; its windows
    used to be stored with NaN scores and no anomaly. Now each is anomalous, normalised to
    -inf (the most anomalous), with the sensor that made it so."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fleetwatch.storage.parquet import AGGREGATE_SCHEMA

    hour = T0 + pd.Timedelta(hours=2).to_pytimedelta()
    huge = (hour + pd.Timedelta(minutes=10).to_pytimedelta(), 10)  # ten windows from 02:10
    for path in (trained.data_dir / "aggregates").glob("date=*/hour=02/*.parquet"):
        part = pd.read_parquet(path)
        rows = (
            (part["device_id"] == "pump-05")
            & (part["sensor"] == "pressure")
            & (part["window_start"] >= pd.Timestamp(huge[0]))
            & (part["window_start"] < pd.Timestamp(huge[0]) + pd.Timedelta(minutes=huge[1]))
        )
        part.loc[rows, ["mean", "min", "max", "std"]] = 1e300
        table = pa.Table.from_pandas(
            part[AGGREGATE_SCHEMA.names], schema=AGGREGATE_SCHEMA, preserve_index=False
        )
        pq.write_table(table, path)
    score_hour(trained, hour, progress=False)
    rows = db(
        trained,
        "SELECT score, is_anomaly, score_normalized, top_sensors FROM scores "  # noqa: S608
        f"WHERE device_id = 'pump-05' AND window_start >= '{huge[0].isoformat()}' "
        f"ORDER BY window_start LIMIT {huge[1]}",
    )
    assert len(rows) == huge[1]
    for score, anomalous, normalized, top in rows:
        assert not np.isfinite(score) or anomalous
        assert anomalous and normalized == -np.inf
        assert [entry["sensor"] for entry in top] == ["pressure"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_a_threshold_that_is_not_finite_is_refused(trained: Settings, value: str) -> None:
    from fleetwatch.cli import main

    before = ModelRegistry.of(trained.data_dir).active_version("pump-01")
    code = main(
        ["models", "set-threshold", "pump-01", "--value", value, "--data-dir",
         str(trained.data_dir)]
    )  # fmt: skip
    assert code == 2
    assert ModelRegistry.of(trained.data_dir).active_version("pump-01") == before


def test_an_hour_larger_than_one_read_is_scored_in_parts_with_the_same_rows(
    trained: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26: an hour of more rows than ``[score] part_rows`` is read and scored a part of its
    devices at a time (the scoring process never holds the whole hour): the stored rows are
    scikit-learn's, and the run's record is the one a whole read gives."""
    import fleetwatch.scoring.score as score_module

    whole = score_hour(trained, HOUR3, progress=False)
    once = db(trained, "SELECT device_id, window_start, score, is_anomaly, top_sensors "
              "FROM scores ORDER BY 1, 2")  # fmt: skip
    read: list[list[str] | None] = []
    original = score_module.read_cube

    def counted(*args: Any, **kwargs: Any) -> Any:
        read.append(kwargs.get("devices"))
        return original(*args, **kwargs)

    monkeypatch.setattr(score_module, "read_cube", counted)
    rows = len(DEVICES) * 60 * 3  # 3 sensors a device: the smallest parts hold 2 devices
    parted = score_hour(in_parts(trained, rows // 3), HOUR3, progress=False)
    assert len(read) >= 3 and all(part and len(part) < len(DEVICES) for part in read)
    assert sorted(d for part in read for d in part or ()) == sorted(DEVICES)  # each once
    again = db(trained, "SELECT device_id, window_start, score, is_anomaly, top_sensors "
               "FROM scores ORDER BY 1, 2")  # fmt: skip
    assert again == once
    assert_scores_equal_sklearn(trained)
    fields = ("status", "devices_total", "devices_scored", "devices_failed", "rows_scored",
              "anomalies")  # fmt: skip
    assert [getattr(parted, f) for f in fields] == [getattr(whole, f) for f in fields]


def test_each_part_of_an_hour_reads_only_the_row_groups_of_its_devices(
    trained: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26 item 3: a part reads the row groups that hold its devices (found from the
    device column), not every file of the hour with the other devices' rows thrown away. With
    files sorted by device (as ``import --backfill`` writes them), the parts together read the
    hour about once; before, each part read all of it. The scores are scikit-learn's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import fleetwatch.scoring.score as score_module
    from fleetwatch.storage.layout import DataLayout

    layout = DataLayout.open(trained.data_dir)
    hour = layout.hour_data("aggregates", HOUR3)
    group_rows = 60  # a device's hour is 180 rows: three row groups a device
    for item in hour:  # the same files, their rows sorted by device, in small row groups
        path = Path(trained.data_dir) / item.key
        table = pq.read_table(path)
        table = table.sort_by([("device_id", "ascending"), ("window_start", "ascending")])
        pq.write_table(pa.Table.from_batches(table.to_batches(), table.schema), path,
                       row_group_size=group_rows)  # fmt: skip
    whole_rows = sum(pq.ParquetFile(Path(trained.data_dir) / item.key).metadata.num_rows
                     for item in hour)  # fmt: skip
    read_rows: list[int] = []
    reads = 0
    original = score_module.read_cube

    def counted(store: Any, files: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        for item in files:
            metadata = pq.ParquetFile(Path(trained.data_dir) / (
                item if isinstance(item, str) else item[0])).metadata  # fmt: skip
            read_rows.append(metadata.num_rows if isinstance(item, str)
                             else metadata.row_group(item[1]).num_rows)  # fmt: skip
        return original(store, files, *args, **kwargs)

    monkeypatch.setattr(score_module, "read_cube", counted)
    result = score_hour(in_parts(trained, whole_rows // 3), HOUR3, progress=False)
    assert result.status == "succeeded" and result.devices_scored == len(DEVICES)
    # at most one row group a file shared by two neighbouring parts
    assert reads >= 3
    assert whole_rows <= sum(read_rows) <= whole_rows + reads * len(hour) * group_rows
    assert_scores_equal_sklearn(trained)


def test_parts_of_an_hour_in_kafka_partitions_files_follow_the_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator writes each Kafka partition's windows in files of their own, and a
    partition's devices are not neighbours by id (the key's hash spreads them). An hour in
    parts keeps a partition's devices together, so each part reads its partition's files: the
    hour about once in all, not once a part. The scores are scikit-learn's."""
    import pyarrow.parquet as pq

    import fleetwatch.scoring.score as score_module
    from fleetwatch.storage.parquet import PartitionedParquetSink, publish_staged
    from tests.unit.scoring.conftest import set_watermark, synthetic_windows

    frame = synthetic_windows()
    data = tmp_path / "data"
    sink = PartitionedParquetSink(DataLayout.open(data), "aggregates")
    for partition in (0, 1):  # even devices in one, odd in the other
        chosen = [d for i, d in enumerate(DEVICES) if i % 2 == partition]
        sink.write(frame[frame["device_id"].isin(chosen)], partition, "window_start")
    publish_staged(sink)
    settings = settings_for(data)
    train(settings, T0, HOUR3)
    set_watermark(settings, HOUR3 + pd.Timedelta(hours=1).to_pytimedelta())
    hour = DataLayout.open(data).hour_data("aggregates", HOUR3)
    assert len(hour) == 2
    whole_rows = sum(pq.ParquetFile(data / item.key).metadata.num_rows for item in hour)
    read_rows: list[int] = []
    original = score_module.read_cube

    def counted(store: Any, files: Any, *args: Any, **kwargs: Any) -> Any:
        for key, group in files:
            read_rows.append(pq.ParquetFile(data / key).metadata.row_group(group).num_rows)
        return original(store, files, *args, **kwargs)

    monkeypatch.setattr(score_module, "read_cube", counted)
    result = score_hour(in_parts(settings, whole_rows // 2), HOUR3, progress=False)
    assert result.status == "succeeded" and result.devices_scored == len(DEVICES)
    assert sum(read_rows) == whole_rows  # each partition's file read once
    assert_scores_equal_sklearn(settings)


def test_the_error_threshold_counts_failures_over_every_part(
    trained: Settings,
) -> None:
    rows = len(DEVICES) * 60 * 3 // 3
    good = score_hour(in_parts(trained, rows), HOUR3, progress=False)
    failing = sorted(DEVICES)[::2]  # one failure in each part: more than 1 in all
    settings = settings_for(trained.data_dir, error_threshold=1, max_retries=0, part_rows=rows)

    def hook(device_id: str) -> None:
        if device_id in failing:
            raise RuntimeError("model exploded")

    result = score_hour(settings, HOUR3, hook=hook, progress=False)
    assert result.status == "aborted" and "error-threshold" in (result.error or "")
    assert db(settings, "SELECT DISTINCT run_id FROM scores") == [(good.run_id,)]


def test_an_hour_of_other_windows_than_window_is_refused_and_nothing_recorded(
    trained: Settings,
) -> None:
    """Windows of 60 s scored as 10 s ones (a configuration that differs from the
    aggregation's) would land in the wrong grid: one line that names the fix, no run."""
    other = dataclasses.replace(
        trained, aggregate=dataclasses.replace(trained.aggregate, window=10.0)
    )
    with pytest.raises(FleetwatchError, match=r"60s windows, not --window 10s: pass --window 60s"):
        score_hour(other, HOUR3, progress=False)
    database = DataLayout.open(trained.data_dir).database
    assert not database.exists() or db(trained, "SELECT count(*) FROM runs") == [(0,)]


def test_auto_model_kind_follows_the_sensor_count(tmp_path: Path) -> None:
    """``--model-kind auto``: Hotelling's T² for a device of several sensors, the one-class
    SVM for a single sensor; each scored like scikit-learn, and a covariance model flags the
    level shift of pump-03 and the dropout of pump-07 (the windows scikit-learn's own
    Mahalanobis distance puts beyond the threshold)."""
    from tests.unit.scoring.conftest import set_watermark, synthetic_windows, write_windows

    frame = synthetic_windows()
    alone = (frame["device_id"] == "pump-00") & (frame["sensor"] != "pressure")
    write_windows(tmp_path / "data", frame[~alone].reset_index(drop=True))
    settings = settings_for(tmp_path / "data")
    settings = dataclasses.replace(
        settings, train=dataclasses.replace(settings.train, model_kind="auto")
    )
    summary = train(settings, T0, T0 + pd.Timedelta(hours=2).to_pytimedelta(), DEVICES)
    assert sorted(summary.trained) == DEVICES
    registry = ModelRegistry.of(settings.data_dir)
    kinds = {d: registry.active(d).manifest["kind"] for d in DEVICES}  # type: ignore[union-attr]
    assert kinds == {"pump-00": "device", **{d: "covariance" for d in DEVICES[1:]}}
    set_watermark(settings, T0 + pd.Timedelta(hours=3).to_pytimedelta())
    result = score_hour(settings, HOUR3, progress=False)
    assert result.devices_scored == len(DEVICES) and result.devices_failed == 0
    assert_scores_equal_sklearn(settings)
    expected = expected_anomalies(settings)
    flagged = db(settings, "SELECT device_id, epoch_ms(window_start) FROM anomalies")
    assert set(flagged) == expected
    assert {"pump-03", "pump-07"} <= {device for device, _ in expected}
    # explained as the SVM's anomalies are: the dropout's first sensor is the silent one
    sql = "SELECT DISTINCT top_sensors[1].sensor FROM anomalies WHERE device_id = 'pump-07'"
    assert db(settings, sql) == [("vibration",)]
