"""`fleetwatch simulate` and `fleetwatch import` while the broker stops answering (SIGSTOP on the
broker process) in mid-stream: every message is counted delivered or not delivered, the summary
and one error line say so, exit 1, never a traceback. Before, with a `--timeout` of 20 s or
more, the final flush gave up (60 s) before the producer's delivery timeout, and kafka-python's
`close()` raised from its own flush: a traceback, twice, and the messages still held counted
neither way."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetwatch.brokers.embedded import EmbeddedBroker
from fleetwatch.brokers.topics import ensure_topics
from tests.conftest import consume_all, make_settings, record_count, wait_for
from tests.faults.conftest import fleetwatch

pytestmark = pytest.mark.faults


def publish_while_the_broker_stops(
    command: list[str], prefix: str, delivered_first: int, tmp_path: Path
) -> tuple[int, dict[str, int], int, str]:
    """Run ``fleetwatch *command`` against an embedded broker of its own, stop the broker
    (SIGSTOP) once ``delivered_first`` records are on the topic, and resume it when the command
    has ended: its exit code, its JSON summary, the records on the topic and the one error line,
    after checking that it printed no traceback."""
    with EmbeddedBroker(port=0) as broker:
        settings = make_settings(broker.bootstrap_servers, prefix)
        ensure_topics(settings.kafka)
        topic = settings.kafka.telemetry_topic
        env = {
            "FLEETWATCH_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "FLEETWATCH_TELEMETRY_TOPIC": topic,
            "FLEETWATCH_DEAD_LETTER_TOPIC": settings.kafka.dead_letter_topic,
        }
        log = tmp_path / f"{command[0]}.log"
        process = fleetwatch(*command, "--format", "json", env=env, log=log)
        wait_for(
            lambda: record_count(broker.bootstrap_servers, topic) >= delivered_first,
            120, "the first records delivered", log,
        )  # fmt: skip
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            code = process.wait(timeout=300)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        stored = len(consume_all(broker.bootstrap_servers, topic))
    output = log.read_text()
    assert "Traceback" not in output and "Exception ignored" not in output, output[-3000:]
    summary = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
    [error] = [line for line in output.splitlines() if line.startswith(f"fleetwatch {command[0]}:")]
    assert error.count("KafkaTimeoutError") <= 1, error  # the type once, not "X: X: ..."
    return code, summary, stored, error


def test_a_broker_that_stops_answering_mid_stream_is_counted_not_a_traceback(
    tmp_path: Path,
) -> None:
    # 5 devices, one message each a second, for 20 s; a broker wait of 25 s (delivery 75 s)
    stream = ["--devices", "5", "--speed", "1", "--duration", "20s", "--interval", "1s"]
    code, summary, stored, error = publish_while_the_broker_stops(
        ["simulate", *stream, "--timeout", "25s"], "paused", 10, tmp_path
    )
    assert code == 1 and summary["messages_failed"] > 0, summary
    # what it counts as delivered is on the topic (a failed one may be there too: at least once)
    assert 10 <= summary["messages_sent"] <= stored, (summary, stored)
    assert f"error: {summary['messages_failed']} messages were not delivered" in error


def test_an_import_whose_broker_stops_answering_counts_every_message(tmp_path: Path) -> None:
    # The same end of a producer (brokers.clients.finish) on import's path: a file of 200,000
    # rows is still being sent when the broker stops; a short --timeout keeps the wait short.
    rows = 200_000
    readings = tmp_path / "readings.csv"
    stamps = pd.date_range("2026-12-01", periods=rows, freq="s").strftime("%Y-%m-%dT%H:%M:%SZ")
    pd.DataFrame({"timestamp": stamps, "t": np.arange(rows) % 7.0}).to_csv(readings, index=False)
    command = ["import", str(readings), "--device-id", "pump-1", "--timeout", "5s",
               "--data-dir", str(tmp_path / "data")]  # fmt: skip
    code, summary, stored, error = publish_while_the_broker_stops(
        command, "paused-import", 1000, tmp_path
    )
    assert code == 1 and summary["messages_failed"] > 0 and stored < rows, summary
    assert summary["messages_sent"] + summary["messages_failed"] == rows, summary
    assert 1000 <= summary["messages_sent"] <= stored, (summary, stored)
    assert f"error: {summary['messages_failed']} messages were not delivered" in error
