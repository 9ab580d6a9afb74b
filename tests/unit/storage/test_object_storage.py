"""A data directory in object storage (``s3://bucket/prefix``), against a local S3 server
(moto's server mode): the same windows, models, scores and SQL answers as a local folder; a
crash between data and checkpoint writes replays to the same objects; a model version cut off
half-way is ignored; the SQL sandbox reads the bucket and cannot write it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from fleetwatch.config import Settings
from fleetwatch.config.values import parse_location
from fleetwatch.errors import FleetwatchError, InvalidInputError
from fleetwatch.scheduler.service import CatchUp
from fleetwatch.scoring.registry import ModelIntegrityError, ModelRegistry
from fleetwatch.scoring.score import score_hour
from fleetwatch.scoring.train import train
from fleetwatch.storage.duck import sandbox
from fleetwatch.storage.layout import DataLayout
from tests.conftest import S3Server
from tests.unit.aggregate.test_processor import (
    Harness,
    compare,
    crash_three_times,
    make_records,
    reference,
)
from tests.unit.scoring.conftest import (
    DEVICES,
    T0,
    set_watermark,
    settings_for,
    synthetic_windows,
    write_windows,
)
from tests.unit.scoring.tamper import rewritten

HOURS = [T0 + timedelta(hours=h) for h in range(3)]


def s3_settings(url: str, local: Path) -> Settings:
    base = settings_for(Path("unused"))
    return replace(base, data_dir=parse_location(url), local_dir=local)


def stored(settings: Settings) -> pd.DataFrame:
    with duckdb.connect(str(settings.layout.database), read_only=True) as db:
        return db.execute(
            "SELECT device_id, window_start, score, score_normalized, is_anomaly, model_version, "
            "top_sensors FROM scores ORDER BY device_id, window_start"
        ).df()


def objects(s3: S3Server, url: str) -> dict[str, bytes]:
    fs: Any = s3.filesystem()
    prefix = url.removeprefix("s3://")
    return {key[len(prefix) :]: fs.cat_file(key) for key in fs.find(prefix)}


def download(s3: S3Server, url: str, to: Path) -> Path:
    for key, data in objects(s3, url).items():
        target = to / key.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return to


def test_pipeline_on_s3_equals_the_local_folder(s3_server: S3Server, tmp_path: Path) -> None:
    """Windows written, models trained, hours found closed and scored, all in the bucket:
    the stored rows are the local folder's, row for row, and so are the model files."""
    frame = synthetic_windows()
    local = settings_for(tmp_path / "local")
    write_windows(local.data_dir, frame)
    train(local, T0, T0 + timedelta(hours=2), DEVICES)
    set_watermark(local, T0 + timedelta(hours=3))

    url = f"{s3_server.bucket()}/fleet"
    remote = s3_settings(url, tmp_path / "machine")
    write_windows(remote.data_dir, frame)
    summary = train(remote, T0, T0 + timedelta(hours=2), DEVICES)
    assert sorted(summary.trained) == DEVICES
    set_watermark(remote, T0 + timedelta(hours=3))

    for hour in HOURS:
        assert score_hour(local, hour, progress=False).status == "succeeded"
    scored = [run for run in CatchUp(remote)() if run.status == "succeeded"]  # from S3 checkpoints
    assert sorted(run.window_start for run in scored) == HOURS
    local_rows, remote_rows = stored(local), stored(remote)
    assert len(local_rows) == 3 * 60 * len(DEVICES) and local_rows["is_anomaly"].any()
    pd.testing.assert_frame_equal(local_rows, remote_rows)

    stored_objects = objects(s3_server, url)
    runs = [key for key in stored_objects if key.startswith("/models/")]
    assert len([key for key in runs if key.startswith("/models/runs/")]) == 1  # one object
    mine, theirs = ModelRegistry.of(local.data_dir), ModelRegistry(remote.layout.store)
    for device in DEVICES:
        local_model, remote_model = mine.active(device), theirs.active(device)
        assert local_model is not None and remote_model is not None
        assert mine.read_params(local_model) == theirs.read_params(remote_model)
    assert not any(key.endswith(".duckdb") for key in stored_objects)  # DuckDB stays local
    assert (tmp_path / "machine" / "fleetwatch.duckdb").is_file()

    with sandbox(remote.layout) as connection:  # SQL reads the windows from the bucket
        answer = connection.execute(
            "SELECT device_id, sensor, count(*), sum(mean) FROM aggregates "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    want = frame.groupby(["device_id", "sensor"])["mean"].agg(["count", "sum"]).reset_index()
    assert [(d, s, c) for d, s, c, _ in answer] == list(
        want[["device_id", "sensor", "count"]].itertuples(index=False, name=None)
    )
    np.testing.assert_allclose([total for *_, total in answer], want["sum"], rtol=1e-12)


@pytest.mark.parametrize("seed", [4, 5])
def test_a_crash_between_data_and_checkpoint_replays_to_the_same_objects(
    s3_server: S3Server, tmp_path: Path, seed: int
) -> None:
    """The aggregator's crash test, in a bucket: windows written after the last checkpoint
    are found and replaced on restart, so the objects equal a clean run's and pandas'."""
    records = make_records(seed)
    rng = np.random.default_rng(seed)
    url = f"{s3_server.bucket()}/data"
    crashy = Harness(url)
    crash_three_times(crashy, records, rng, checkpoint_chance=0.5)  # half: crash first
    processor = crashy.restore()
    while (offset := processor.next_offset or 0) < len(records):
        if processor.process(records[offset : offset + 250]):
            processor.save(crashy.store)
    processor.close_all()
    processor.save(crashy.store)

    expected, expected_late, _ = reference(records)
    compare(download(s3_server, url, tmp_path / "copy"), expected)
    late = pd.concat(
        [pd.read_parquet(p) for p in sorted((tmp_path / "copy" / "late").rglob("*.parquet"))]
    )
    assert len(late) == len(expected_late)
    assert not late.duplicated(["offset", "sensor"]).any()


def test_a_model_version_cut_off_half_way_is_not_a_version(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """In a bucket: a version folder without a manifest (left by a writer of a fleetwatch
    before the journal that died) is ignored and its number never reused; a run object no
    journal record publishes (its writer died before) holds no version; a changed row is
    refused as on a local disk, for its device only."""
    frame = synthetic_windows()
    remote = s3_settings(f"{s3_server.bucket()}/fleet", tmp_path / "machine")
    write_windows(remote.data_dir, frame)
    train(remote, T0, T0 + timedelta(hours=2), ["pump-01"])
    registry = ModelRegistry(remote.layout.store)
    fs: Any = s3_server.filesystem()
    bucket_path = str(remote.data_dir).removeprefix("s3://")
    fs.pipe_file(f"{bucket_path}/models/pump-01/v0002/model.joblib", b"a writer that died")
    assert [v.version for v in registry.versions("pump-01")] == ["v0001"]
    with pytest.raises(InvalidInputError):
        registry.get("pump-01", "v0002")
    with pytest.raises(InvalidInputError, match="no model version v0002"):
        registry.activate("pump-01", "v0002")
    train(remote, T0, T0 + timedelta(hours=2), ["pump-01"])
    assert registry.active_version("pump-01") == "v0003"
    assert [v.version for v in registry.versions("pump-01")] == ["v0001", "v0003"]
    [published] = fs.ls(f"{bucket_path}/models/runs")[:1]
    fs.pipe_file(f"{bucket_path}/models/runs/unpublished.parquet", fs.cat_file(published))
    assert [v.version for v in registry.versions("pump-01")] == ["v0001", "v0003"]
    registry.activate("pump-01", "v0001")
    model = registry.active("pump-01")
    assert model is not None and model.run is not None
    key = f"{bucket_path}/models/runs/{model.run}.parquet"
    fs.pipe_file(key, rewritten(fs.cat_file(key), "pump-01", params=lambda _: b"tampered"))
    with pytest.raises(ModelIntegrityError, match=r"params\.bin"):
        ModelRegistry(remote.layout.store).load_params(model)
    result = score_hour(remote, HOURS[2], progress=False)
    assert result.devices_failed == 1


def test_sql_reads_the_bucket_and_cannot_write_it(s3_server: S3Server, tmp_path: Path) -> None:
    url = f"{s3_server.bucket()}/fleet"
    remote = s3_settings(url, tmp_path / "machine")
    write_windows(remote.data_dir, synthetic_windows(hours=1))
    before = objects(s3_server, url)
    [target] = [k for k in before if k.startswith("/aggregates/")]
    with sandbox(remote.layout) as connection:
        for statement in (
            f"COPY (SELECT 1 AS x) TO '{url}{target}' (FORMAT parquet)",
            f"COPY (SELECT 1 AS x) TO '{url}/aggregates/new.parquet' (FORMAT parquet)",
            f"SELECT * FROM read_parquet('{url}/../other/*.parquet')",  # noqa: S608
            "SET enable_external_access = true",
        ):
            with pytest.raises(duckdb.Error):
                connection.execute(statement)
        counted = connection.execute("SELECT count(*) FROM aggregates").fetchone()
        assert counted == (60 * len(DEVICES) * 3,)
    assert objects(s3_server, url) == before


def test_bad_locations_are_one_line_errors(s3_server: S3Server, tmp_path: Path) -> None:
    env = {**s3_server.env, "PATH": "/usr/bin:/bin", "FLEETWATCH_LOCAL_DIR": str(tmp_path)}
    for data_dir, expected in (
        ("s3://no-such-bucket-fw/x", "bucket 'no-such-bucket-fw'"),
        ("ftp://host/x", "unsupported storage scheme 'ftp'"),
        ("s3:///x", "names no bucket"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "fleetwatch", "sql", "SELECT 1", "--data-dir", data_dir],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode != 0
        assert expected in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in run.stderr + run.stdout
    demo = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "demo", "--data-dir", "s3://any-bucket/demo"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert demo.returncode == 2 and "the demo runs on a local folder" in demo.stderr
    with pytest.raises(ValueError, match="names no bucket"):
        parse_location("s3://")
    with pytest.raises(FleetwatchError, match="does not exist"):
        DataLayout.open("s3://no-such-bucket-fw/x").require()


def test_the_cli_on_a_bucket_and_no_secret_in_its_output(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """``import --backfill``, ``train``, ``score`` and ``sql`` as a user runs them, at DEBUG:
    the answers come back and the credentials are never printed."""
    from tests.unit.ingest.test_backfill import START, azure_csv

    source = tmp_path / "sensor_data.csv"
    readings = azure_csv(source, hours=3)
    url = f"{s3_server.bucket()}/cli"
    env = {
        **{k: v for k, v in __import__("os").environ.items() if not k.startswith("FLEETWATCH_")},
        **s3_server.env,
        "FLEETWATCH_DATA_DIR": url,
        "FLEETWATCH_LOCAL_DIR": str(tmp_path / "machine"),
        "FLEETWATCH_LOG_LEVEL": "DEBUG",
    }
    hour = START + timedelta(hours=2)
    output = ""
    for arguments in (
        ["import", str(source), "--assume-timezone", "UTC", "--backfill"],
        ["train", "--since", START.isoformat(), "--until", hour.isoformat(), "--workers", "1"],
        ["score", "--hour", hour.isoformat(), "--format", "json"],
        ["sql", "SELECT sum(count) AS readings FROM aggregates", "--format", "json"],
    ):
        run = subprocess.run(
            [sys.executable, "-m", "fleetwatch", *arguments],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        output += run.stdout + run.stderr
    assert json.loads(run.stdout)[0]["readings"] == len(readings)
    for secret in (s3_server.env["AWS_SECRET_ACCESS_KEY"], s3_server.env["AWS_ACCESS_KEY_ID"]):
        assert secret not in output
    assert not (tmp_path / "machine" / "aggregates").exists()


def test_dask_workers_read_the_bucket_themselves(s3_server: S3Server, tmp_path: Path) -> None:
    """Scoring on a LocalCluster (started with the store's credentials in its environment)
    from a bucket: the rows of the local executor on the same bucket."""
    distributed = pytest.importorskip("distributed", reason="pip install -e '.[dev]' brings Dask")
    url = f"{s3_server.bucket()}/fleet"
    local = s3_settings(url, tmp_path / "one")
    write_windows(local.data_dir, synthetic_windows())
    train(local, T0, T0 + timedelta(hours=2), DEVICES)
    set_watermark(local, T0 + timedelta(hours=3))  # in the bucket: both see it
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        dask = replace(
            s3_settings(url, tmp_path / "two"),
            score=replace(local.score, executor="dask", dask_scheduler=cluster.scheduler_address),
        )
        for hour in HOURS:
            assert score_hour(local, hour, progress=False).status == "succeeded"
            assert score_hour(dask, hour, progress=False).status == "succeeded"
    pd.testing.assert_frame_equal(stored(local), stored(dask))
    assert len(stored(dask)) == 3 * 60 * len(DEVICES)


def test_compaction_in_a_bucket(s3_server: S3Server, tmp_path: Path) -> None:
    """A closed hour's objects merged into one object, the windows unchanged, the hour not
    scored again."""
    from fleetwatch.scheduler.service import compact_closed_hours, pending_now
    from fleetwatch.storage.layout import is_compacted_file
    from tests.unit.storage.test_compaction import windows, write_in_pieces

    url = f"{s3_server.bucket()}/fleet"
    remote = s3_settings(url, tmp_path / "machine")
    write_in_pieces(remote.data_dir, synthetic_windows(hours=2))
    train(remote, T0, T0 + timedelta(hours=1), DEVICES)
    set_watermark(remote, T0 + timedelta(hours=2))
    remote = replace(remote, schedule=replace(remote.schedule, compact=False))
    assert len(CatchUp(remote)()) == 2
    before = [windows(remote, hour) for hour in HOURS[:2]]
    assert compact_closed_hours(remote) == 2
    keys = [k for k in objects(s3_server, url) if k.startswith("/aggregates/")]
    assert len(keys) == 2 and all(is_compacted_file(k.rsplit("/", 1)[1]) for k in keys)
    for hour, frame in zip(HOURS[:2], before, strict=True):
        pd.testing.assert_frame_equal(windows(remote, hour), frame)
    assert pending_now(remote) == []


def test_state_read_while_its_writer_replaces_it(s3_server: S3Server) -> None:
    """The scheduler reads the aggregator's checkpoints and topic state while the aggregator
    replaces them: every read gets a whole old or new object (S3 replaces an object at once),
    never an error (a read that first asks for the object's ETag, then its bytes on condition
    of that ETag, fails when a new object lands in between)."""
    import threading

    from fleetwatch.storage.checkpoints import Checkpoint, CheckpointStore, TopicState

    layout = DataLayout.open(f"{s3_server.bucket()}/data")
    store = CheckpointStore(layout.store, "telemetry")
    store.save(0, Checkpoint(0, 0, 0, 0))
    store.save_topic_state(TopicState(1))
    stop = threading.Event()

    def replace_them() -> None:
        offset = 0
        while not stop.is_set():
            offset += 1
            store.save(0, Checkpoint(0, offset, offset, offset))
            store.save_topic_state(TopicState(1 + offset % 2))

    writer = threading.Thread(target=replace_them)
    writer.start()
    try:
        offsets = []
        for _ in range(150):
            checkpoint = store.load(0)
            assert checkpoint is not None
            offsets.append(checkpoint.next_offset)
            state = store.load_topic_state()
            assert state is not None and state.partitions in (1, 2)
    finally:
        stop.set()
        writer.join()
    assert offsets == sorted(offsets) and offsets[-1] > offsets[0]  # read while replaced


def test_checkpoints_read_at_once_equal_each_read_alone(s3_server: S3Server) -> None:
    """``load_many`` (the scheduler's progress, an idle partition's frontier) reads up to 16
    checkpoints at once; each answer is the one :meth:`load` gives, a missing one None."""
    from fleetwatch.storage.checkpoints import Checkpoint, CheckpointStore

    store = CheckpointStore(DataLayout.open(f"{s3_server.bucket()}/data").store, "telemetry")
    for partition in range(0, 40, 2):
        store.save(partition, Checkpoint(next_offset=partition + 1, close_boundary_ms=partition))
    many = store.load_many(range(40))
    assert list(many) == list(range(40))
    assert many == {partition: store.load(partition) for partition in range(40)}
    assert [partition for partition, found in many.items() if found is None] == list(
        range(1, 40, 2)
    )
