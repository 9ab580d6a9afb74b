"""`fleetwatch simulate` end to end on the embedded broker, read back with a plain consumer."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleetwatch.brokers.topics import ensure_topics
from fleetwatch.config import Settings
from fleetwatch.simulators.anomalies import read_labels
from fleetwatch.simulators.fleet import FleetSpec, FleetStream
from fleetwatch.simulators.malformed import MALFORMED_KINDS
from fleetwatch.telemetry import InvalidMessage, parse_message
from tests.conftest import consume_all, fleetwatch_cli, record_count, wait_for

pytestmark = pytest.mark.integration
START = "2026-11-22T00:00:00Z"


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "FLEETWATCH_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "FLEETWATCH_TELEMETRY_TOPIC": settings.kafka.telemetry_topic,
        "FLEETWATCH_DEAD_LETTER_TOPIC": settings.kafka.dead_letter_topic,
        "FLEETWATCH_TIMEOUT": "5s",
    }


def simulate_args(messages: int, labels: Path, *extra: str) -> list[str]:
    return [
        "simulate",
        "--devices",
        "20",
        "--sensors",
        "5",
        "--messages",
        str(messages),
        "--speed",
        "0",
        "--seed",
        "11",
        "--start",
        START,
        "--interval",
        "10s",
        "--anomaly-rate",
        "12",
        "--labels",
        str(labels),
        "--format",
        "json",
        *extra,
    ]


def test_simulate_publishes_exactly_what_it_says(settings: Settings, tmp_path: Path) -> None:
    labels_path = tmp_path / "labels.parquet"
    result = fleetwatch_cli(
        *simulate_args(
            3000, labels_path, "--malformed-fraction", "0.05", "--late-fraction", "0.03"
        ),
        env=cli_env(settings),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    records = consume_all(settings.kafka.bootstrap_servers, settings.kafka.telemetry_topic)
    assert len(records) == 3000 == summary["messages_sent"]
    assert summary["messages_failed"] == 0

    reasons: Counter[str] = Counter()
    readings = 0
    device_ids = set()
    for record in records:
        assert record.key is not None
        try:
            message = parse_message(record.value, key=record.key)
        except InvalidMessage as exc:
            reasons[exc.reason] += 1
            continue
        assert record.key.decode() == message.device_id  # keyed by device id
        device_ids.add(message.device_id)
        readings += len(message.readings)
    expected = Counter()
    for kind, count in summary["malformed"].items():
        expected[MALFORMED_KINDS[kind][1]] += count
    assert reasons == expected
    assert sum(reasons.values()) > 50
    assert readings == summary["readings"]
    assert device_ids == {f"pump-{i:04d}" for i in range(1, 21)}
    # one device's messages stay in one partition (the key decides the partition)
    partitions_by_device: dict[bytes, set[int]] = {}
    for record in records:
        partitions_by_device.setdefault(record.key or b"", set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions_by_device.values())

    # labels: the same anomalies an independent in-process generation injects
    spec = FleetSpec(
        devices=20,
        sensors=5,
        start=datetime(2026, 11, 22, tzinfo=UTC),
        interval_s=10.0,
        seed=11,
        anomaly_rate=12.0,
        malformed_fraction=0.05,
        late_fraction=0.03,
    )
    stream = FleetStream(spec)
    for _ in stream.ticks(3000):
        pass
    expected_labels = stream.close()
    assert read_labels(labels_path) == expected_labels
    assert summary["anomalies"] == dict(sorted(Counter(x.kind for x in expected_labels).items()))
    assert sum(summary["anomalies"].values()) >= 5


def test_same_seed_gives_byte_identical_payloads(
    settings: Settings, topic_prefix: str, tmp_path: Path
) -> None:
    other = replace(
        settings, kafka=replace(settings.kafka, telemetry_topic=f"{topic_prefix}.again")
    )
    ensure_topics(other.kafka, [other.kafka.telemetry_topic])
    for target in (settings, other):
        result = fleetwatch_cli(*simulate_args(1500, tmp_path / "l.csv"), env=cli_env(target))
        assert result.returncode == 0, result.stderr
    first = consume_all(settings.kafka.bootstrap_servers, settings.kafka.telemetry_topic)
    second = consume_all(settings.kafka.bootstrap_servers, other.kafka.telemetry_topic)
    assert [(r.partition, r.key, r.value) for r in first] == [
        (r.partition, r.key, r.value) for r in second
    ]
    assert len(first) == 1500


def test_duration_stops_on_simulated_time(settings: Settings, tmp_path: Path) -> None:
    result = fleetwatch_cli(
        "simulate",
        "--devices",
        "4",
        "--sensors",
        "2",
        "--interval",
        "30s",
        "--duration",
        "10m",
        "--speed",
        "0",
        "--start",
        START,
        "--format",
        "json",
        env=cli_env(settings),
    )
    assert result.returncode == 0, result.stderr
    records = consume_all(settings.kafka.bootstrap_servers, settings.kafka.telemetry_topic)
    assert len(records) == 4 * 20  # 10 minutes / 30 s = 20 readings per device
    times = [parse_message(r.value).ts_ms for r in records]
    start_ms = int(datetime(2026, 11, 22, tzinfo=UTC).timestamp() * 1000)
    assert max(times) < start_ms + 600_000


def test_speed_paces_the_simulated_clock(settings: Settings) -> None:
    # 20 s of simulated time at 10x must take about 2 s of wall-clock time
    started = time.monotonic()
    result = fleetwatch_cli(
        "simulate",
        "--devices",
        "2",
        "--sensors",
        "1",
        "--interval",
        "1s",
        "--duration",
        "20s",
        "--speed",
        "10",
        "--format",
        "json",
        env=cli_env(settings),
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["messages_sent"] == 40
    assert 1.8 <= summary["elapsed_s"] <= 6.0, summary
    assert elapsed >= 1.8


def test_ctrl_c_flushes_and_prints_the_summary(settings: Settings) -> None:
    env = {**cli_env(settings), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetwatch",
            "simulate",
            "--devices",
            "5",
            "--sensors",
            "3",
            "--interval",
            "1s",
            "--speed",
            "20",
            "--format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in __import__("os").environ.items() if not k.startswith("FLEETWATCH_")}
        | env,
    )
    topic = settings.kafka.telemetry_topic
    wait_for(lambda: record_count(settings.kafka.bootstrap_servers, topic) >= 20, 60, "records")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    records = consume_all(settings.kafka.bootstrap_servers, settings.kafka.telemetry_topic)
    assert summary["messages_sent"] == len(records) > 0


@pytest.mark.scenario  # ~19 s (a broker stopped under a producer): CI runs it with -m scenario
def test_delivery_failures_make_the_exit_code_non_zero(tmp_path: Path) -> None:
    """A broker that dies mid-run: the failures are counted and the exit code is 1."""
    from fleetwatch.brokers.embedded import EmbeddedBroker

    with EmbeddedBroker(port=0) as doomed:
        env = {
            "FLEETWATCH_BOOTSTRAP_SERVERS": doomed.bootstrap_servers,
            "FLEETWATCH_TIMEOUT": "2s",
            "FLEETWATCH_TELEMETRY_TOPIC": "doomed",
        }
        assert fleetwatch_cli("topics", "create", env=env).returncode == 0
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetwatch",
                "simulate",
                "--devices",
                "50",
                "--speed",
                "5",
                "--format",
                "json",
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                k: v for k, v in __import__("os").environ.items() if not k.startswith("FLEETWATCH_")
            }
            | env,
        )
        wait_for(lambda: record_count(doomed.bootstrap_servers, "doomed") >= 50, 60, "records")
        doomed.stop()
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, (stdout, stderr)
    summary = json.loads(stdout)
    assert summary["messages_failed"] > 0
    assert "messages were not delivered" in stderr
    assert "Traceback" not in stderr
