"""The embedded broker: starts, answers Kafka, stops without orphans, and fails clearly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetwatch.brokers.embedded import EmbeddedBroker, free_port
from fleetwatch.brokers.topics import ensure_topics, list_topics
from fleetwatch.config import load_settings
from fleetwatch.errors import BrokerError
from tests.conftest import fleetwatch_cli

pytestmark = pytest.mark.integration


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_context_manager_starts_and_stops() -> None:
    with EmbeddedBroker(port=0) as broker:
        pid = broker.pid
        assert pid is not None and alive(pid)
        settings = load_settings(
            environ={},
            overrides={"kafka": {"bootstrap_servers": broker.bootstrap_servers, "partitions": "3"}},
        )
        created = ensure_topics(settings.kafka)
        assert [(t.name, t.partitions, t.created) for t in created] == [
            ("telemetry", 3, True),
            ("telemetry.deadletter", 3, True),
        ]
        again = ensure_topics(settings.kafka)  # idempotent
        assert [t.created for t in again] == [False, False]
        assert {t.name for t in list_topics(settings.kafka)} >= {
            "telemetry",
            "telemetry.deadletter",
        }
    assert wait_dead(pid)


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} .* already in use"):
            EmbeddedBroker(port=port).start()
        result = fleetwatch_cli("broker", "--port", str(port))
    assert result.returncode == 2
    assert "already in use" in result.stderr and "Traceback" not in result.stderr


def test_missing_or_non_executable_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "nope"))
    with pytest.raises(BrokerError, match="no Tansu broker binary"):
        EmbeddedBroker(port=0).start()
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o644)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    with pytest.raises(BrokerError, match="CALF_TANSU_BIN"):
        EmbeddedBroker(port=0).start()
    result = fleetwatch_cli("broker", "--port", "0", env={"CALF_TANSU_BIN": str(fake)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def start_cli_broker(port: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, line


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_cli_broker_prints_address_and_stops_on_signal(stop_signal: signal.Signals) -> None:
    port = free_port()
    process, line = start_cli_broker(port)
    assert f"ready at 127.0.0.1:{port}" in line
    (tansu,) = children_of(process.pid)
    assert (
        fleetwatch_cli("topics", "list", "--bootstrap-servers", f"127.0.0.1:{port}").returncode == 0
    )
    process.send_signal(stop_signal)
    assert process.wait(15) == 0
    assert wait_dead(tansu), "the broker outlived fleetwatch broker"


def test_no_orphan_when_the_parent_is_killed() -> None:
    process, line = start_cli_broker(free_port())
    assert "ready at" in line
    (tansu,) = children_of(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert wait_dead(tansu), "kill -9 of fleetwatch broker left the broker running"


def test_unreachable_broker_fails_fast_with_one_line() -> None:
    port = free_port()  # nothing listens here
    started = time.monotonic()
    result = fleetwatch_cli(
        "simulate",
        "--bootstrap-servers",
        f"127.0.0.1:{port}",
        "--timeout",
        "2s",
        "--messages",
        "10",
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fleetwatch simulate: error: cannot reach Kafka at 127.0.0.1:{port} (PLAINTEXT) "
        f"(127.0.0.1:{port}: Connection refused); start one with `fleetwatch broker` or set "
        "--bootstrap-servers"
    ]
    assert elapsed < 5  # a refused connection is known at once: not the 2 s timeout and more
    topics = fleetwatch_cli(
        "topics", "create", "--bootstrap-servers", f"127.0.0.1:{port}", "--timeout", "1s"
    )
    assert topics.returncode == 2 and "cannot reach Kafka" in topics.stderr


def test_topics_create_says_when_an_existing_topic_has_another_partition_count(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    # Before: "created False" and exit 0, not a word that the 8 partitions asked for were not
    # there (a second worker would then find nothing to take).
    env = {
        "FLEETWATCH_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "FLEETWATCH_TELEMETRY_TOPIC": f"{topic_prefix}.telemetry",
        "FLEETWATCH_DEAD_LETTER_TOPIC": f"{topic_prefix}.dead",
    }
    first = fleetwatch_cli("topics", "create", "--partitions", "2", env=env)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    again = fleetwatch_cli("topics", "create", "--partitions", "2", env=env)
    assert again.returncode == 0 and again.stderr == ""  # as asked: nothing to say
    more = fleetwatch_cli("topics", "create", "--partitions", "8", env=env)
    assert more.returncode == 0 and "Traceback" not in more.stderr
    warnings = more.stderr.strip().splitlines()
    assert len(warnings) == 2, warnings  # one a topic
    assert all("has 2 partitions, not 8" in w and "--alter" in w for w in warnings)
    assert [t.partitions for t in list_topics(load_settings(environ=env).kafka)
            if t.name.startswith(topic_prefix)] == [2, 2]  # fmt: skip
