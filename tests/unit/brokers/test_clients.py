"""Kafka client settings, without a broker: security, bounded waits, no secret in messages."""

from __future__ import annotations

from typing import Any

import pytest

from fleetwatch.brokers import clients, topics
from fleetwatch.config import load_settings


def kafka(**values: str) -> Any:
    return load_settings(environ={}, overrides={"kafka": values}).kafka


def test_plaintext_clients_get_servers_and_bounded_waits() -> None:
    config = clients.common_config(kafka(bootstrap_servers="a:9092, b:9093", timeout="3s"))
    assert config["bootstrap_servers"] == ["a:9092", "b:9093"]
    assert config["bootstrap_timeout_ms"] == 3000
    assert config["request_timeout_ms"] > config["bootstrap_timeout_ms"]
    assert "sasl_plain_password" not in config


def test_sasl_ssl_for_event_hubs_hands_the_password_to_the_client_only() -> None:
    settings = kafka(
        bootstrap_servers="ns.servicebus.windows.net:9093",
        security_protocol="SASL_SSL",
        sasl_username="$ConnectionString",
        sasl_password="Endpoint=sb://ns/;SharedAccessKey=hunter2",
    )
    config = clients.common_config(settings)
    assert config["sasl_mechanism"] == "PLAIN"
    assert config["sasl_plain_username"] == "$ConnectionString"
    assert config["sasl_plain_password"].endswith("hunter2")
    assert "hunter2" not in clients.describe_target(settings)
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.sasl_password)


def test_the_producer_gives_up_after_a_few_broker_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captured: dict[str, Any] = {}

    class Recorder:
        def __init__(self, **config: Any) -> None:
            captured.update(config)

    monkeypatch.setattr(clients, "KafkaProducer", Recorder)
    monkeypatch.setattr(clients, "probe", lambda settings: None)
    clients.make_producer(kafka(timeout="2s", compression="none"))
    assert captured["acks"] == "all" and captured["compression_type"] is None
    assert captured["max_block_ms"] == 2000
    assert captured["delivery_timeout_ms"] >= captured["request_timeout_ms"]


def test_a_refused_connection_fails_at_once_in_one_line() -> None:
    import time

    from fleetwatch.brokers.embedded import free_port
    from fleetwatch.errors import BrokerError

    port = free_port()
    started = time.monotonic()
    with pytest.raises(BrokerError, match=f"127.0.0.1:{port}: Connection refused"):
        clients.probe(kafka(bootstrap_servers=f"127.0.0.1:{port}", timeout="10s"))
    assert time.monotonic() - started < 2  # not the whole --timeout


@pytest.mark.parametrize("servers", ["localhost", "localhost:", "host:port", ":9092", "a:99999"])
def test_a_bootstrap_server_without_a_port_is_a_settings_error(servers: str) -> None:
    from fleetwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="is not host:port"):
        kafka(bootstrap_servers=servers)


@pytest.mark.parametrize(
    ("described", "expected"),
    [
        (
            [{"topic_id": "01a22dcb-1d6b-7500-bb28-c00da44b406f"}],
            "01a22dcb-1d6b-7500-bb28-c00da44b406f",
        ),
        ([{"topic_id": "00000000-0000-0000-0000-000000000000"}], None),  # the broker has none
        ([{}], None),
        ([], None),
    ],
)
def test_topic_ids_where_the_broker_has_them(
    monkeypatch: pytest.MonkeyPatch, described: list[dict[str, str]], expected: str | None
) -> None:
    class Admin:
        def describe_topics(self, names: list[str]) -> list[dict[str, str]]:
            return described

    class Context:
        def __enter__(self) -> Admin:
            return Admin()

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(topics, "admin_client", lambda settings: Context())
    assert topics.topic_id(kafka(), "telemetry") == expected


def test_a_delivery_error_names_its_type_once() -> None:
    from kafka.errors import KafkaTimeoutError

    from fleetwatch.brokers.clients import delivery_error

    expired = KafkaTimeoutError("Expiring 3 record(s): 15000 ms has passed")
    assert str(expired).startswith("KafkaTimeoutError")  # kafka-python's own text names it
    assert delivery_error(expired) == "KafkaTimeoutError: Expiring 3 record(s): 15000 ms has passed"
    assert delivery_error(OSError("disk full")) == "OSError: disk full"
    assert delivery_error(TimeoutError()) == "TimeoutError"
