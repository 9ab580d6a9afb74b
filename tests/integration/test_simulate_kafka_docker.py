"""The produce/consume path against a real Apache Kafka (testcontainers); skipped without Docker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetwatch.brokers.topics import ensure_topics
from fleetwatch.telemetry import parse_message
from tests.conftest import consume_all, docker_available, fleetwatch_cli, make_settings

WHY_NOT = docker_available()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.docker,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"needs a Docker engine: {WHY_NOT}"),
]


@pytest.fixture(scope="module")
def kafka_bootstrap() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer("apache/kafka:3.9.1").with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


def test_simulate_against_apache_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = make_settings(kafka_bootstrap, "docker")
    ensure_topics(settings.kafka)
    env = {
        "FLEETWATCH_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FLEETWATCH_TELEMETRY_TOPIC": settings.kafka.telemetry_topic,
    }
    result = fleetwatch_cli(
        "simulate",
        "--devices",
        "10",
        "--sensors",
        "3",
        "--messages",
        "2000",
        "--speed",
        "0",
        "--seed",
        "5",
        "--format",
        "json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["messages_sent"] == 2000
    records = consume_all(kafka_bootstrap, settings.kafka.telemetry_topic)
    assert len(records) == 2000
    for record in records:
        assert parse_message(record.value, key=record.key).device_id == record.key.decode()
