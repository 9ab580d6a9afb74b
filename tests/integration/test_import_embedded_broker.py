"""`fleetwatch import` round trips on the embedded broker: what pandas reads is what arrives."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetwatch.config import Settings
from fleetwatch.telemetry import parse_message
from tests.conftest import consume_all, fleetwatch_cli
from tests.integration.test_simulate_embedded_broker import cli_env

pytestmark = pytest.mark.integration


def published(settings: Settings) -> dict[tuple[str, int], dict[str, float]]:
    records = consume_all(settings.kafka.bootstrap_servers, settings.kafka.telemetry_topic)
    result = {}
    for record in records:
        message = parse_message(record.value, key=record.key)
        assert (message.device_id, message.ts_ms) not in result
        result[(message.device_id, message.ts_ms)] = message.readings
    return result


def long_frame(rng: np.random.Generator) -> pd.DataFrame:
    times = pd.date_range("2026-11-22T08:00:00Z", periods=30, freq="10s")
    rows = [
        (t.strftime("%Y-%m-%dT%H:%M:%SZ"), device, tag, float(rng.normal(50, 5)))
        for t in times
        for device in ("pump-a", "pump-b")
        for tag in ("temp", "pres", "vib")
    ]
    return pd.DataFrame(rows, columns=["TS", "Device", "Tag", "Value"])


def expected_from_long(frame: pd.DataFrame) -> dict[tuple[str, int], dict[str, float]]:
    stamps = pd.to_datetime(frame["TS"], utc=True).dt.as_unit("ms").astype("int64")
    out: dict[tuple[str, int], dict[str, float]] = {}
    for (device, ts), group in frame.assign(ms=stamps).groupby(["Device", "ms"]):
        out[(str(device), int(ts))] = dict(
            zip(group["Tag"], group["Value"].astype(float), strict=True)
        )
    return out


def test_long_csv_round_trip(settings: Settings, tmp_path: Path) -> None:
    frame = long_frame(np.random.default_rng(1))
    path = tmp_path / "readings.csv"
    frame.to_csv(path, index=False)
    result = fleetwatch_cli("import", str(path), "--format", "json", env=cli_env(settings))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["layout"] == "long"
    assert summary["messages_sent"] == 60 and summary["readings"] == 180
    assert published(settings) == expected_from_long(frame)


def test_long_parquet_round_trip(settings: Settings, tmp_path: Path) -> None:
    frame = long_frame(np.random.default_rng(2))
    frame["TS"] = pd.to_datetime(frame["TS"], utc=True)
    path = tmp_path / "readings.parquet"
    frame.to_parquet(path)
    result = fleetwatch_cli("import", str(path), env=cli_env(settings))
    assert result.returncode == 0, result.stderr
    expected = expected_from_long(frame.assign(TS=frame["TS"].astype(str)))
    assert published(settings) == expected


def test_wide_csv_with_naive_times_and_sanitized_names(settings: Settings, tmp_path: Path) -> None:
    """A SKAB-like file: ';'-separated, naive local times, a sensor name with spaces."""
    rng = np.random.default_rng(3)
    times = pd.date_range("2026-11-22 09:00:00", periods=40, freq="1s")
    frame = pd.DataFrame(
        {
            "datetime": times.strftime("%Y-%m-%d %H:%M:%S"),
            "Pressure": rng.normal(1, 0.1, 40),
            "Volume Flow RateRMS": rng.normal(120, 3, 40),
        }
    )
    path = tmp_path / "skab-like.csv"
    frame.to_csv(path, index=False, sep=";")
    refused = fleetwatch_cli("import", str(path), "--device-id", "skab-1", env=cli_env(settings))
    assert refused.returncode == 2
    assert "--sanitize-names" in refused.stderr and "Traceback" not in refused.stderr
    result = fleetwatch_cli(
        "import",
        str(path),
        "--device-id",
        "skab-1",
        "--assume-timezone",
        "Europe/Moscow",
        "--sanitize-names",
        "--format",
        "json",
        env=cli_env(settings),
    )
    assert result.returncode == 0, result.stderr
    expected_ms = (
        pd.to_datetime(frame["datetime"])
        .dt.tz_localize("Europe/Moscow")
        .dt.as_unit("ms")
        .astype("int64")
    )
    expected = {
        ("skab-1", int(ms)): {"Pressure": p, "Volume_Flow_RateRMS": v}
        for ms, p, v in zip(
            expected_ms, frame["Pressure"], frame["Volume Flow RateRMS"], strict=True
        )
    }
    assert published(settings) == expected


def test_invalid_rows_are_reported_with_line_numbers_and_not_published(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "timestamp,device_id,temperature,pressure\n"  # line 1
        "2026-11-22T10:00:00Z,pump-1,70.5,2.0\n"  # 2 ok
        "2026-11-22T10:00:01Z,pump 1,70.5,2.0\n"  # 3 bad device id
        "2026-11-22T10:00:02,pump-1,70.5,2.0\n"  # 4 naive time
        "2026-11-22T10:00:03Z,pump-1,hot,2.0\n"  # 5 not a number
        "2026-11-22T10:00:04Z,pump-1,nan,2.0\n"  # 6 not finite
        "2026-11-22T10:00:05Z,../etc,1,2\n"  # 7 path traversal id
        "2026-11-22T10:00:06Z,pump-1,,\n"  # 8 no readings
        "2026-11-22T10:00:07Z,pump-2,71.0,\n"  # 9 ok, one sensor
    )
    rejects = tmp_path / "rejects.csv"
    result = fleetwatch_cli(
        "import", str(path), "--rejects", str(rejects), "--format", "json", env=cli_env(settings)
    )
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["rows_rejected"] == 6 and summary["messages_sent"] == 2
    for line in (3, 4, 5, 6, 7, 8):
        assert f"mixed.csv:line {line}:" in result.stderr
    assert "--assume-timezone" in result.stderr  # the fix is in the message
    assert pd.read_csv(rejects)["line"].tolist() == [3, 4, 5, 6, 7, 8]
    assert published(settings) == {
        ("pump-1", 1795341600000): {"temperature": 70.5, "pressure": 2.0},
        ("pump-2", 1795341607000): {"temperature": 71.0},
    }


def test_long_file_bad_tags_and_duplicates(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text(
        "TS,Device,Tag,Value\n"
        "2026-11-22T10:00:00Z,pump-1,temp,1\n"
        "2026-11-22T10:00:00Z,pump-1,temp,2\n"  # 3 duplicate
        "2026-11-22T10:00:00Z,pump-1,bad tag,3\n"  # 4 bad sensor name
        "2026-11-22T10:00:00Z,pump-1,pres,4\n"
    )
    result = fleetwatch_cli("import", str(path), env=cli_env(settings))
    assert result.returncode == 1
    assert "line 3: duplicate" in result.stderr and "line 4: sensor name" in result.stderr
    assert published(settings) == {("pump-1", 1795341600000): {"temp": 1.0, "pres": 4.0}}


def test_missing_file_and_wrong_type_are_one_line_errors(
    settings: Settings, tmp_path: Path
) -> None:
    missing = fleetwatch_cli("import", str(tmp_path / "nope.csv"), env=cli_env(settings))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    other = tmp_path / "x.json"
    other.write_text("{}")
    wrong = fleetwatch_cli("import", str(other), env=cli_env(settings))
    assert wrong.returncode == 2 and "use .csv or .parquet" in wrong.stderr


@pytest.mark.scenario  # ~12-16 s: CI runs it with -m scenario
def test_a_history_file_into_a_live_pipeline_goes_through_backfill_not_the_late_sink(
    settings: Settings, tmp_path: Path
) -> None:
    """Before: importing the Azure reference's sensor_data.csv (older timestamps) into a topic
    with recent data exited 0 while every reading landed in late/. Published, it still does,
    but the import says so; with --backfill it becomes aggregates, scored like live data."""
    from datetime import UTC, datetime, timedelta

    from fleetwatch.scheduler.service import CatchUp
    from fleetwatch.scoring.train import train
    from tests.integration.aggregate_helpers import (
        read_parquet_dir,
        start_worker,
        stop_worker,
        wait_drained,
        worker_env,
    )
    from tests.unit.ingest.test_backfill import START, azure_csv, expected_windows

    data = tmp_path / "data"
    recent = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    live = [
        json.dumps(
            {
                "device_id": "live-1",
                "ts": int((recent + timedelta(seconds=10 * i)).timestamp() * 1000),
                "readings": {"t": 1.0},
            }
        ).encode()
        for i in range(120)
    ]
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    for value in live:
        producer.send(settings.kafka.telemetry_topic, key=b"live-1", value=value, partition=0)
    producer.flush()
    producer.close()
    env = worker_env(settings, data, "g-history", FLEETWATCH_AGGREGATE_IDLE_TIMEOUT="1s")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_drained(data, settings.kafka.telemetry_topic, {0: 120}, process=worker)
        source = tmp_path / "sensor_data.csv"
        frame = azure_csv(source, hours=3)
        cli = {**cli_env(settings), "FLEETWATCH_DATA_DIR": str(data)}
        published_run = fleetwatch_cli("import", str(source), "--assume-timezone", "UTC", env=cli)
        assert published_run.returncode == 0, published_run.stderr
        assert f"{len(frame)} readings are for windows the aggregation" in published_run.stderr
        assert "--backfill" in published_run.stderr
        # the worker has read the published copy (into the late sink) before it is stopped
        records = consume_all(settings.kafka.bootstrap_servers, settings.kafka.telemetry_topic)
        ends = Counter(record.partition for record in records)
        ends_by_partition = {p: ends.get(p, 0) for p in range(settings.kafka.partitions)}
        wait_drained(data, settings.kafka.telemetry_topic, ends_by_partition, process=worker)
        backfilled = fleetwatch_cli(
            "import", str(source), "--assume-timezone", "UTC", "--backfill", env=cli
        )
        assert backfilled.returncode == 0, backfilled.stderr
    finally:
        assert stop_worker(worker) == 0
    late = read_parquet_dir(data / "late")
    assert len(late) == len(frame)  # the published copy, every reading of it, counted late
    windows = read_parquet_dir(data / "aggregates")
    history = windows[windows["device_id"].str.startswith("Device_")]
    assert len(history) == len(expected_windows(frame))
    assert history["count"].sum() == len(frame)
    settings_ = cli_settings(data, settings)
    train(settings_, START, START + timedelta(hours=2))
    scored = {r.window_start for r in CatchUp(settings_)() if r.status == "succeeded"}
    assert {START + timedelta(hours=h) for h in range(3)} <= scored


def cli_settings(data: Path, settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(
        settings,
        data_dir=data,
        train=replace(settings.train, workers=1, progress=False),
        score=replace(settings.score, workers=1),
    )
