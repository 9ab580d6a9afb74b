"""The one place fleetwatch touches kafka-python's internals: exactly that surface, checked here,
so an upgrade that changes it fails in this test with a clear message. What it is for (a paused
broker's records failed, not a traceback) is `tests/faults/test_publish_faults.py`."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer
from kafka.producer.sender import Sender

from fleetwatch.brokers import kafka_adapter
from fleetwatch.brokers.embedded import EmbeddedBroker
from fleetwatch.brokers.kafka_adapter import PrivateSurfaceError, check_private_surface


def test_the_installed_kafka_python_has_the_surface_the_adapter_was_read_against() -> None:
    check_private_surface()


def test_a_changed_surface_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Sender, "force_close")
    with pytest.raises(PrivateSurfaceError, match=r"Sender\.force_close\(\).*3\.0\.12"):
        check_private_surface()


def test_failing_what_is_pending_calls_each_errback_and_lets_close_return(
    broker: EmbeddedBroker,
) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=60_000)
    failed: list[BaseException] = []
    for _ in range(3):  # held by the long linger: pending when failed
        producer.send("adapter-probe", b"x").add_errback(failed.append)
    kafka_adapter.fail_pending(producer)
    producer.close(timeout=5)  # nothing left to flush: returns
    assert len(failed) == 3
