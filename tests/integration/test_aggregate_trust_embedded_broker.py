"""`fleetwatch aggregate` against what broke it: a broker reset under it, hostile messages, a
message from 2099, and a stop right after a rebalance. Real worker processes, embedded broker."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from fleetwatch.brokers.embedded import EmbeddedBroker, free_port
from fleetwatch.brokers.topics import ensure_topics
from fleetwatch.config import Settings
from fleetwatch.storage.checkpoints import CheckpointStore
from fleetwatch.storage.layout import DataLayout
from tests.conftest import consume_all, make_settings, wait_for
from tests.integration.aggregate_helpers import (
    read_parquet_dir,
    start_worker,
    status_files,
    stop_worker,
    wait_drained,
    worker_env,
)

pytestmark = pytest.mark.integration
T0 = 1_795_334_400_000  # 2026-11-22T08:00:00Z


def readings(device: str, start_ms: int, count: int, step_ms: int = 10_000) -> list[bytes]:
    return [
        json.dumps(
            {"device_id": device, "ts": start_ms + i * step_ms, "readings": {"a": 1.0, "b": 2.0}}
        ).encode()
        for i in range(count)
    ]


def send(settings: Settings, partition: int, values: list[bytes], key: bytes = b"") -> None:
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )
    for value in values:
        producer.send(
            settings.kafka.telemetry_topic, key=key or None, value=value, partition=partition
        )
    producer.flush()
    producer.close()


def windows_written(data: Path) -> int:
    frame = read_parquet_dir(data / "aggregates")
    return 0 if frame.empty else len(frame)


@pytest.mark.scenario
def test_a_broker_restart_under_a_running_worker_loses_nothing(tmp_path: Path) -> None:
    """The embedded broker is memory-only: restarted, its topics come back empty. What is sent
    afterwards is written (before: 818 of 960 windows were skipped silently), with one ERROR
    that says what happened."""
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    settings = make_settings(broker.bootstrap_servers, "reset")
    ensure_topics(settings.kafka)
    data, log = tmp_path / "data", tmp_path / "worker.log"
    worker = start_worker(worker_env(settings, data, "g-reset", FLEETWATCH_PARTITIONS="4"), log)
    try:
        devices = [f"dev-{i}" for i in range(8)]
        for partition, device in enumerate(devices[:4]):
            send(settings, partition, readings(device, T0, 360), key=device.encode())
        wait_for(lambda: windows_written(data) >= 4 * 2 * 59, 90, "the first windows", log)
        broker.stop()
        broker = EmbeddedBroker(port=port).start()  # same address, empty
        ensure_topics(settings.kafka)
        later = T0 + 3_600_000
        for partition, device in enumerate(devices[4:]):
            send(settings, partition, readings(device, later, 360), key=device.encode())
        # each device: 360 readings 10 s apart = 60 windows; the last stays open until idle
        wait_for(
            lambda: windows_written(data) >= 4 * 2 * 60 + 4 * 2 * 60, 120, "the new windows", log
        )
    finally:
        code = stop_worker(worker)
        broker.stop()
    assert code == 0, log.read_text()[-3000:]
    frame = read_parquet_dir(data / "aggregates")
    after = frame[frame["device_id"].isin(devices[4:])]
    assert len(after) == 4 * 2 * 60 and after["count"].sum() == 4 * 2 * 360
    assert not frame.duplicated(["device_id", "sensor", "window_start"]).any()
    text = log.read_text()
    errors = [line for line in text.splitlines() if re.search(r"\bERROR\b", line)]
    assert errors and all("reset" in line or "created again" in line for line in errors), errors
    assert "Traceback" not in text


@pytest.mark.scenario  # ~20 s, one worker over every hostile payload: CI runs it with -m scenario
def test_no_message_stops_aggregation_or_takes_its_neighbours(
    settings: Settings, tmp_path: Path
) -> None:
    """A reading written as a 400-digit integer, a 1,000,083-byte message: dead-lettered (the
    big one cut, its size in a header), the valid readings around them all written, and the
    worker stays up (before: it exited 1, lost the rest of the batch, and crashed again at
    every restart)."""
    data, log = tmp_path / "data", tmp_path / "worker.log"
    good = readings("dev-1", T0, 20)
    huge_number = (
        '{"device_id": "dev-1", "ts": 1795334405000, "readings": {"a": ' + "9" * 400 + "}}"
    ).encode()
    huge = b'{"device_id": "dev-1", "x": "' + b"y" * 1_000_040 + b'"}'
    send(settings, 0, [*good[:10], huge_number, huge, *good[10:]], key=b"dev-1")
    worker = start_worker(worker_env(settings, data, "g-hostile"), log)
    try:
        wait_drained(data, settings.kafka.telemetry_topic, {0: 22}, process=worker)
    finally:
        assert stop_worker(worker) == 0, log.read_text()[-3000:]
    frame = read_parquet_dir(data / "aggregates")
    assert frame["count"].sum() == 2 * 20
    dead = consume_all(settings.kafka.bootstrap_servers, settings.kafka.dead_letter_topic)
    reasons = {dict(d.headers)["fleetwatch.reason"]: d for d in dead}
    assert set(reasons) == {b"non_finite", b"oversized"} and len(dead) == 2
    cut = reasons[b"oversized"]
    assert dict(cut.headers)["fleetwatch.truncated.value_bytes"] == str(len(huge)).encode()
    assert cut.value == huge[: len(cut.value or b"")]
    restarted = start_worker(worker_env(settings, data, "g-hostile"), log)  # no crash loop
    try:
        wait_for(lambda: log.read_text().count("partition 0 assigned") == 2, 60, "restart", log)
        wait_drained(data, settings.kafka.telemetry_topic, {0: 22}, process=restarted)
    finally:
        assert stop_worker(restarted) == 0
    assert read_parquet_dir(data / "aggregates")["count"].sum() == 2 * 20


@pytest.mark.scenario  # ~12-16 s: CI runs it with -m scenario
def test_a_message_from_2099_does_not_make_the_others_late(
    settings: Settings, tmp_path: Path
) -> None:
    data, log = tmp_path / "data", tmp_path / "worker.log"
    now = int(time.time() * 1000) // 60_000 * 60_000 - 3_600_000
    poison = json.dumps(
        {"device_id": "dev-1", "ts": "2099-12-31T00:00:00Z", "readings": {"a": 1.0}}
    ).encode()
    send(settings, 0, [poison, *readings("dev-1", now, 60, step_ms=1000)], key=b"dev-1")
    worker = start_worker(worker_env(settings, data, "g-future"), log)
    try:
        wait_drained(data, settings.kafka.telemetry_topic, {0: 61}, process=worker)
    finally:
        assert stop_worker(worker) == 0, log.read_text()[-3000:]
    assert read_parquet_dir(data / "aggregates")["count"].sum() == 2 * 60
    assert read_parquet_dir(data / "late").empty
    [dead] = consume_all(settings.kafka.bootstrap_servers, settings.kafka.dead_letter_topic)
    assert dict(dead.headers)["fleetwatch.reason"] == b"future_timestamp"


@pytest.mark.scenario
def test_sigterm_right_after_a_rebalance_is_a_clean_stop(
    settings: Settings, tmp_path: Path
) -> None:
    """Before: the second worker logged `stopped cleanly`, then CRITICAL CancelledError, exit 1."""
    data = tmp_path / "data"
    env = worker_env(settings, data, "g-rebalance")
    first = start_worker(env, tmp_path / "w1.log")
    try:
        wait_for(
            lambda: any(
                s["partitions"] for s in status_files(data, settings.kafka.telemetry_topic)
            ),
            60,
            "the first worker's partitions",
            tmp_path / "w1.log",
        )
        for attempt in range(3):
            log = tmp_path / f"w2-{attempt}.log"
            second = start_worker(env, log)
            wait_for(
                lambda log=log: "assigned, resuming" in log.read_text(), 60, "the rebalance", log
            )
            code = stop_worker(second)
            text = log.read_text()
            assert code == 0, text[-3000:]
            assert "CRITICAL" not in text and "CancelledError" not in text, text[-3000:]
            assert "stopped cleanly" in text
    finally:
        assert stop_worker(first) == 0
    store = CheckpointStore(DataLayout.open(data).store, settings.kafka.telemetry_topic)
    assert all(store.load(p) is not None for p in range(settings.kafka.partitions))


def test_aggregates_without_their_checkpoints_are_one_line_and_no_clean_stop(
    settings: Settings, tmp_path: Path
) -> None:
    """Before: 43 lines, two tracebacks and a contradictory `stopped cleanly`."""
    import shutil
    import subprocess
    import sys

    data, log = tmp_path / "data", tmp_path / "worker.log"
    send(settings, 0, readings("dev-1", T0, 30), key=b"dev-1")
    worker = start_worker(worker_env(settings, data, "g-orphans"), log)
    try:
        wait_for(lambda: windows_written(data) > 0, 60, "windows", log)
    finally:
        assert stop_worker(worker) == 0
    shutil.rmtree(data / "state")  # the state folder lost, the aggregates still there
    result = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "aggregate"],
        env=worker_env(settings, data, "g-orphans"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "its checkpoint" in line and "restore it, or move the aggregates away" in line
    assert "stopped cleanly" not in result.stderr + result.stdout
